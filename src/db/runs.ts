/** Queries on `pgfn.function_runs`: one row per attempt. */
import { sql, type RawBuilder, type Selectable } from "kysely";
import type { Db, FunctionRunsTable } from "./database.js";
import type { ErrorCode } from "../errors.js";

export type Run = Selectable<FunctionRunsTable>;

export interface StartRunInput {
  readonly eventId: string;
  readonly functionName: string;
  readonly wasmSha256: string | null;
  readonly workerId: string;
  readonly jobId: string | null;
}

/** A started attempt, or why it may not start now. */
export type StartRunResult =
  | {
      readonly started: true;
      readonly id: string;
      readonly attempt: number;
      readonly probe: boolean;
    }
  | {
      readonly started: false;
      readonly refused: "CIRCUIT_OPEN" | "CONCURRENCY_LIMIT";
      /** When waiting makes sense (the circuit's cooldown), else undefined. */
      readonly retryAt: Date | undefined;
    };

/**
 * Records the start of an attempt, committed before the handler runs, so a
 * crash mid-run leaves a visible `running` row. The attempt number is the
 * count of earlier runs plus one. With `maxConcurrency` (an enabled
 * function), the function's circuit and its max_concurrency across every
 * daemon decide first (sql/000006_admission.sql); `probe` marks the single
 * attempt a half-open circuit lets through.
 */
export async function startRun(
  db: Db,
  input: StartRunInput & { readonly maxConcurrency?: number },
): Promise<StartRunResult> {
  const { rows } = await sql<{
    id: string | null;
    attempt: number | null;
    probe: boolean;
    refused: "CIRCUIT_OPEN" | "CONCURRENCY_LIMIT" | null;
    retry_at: Date | null;
  }>`
    select id, attempt, probe, refused, retry_at from pgfn.start_run(
      ${input.eventId}::bigint, ${input.functionName}, ${input.wasmSha256}, ${input.workerId},
      ${input.jobId}::bigint, ${input.maxConcurrency ?? null}::integer)`.execute(db);
  const row = rows[0]!;
  if (row.refused) {
    return { started: false, refused: row.refused, retryAt: row.retry_at ?? undefined };
  }
  return { started: true, id: row.id!, attempt: row.attempt!, probe: row.probe };
}

/** Counts a finished attempt against its function's circuit; returns the circuit's state. */
export async function recordCircuit(db: Db, runId: string): Promise<string | null> {
  const { rows } = await sql<{ state: string | null }>`
    select pgfn.circuit_record(${runId}::bigint) as state`.execute(db);
  return rows[0]?.state ?? null;
}

export interface FinishRunInput {
  readonly runId: string;
  readonly functionName: string;
  readonly status: "succeeded" | "failed";
  readonly result?: unknown;
  readonly errorCode?: ErrorCode;
  readonly httpStatus?: number;
  readonly errorMessage?: string;
  readonly logs: readonly unknown[];
  readonly durationMs: number;
  readonly memoryPeakBytes?: number;
  /** Another attempt is scheduled, at nextAttemptAt. (Default: false) */
  readonly willRetry?: boolean;
  readonly nextAttemptAt?: RawBuilder<Date>;
}

/** Records the outcome of an attempt and the function's `last_run_*` (see below), in one statement. */
export async function finishRun(db: Db, input: FinishRunInput): Promise<Run> {
  return db
    .with("fn", (qc) =>
      qc
        .updateTable("pgfn.functions")
        .set({ last_run_at: sql`clock_timestamp()`, last_status: input.status })
        .where("name", "=", input.functionName)
        // Every run of a function would otherwise lock its one row until
        // commit, serialising all its runs behind fsync (~400 runs/s on our
        // machines). A row that fails this test is skipped without a lock:
        // last_status is always current, last_run_at within a second.
        .where((eb) =>
          eb.or([
            eb("last_status", "is distinct from", input.status),
            eb("last_run_at", "is", null),
            eb("last_run_at", "<", sql<Date>`clock_timestamp() - interval '1 second'`),
          ]),
        ),
    )
    .updateTable("pgfn.function_runs")
    .set({
      status: input.status,
      result: input.result === undefined ? null : JSON.stringify(input.result),
      error_code: input.errorCode ?? null,
      http_status: input.httpStatus ?? (input.status === "succeeded" ? 200 : null),
      error_message: input.errorMessage ?? null,
      logs: JSON.stringify(input.logs),
      duration_ms: input.durationMs,
      memory_peak_bytes: input.memoryPeakBytes ?? null,
      finished_at: sql`clock_timestamp()`,
      will_retry: input.willRetry ?? false,
      next_attempt_at: input.nextAttemptAt ?? null,
    })
    .where("id", "=", input.runId)
    .returningAll()
    .executeTakeFirstOrThrow();
}

/** The event's succeeded run, if it has one. */
export async function succeededRun(db: Db, eventId: string): Promise<Run | undefined> {
  return db
    .selectFrom("pgfn.function_runs")
    .selectAll()
    .where("event_id", "=", eventId)
    .where("status", "=", "succeeded")
    .limit(1)
    .executeTakeFirst();
}

export interface ListRunsOptions {
  readonly functionName?: string;
  /** (Default: 20) */
  readonly limit?: number;
  /** Only runs with a smaller id: the cursor of the next page. */
  readonly before?: string;
}

/** Newest first. */
export async function listRuns(db: Db, options: ListRunsOptions = {}): Promise<Run[]> {
  return db
    .selectFrom("pgfn.function_runs")
    .selectAll()
    .$if(options.functionName !== undefined, (q) =>
      q.where("function_name", "=", options.functionName!),
    )
    .$if(options.before !== undefined, (q) => q.where("id", "<", options.before!))
    .orderBy("id", "desc")
    .limit(options.limit ?? 20)
    .execute();
}
