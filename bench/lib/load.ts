/** The load generators: open loop (a fixed arrival rate) and closed loop (as fast as it goes). */
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { percentile } from "./stats.js";

export interface OpenLoopResult {
  /** Transactions scheduled. */
  readonly scheduled: number;
  /** Transactions committed. */
  readonly committed: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  /** Committed transactions per second, from the first arrival to the last commit. */
  readonly achievedTps: number;
  /** Milliseconds from a transaction's scheduled arrival to its commit. */
  readonly commitP50Ms: number;
  readonly commitP99Ms: number;
}

/**
 * Open loop: transaction i is due at start + i / tps, whether or not earlier
 * ones have committed, spread over a pool of connections so one slow commit
 * does not hold up the next arrival. When every connection is busy the
 * arrival waits in the pool's queue; that wait shows in the commit times
 * (from due to committed), not hidden by a slower schedule.
 */
export async function openLoop(
  pool: pg.Pool,
  options: {
    readonly tps: number;
    readonly seconds: number;
    readonly sql: string;
    readonly onTick?: (elapsedS: number, committed: number) => void;
  },
): Promise<OpenLoopResult> {
  const { tps, seconds, sql } = options;
  const scheduled = Math.max(1, Math.round(tps * seconds));
  const commitMs: number[] = [];
  let issued = 0;
  let committed = 0;
  let errors = 0;
  let firstError: string | undefined;
  let lastCommit = 0;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  let lastTick = 0;
  const started = performance.now();
  while (issued < scheduled) {
    const elapsed = performance.now() - started;
    const due = Math.min(scheduled, Math.floor((elapsed / 1000) * tps) + 1);
    for (; issued < due; issued++) {
      const dueAt = started + (issued * 1000) / tps;
      inFlight++;
      pool
        .query(sql)
        .then(
          () => {
            const now = performance.now();
            commitMs.push(now - dueAt);
            committed++;
            lastCommit = now;
          },
          (error: Error) => {
            errors++;
            firstError ??= error.message;
          },
        )
        .finally(() => {
          if (--inFlight === 0) drained?.();
        });
    }
    if (options.onTick && elapsed - lastTick >= 5000) {
      lastTick = elapsed;
      options.onTick(elapsed / 1000, committed);
    }
    // Timers fire about every millisecond: at 3,000/s that is 3 arrivals a tick.
    await sleep(1);
  }
  if (inFlight > 0) await new Promise<void>((resolve) => (drained = resolve));
  commitMs.sort((a, b) => a - b);
  return {
    scheduled,
    committed,
    errors,
    firstError,
    achievedTps: committed / ((lastCommit - started) / 1000 || Infinity),
    commitP50Ms: percentile(commitMs, 50),
    commitP99Ms: percentile(commitMs, 99),
  };
}

/**
 * Closed loop: `clients` connections, each committing `sql` one transaction
 * after another for `seconds`. Returns transactions per second.
 */
export async function closedLoop(
  url: string,
  options: { readonly clients: number; readonly seconds: number; readonly sql: string },
): Promise<number> {
  const clients = Array.from(
    { length: options.clients },
    () => new pg.Client({ connectionString: url, application_name: "pgfn-bench-load" }),
  );
  try {
    // All connected before the clock starts: a connection costs more than an insert.
    await Promise.all(clients.map((c) => c.connect()));
    const started = performance.now();
    const deadline = started + options.seconds * 1000;
    const counts = await Promise.all(
      clients.map(async (client) => {
        let n = 0;
        while (performance.now() < deadline) {
          await client.query(options.sql);
          n++;
        }
        return n;
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    return counts.reduce((a, b) => a + b, 0) / elapsed;
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
  }
}
