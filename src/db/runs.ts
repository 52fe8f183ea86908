/** Queries on `pgfn.function_runs`: one row per attempt. */
import { sql, type RawBuilder, type Selectable } from "kysely";
import type { Db, FunctionRunsTable } from "./database.js";
import type { EventRow } from "./events.js";
import type { FunctionInfo } from "./functions.js";
import type { ErrorCode } from "../errors.js";

export type Run = Selectable<FunctionRunsTable>;

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

export interface BeginRunResult {
  readonly event: EventRow;
  /** Its function; undefined when not deployed. */
  readonly fn: FunctionInfo | undefined;
  /**
   * Set when the event is done (it succeeded; this job already recorded its
   * failure; it is a dead letter): then nothing was started.
   */
  readonly doneRunId: string | null;
  /** The attempt, recorded `running` before the handler runs, or why it may not start. */
  readonly slot: StartRunResult | undefined;
}

/**
 * Loads the event and its function and records the start of an attempt, in
 * one round trip (sql/000006_admission.sql, pgfn.begin_run); undefined when
 * the event no longer exists. The attempt is committed before the handler
 * runs, so a crash mid-run leaves a visible `running` row. For an enabled
 * function, its circuit and its max_concurrency across every daemon decide
 * first; `probe` marks the single attempt a half-open circuit lets through.
 */
export async function beginRun(
  db: Db,
  input: { readonly eventId: string; readonly workerId: string; readonly jobId: string | null },
): Promise<BeginRunResult | undefined> {
  const { rows } = await sql<{
    event: Record<string, unknown>;
    fn: Record<string, unknown> | null;
    done_run_id: string | null;
    run_id: string | null;
    attempt: number | null;
    probe: boolean;
    refused: "CIRCUIT_OPEN" | "CONCURRENCY_LIMIT" | null;
    retry_at: Date | null;
  }>`select * from pgfn.begin_run(${input.eventId}::bigint, ${input.workerId}, ${input.jobId}::bigint)`.execute(
    db,
  );
  const row = rows[0];
  if (!row) return undefined;
  // jsonb carries timestamps as strings and bigints as numbers.
  const date = (v: unknown) => (typeof v === "string" ? new Date(v) : null);
  const event = {
    ...row.event,
    id: input.eventId,
    created_at: date(row.event.created_at)!,
    dispatched_at: date(row.event.dispatched_at),
  } as EventRow;
  const fn = row.fn
    ? ({
        ...row.fn,
        last_run_at: date(row.fn.last_run_at),
        created_at: date(row.fn.created_at)!,
        updated_at: date(row.fn.updated_at)!,
      } as FunctionInfo)
    : undefined;
  const slot: StartRunResult | undefined = row.done_run_id
    ? undefined
    : row.refused
      ? { started: false, refused: row.refused, retryAt: row.retry_at ?? undefined }
      : { started: true, id: row.run_id!, attempt: row.attempt!, probe: row.probe };
  return { event, fn, doneRunId: row.done_run_id, slot };
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
  // A template, not the query builder: every run ends here, and building the
  // query cost more CPU than sending it.
  const { rows } = await sql<Run>`
    with fn as (
      update pgfn.functions
      set last_run_at = clock_timestamp(), last_status = ${input.status}
      where name = ${input.functionName}
        -- Every run of a function would otherwise lock its one row until
        -- commit, serialising all its runs behind fsync (~400 runs/s on our
        -- machines). A row that fails this test is skipped without a lock:
        -- last_status is always current, last_run_at within a second.
        and (last_status is distinct from ${input.status} or last_run_at is null
             or last_run_at < clock_timestamp() - interval '1 second')
    )
    update pgfn.function_runs
    set status = ${input.status},
        result = ${input.result === undefined ? null : JSON.stringify(input.result)}::jsonb,
        error_code = ${input.errorCode ?? null},
        http_status = ${input.httpStatus ?? (input.status === "succeeded" ? 200 : null)}::integer,
        error_message = ${input.errorMessage ?? null},
        logs = ${JSON.stringify(input.logs)}::jsonb,
        duration_ms = ${input.durationMs}::double precision,
        memory_peak_bytes = ${input.memoryPeakBytes ?? null}::bigint,
        finished_at = clock_timestamp(),
        will_retry = ${input.willRetry ?? false},
        next_attempt_at = ${input.nextAttemptAt ?? null}
    where id = ${input.runId}::bigint
    returning *`.execute(db);
  if (!rows[0]) throw new Error(`run ${input.runId} does not exist`);
  return rows[0];
}

/**
 * Ends the event's attempts that this daemon left `running` before `runId`:
 * ones whose outcome, failure included, the database refused to record (the
 * job was then tried again, which started `runId`). Left alone they would
 * hold a max_concurrency slot until this daemon stops. Another daemon's are
 * not touched: the reaper ends those if it died.
 */
export async function abandonEarlierRuns(
  db: Db,
  input: { readonly eventId: string; readonly workerId: string; readonly runId: string },
): Promise<void> {
  await sql`
    update pgfn.function_runs
    set status = 'abandoned', error_code = 'INTERNAL', http_status = 500,
        error_message = 'pgfn could not record the outcome of this attempt (the database refused it); the next attempt ended it.',
        finished_at = clock_timestamp(),
        duration_ms = extract(epoch from clock_timestamp() - started_at) * 1000,
        will_retry = true
    where event_id = ${input.eventId}::bigint and id < ${input.runId}::bigint
      and status = 'running' and worker_id = ${input.workerId}`.execute(db);
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
