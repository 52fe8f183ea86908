/**
 * Succeeded attempts are recorded together: whatever finished while the
 * previous statement was on its way goes into the next one, so a busy
 * daemon pays one statement and one commit (one WAL flush) for many runs,
 * and an idle one still records each run at once. Failures are not batched:
 * each decides its own retry or dead letter (src/worker/outcome.ts).
 */
import type { Db } from "../db/database.js";
import { finishSucceededRuns, type Run, type SucceededRunInput } from "../db/runs.js";

/** Runs per statement at most: a bound on its size, not a target. */
const MAX_BATCH = 500;

interface Pending {
  readonly input: SucceededRunInput;
  resolve(run: Run): void;
  reject(error: unknown): void;
}

export class SuccessRecorder {
  private queue: Pending[] = [];
  private flushing = false;

  constructor(private readonly db: Db) {}

  /** Records the attempt as succeeded; resolves with its run once committed. */
  record(input: SucceededRunInput): Promise<Run> {
    return new Promise<Run>((resolve, reject) => {
      this.queue.push({ input, resolve, reject });
      if (!this.flushing) void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      // Runs that finish in this turn of the event loop join the first statement.
      await new Promise((resolve) => setImmediate(resolve));
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, MAX_BATCH);
        try {
          this.settle(
            batch,
            await finishSucceededRuns(
              this.db,
              batch.map((p) => p.input),
            ),
          );
        } catch (error) {
          if (batch.length === 1) {
            batch[0]!.reject(error);
            continue;
          }
          // One run the statement could not take must not fail the others.
          await Promise.all(
            batch.map((p) =>
              finishSucceededRuns(this.db, [p.input]).then(
                (runs) => this.settle([p], runs),
                (e: unknown) => p.reject(e),
              ),
            ),
          );
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  private settle(batch: readonly Pending[], runs: readonly Run[]): void {
    const byId = new Map(runs.map((run) => [String(run.id), run]));
    for (const p of batch) {
      const run = byId.get(p.input.runId);
      if (run) p.resolve(run);
      else p.reject(new Error(`run ${p.input.runId} does not exist`));
    }
  }
}
