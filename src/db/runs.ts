/** Queries on `pgfn.function_runs`: one row per attempt. */
import { sql, type RawBuilder, type Selectable } from "kysely";
import type { Db, FunctionRunsTable } from "./database.js";
import type { EventRow } from "./events.js";
import { functionInfoFromJson, type FunctionInfo } from "./functions.js";
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
      /** ORDERING: an ordered function's earlier event, or its running one, goes first. */
      readonly refused: RefusedReason;
      /** When waiting makes sense (the circuit's cooldown, an earlier event's retry), else undefined. */
      readonly retryAt: Date | undefined;
    };

/**
 * Why an attempt may not start now (sql/000006 and sql/000012, pgfn.start_run);
 * DEFERRED: another job of the event's own will run it (sql/000011, pgfn.begin_run).
 */
export type RefusedReason = "CIRCUIT_OPEN" | "CONCURRENCY_LIMIT" | "ORDERING" | "DEFERRED";

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

/** A row of pgfn.begin_run / pgfn.begin_runs. */
interface BeginRow {
  event: Record<string, unknown>;
  fn: Record<string, unknown> | null;
  done_run_id: string | null;
  run_id: string | null;
  attempt: number | null;
  probe: boolean;
  refused: RefusedReason | null;
  retry_at: Date | null;
}

function toBeginRunResult(eventId: string, row: BeginRow): BeginRunResult {
  // jsonb carries timestamps as strings and bigints as numbers.
  const date = (v: unknown) => (typeof v === "string" ? new Date(v) : null);
  const event = {
    ...row.event,
    id: eventId,
    created_at: date(row.event.created_at)!,
    dispatched_at: date(row.event.dispatched_at),
  } as EventRow;
  const fn = row.fn ? functionInfoFromJson(row.fn) : undefined;
  const slot: StartRunResult | undefined = row.done_run_id
    ? undefined
    : row.refused
      ? { started: false, refused: row.refused, retryAt: row.retry_at ?? undefined }
      : { started: true, id: row.run_id!, attempt: row.attempt!, probe: row.probe };
  return { event, fn, doneRunId: row.done_run_id, slot };
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
  input: { readonly eventId: string; readonly daemonId: string; readonly jobId: string | null },
): Promise<BeginRunResult | undefined> {
  const { rows } = await sql<BeginRow>`
    select * from pgfn.begin_run(${input.eventId}::bigint, ${input.daemonId}, ${input.jobId}::bigint)`.execute(
    db,
  );
  const row = rows[0];
  return row && toBeginRunResult(input.eventId, row);
}

/**
 * beginRun for several events of one job, in event order, in one round trip
 * (sql/000011_batch_jobs.sql, pgfn.begin_runs). Events that no longer exist
 * are left out.
 */
export async function beginRuns(
  db: Db,
  input: {
    readonly eventIds: readonly string[];
    readonly daemonId: string;
    readonly jobId: string | null;
  },
): Promise<BeginRunResult[]> {
  const { rows } = await sql<BeginRow & { event_id: string }>`
    select * from pgfn.begin_runs(${input.eventIds}::bigint[], ${input.daemonId}, ${input.jobId}::bigint)`.execute(
    db,
  );
  return rows.map((row) => toBeginRunResult(String(row.event_id), row));
}

/**
 * After an attempt of an ordered function is recorded: the event now first
 * in line runs at once rather than at its deferral (sql/000012, pgfn.ordered_wake).
 */
export async function wakeNextInLine(db: Db, functionName: string): Promise<void> {
  await sql`select pgfn.ordered_wake(${functionName})`.execute(db);
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

/**
 * The statement that sets the functions' `last_run_at` and `last_status`,
 * for a `with` clause next to the runs' own update.
 */
function touchLastRun(names: readonly string[], status: Run["status"]): RawBuilder<unknown> {
  return sql`
    update pgfn.functions
    set last_run_at = clock_timestamp(), last_status = ${status}
    where name = any (${names}::text[])
      -- Every run of a function would otherwise lock its one row until
      -- commit, serialising all its runs behind fsync (~400 runs/s on our
      -- machines). A row that fails this test is skipped without a lock:
      -- last_status is always current, last_run_at within a second.
      and (last_status is distinct from ${status} or last_run_at is null
           or last_run_at < clock_timestamp() - interval '1 second')`;
}

/** Records the outcome of an attempt and the function's `last_run_*` (see touchLastRun), in one statement. */
export async function finishRun(db: Db, input: FinishRunInput): Promise<Run> {
  // A template, not the query builder: every run ends here, and building the
  // query cost more CPU than sending it.
  const { rows } = await sql<Run>`
    with fn as (${touchLastRun([input.functionName], input.status)})
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

/** A succeeded attempt's outcome, for finishSucceededRuns. */
export type SucceededRunInput = Pick<
  FinishRunInput,
  "runId" | "functionName" | "result" | "logs" | "durationMs" | "memoryPeakBytes"
>;

/**
 * finishRun for many succeeded attempts in one statement (and one commit):
 * the common outcome, recorded for whatever finished meanwhile (see
 * src/worker/recorder.ts). Returns the runs in no particular order.
 */
export async function finishSucceededRuns(
  db: Db,
  inputs: readonly SucceededRunInput[],
): Promise<Run[]> {
  const rows = inputs.map((i) => ({
    id: i.runId,
    // Boxed, so that a handler's null stays JSON null (as finishRun stores
    // it) rather than becoming SQL null in jsonb_to_recordset.
    result: i.result === undefined ? null : { v: i.result },
    logs: i.logs,
    duration_ms: i.durationMs,
    memory_peak_bytes: i.memoryPeakBytes ?? null,
  }));
  const names = [...new Set(inputs.map((i) => i.functionName))];
  const { rows: runs } = await sql<Run>`
    with fn as (${touchLastRun(names, "succeeded")})
    update pgfn.function_runs r
    set status = 'succeeded',
        result = i.result -> 'v',
        error_code = null,
        http_status = 200,
        error_message = null,
        logs = i.logs,
        duration_ms = i.duration_ms,
        memory_peak_bytes = i.memory_peak_bytes,
        finished_at = clock_timestamp(),
        will_retry = false,
        next_attempt_at = null
    from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb)
      as i(id bigint, result jsonb, logs jsonb, duration_ms double precision, memory_peak_bytes bigint),
      -- No wait for the WAL flush. Only a server crash can lose this commit,
      -- and then it also loses the later completion of the runs' job, which
      -- does wait (a flush covers all earlier WAL): the job runs again and
      -- so do these attempts, which is at-least-once for attempts in flight.
      (select set_config('synchronous_commit', 'off', true)) as async_commit
    where r.id = i.id
    returning r.*`.execute(db);
  return runs;
}

/**
 * Ends the attempts of `runId`'s event that its daemon left `running`
 * before it: ones whose outcome, failure included, the database refused to
 * record (the job was then tried again, which started `runId`). Left alone
 * they would hold a max_concurrency slot until the job completes
 * (sql/000015, pgfn.abandon_earlier_runs). Returns how many.
 */
export async function abandonEarlierRuns(db: Db, runId: string): Promise<number> {
  const { rows } = await sql<{ n: number }>`
    select pgfn.abandon_earlier_runs(${runId}::bigint) as n`.execute(db);
  return rows[0]?.n ?? 0;
}

/**
 * Ends a `running` attempt that pgfn could not finish (its outcome could
 * not be recorded) as abandoned with INTERNAL; `willRetry` says whether its
 * job runs the event again (sql/000015, pgfn.abandon_run). Returns whether
 * it was still running.
 */
export async function abandonRun(
  db: Db,
  input: { readonly runId: string; readonly errorMessage: string; readonly willRetry: boolean },
): Promise<boolean> {
  const { rows } = await sql<{ abandoned: boolean }>`
    select pgfn.abandon_run(${input.runId}::bigint, 'INTERNAL', ${input.errorMessage}, ${input.willRetry}) as abandoned`.execute(
    db,
  );
  return rows[0]?.abandoned ?? false;
}

/**
 * Runs a run's event again as a new event (pgfn.retry); returns the new
 * event's id. Unless `force`, Postgres refuses (SQLSTATE
 * OBJECT_NOT_IN_PREREQUISITE_STATE) a run whose event was run again already.
 */
export async function retryRun(
  db: Db,
  runId: number | string,
  options: { readonly force?: boolean } = {},
): Promise<string> {
  const { rows } = await sql<{ id: string }>`
    select pgfn.retry(${runId}::bigint, force => ${options.force ?? false}) as id`.execute(db);
  return rows[0]!.id;
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

/**
 * How many of a function's latest runs `pgfn logs` reads lines from: a
 * bound on the rows read when most runs logged nothing. (1000)
 */
export const LOG_RUNS_SCANNED = 1000;

/** One line a handler logged, with the run that logged it. */
export interface RunLogLine {
  readonly runId: string;
  /** When it was logged (the run's start for a line that does not say). */
  readonly at: Date;
  readonly level: string;
  readonly message: string;
}

/**
 * The last `limit` lines logged by the function's latest LOG_RUNS_SCANNED
 * runs (src/sandbox/logs.ts, HandlerLog), oldest first.
 */
export async function listLogLines(
  db: Db,
  functionName: string,
  limit: number,
): Promise<RunLogLine[]> {
  const { rows } = await sql<{ run_id: string; at: Date; level: string; message: string }>`
    select r.id as run_id,
           coalesce((l.line ->> 'at')::timestamptz, r.started_at) as at,
           coalesce(l.line ->> 'level', 'info') as level,
           coalesce(l.line ->> 'message', l.line #>> '{}') as message
    from (
      select id, started_at, logs from pgfn.function_runs
      where function_name = ${functionName}
      order by id desc
      limit ${LOG_RUNS_SCANNED}
    ) r
    cross join lateral jsonb_array_elements(
      case jsonb_typeof(r.logs) when 'array' then r.logs else '[]' end
    ) with ordinality as l (line, n)
    order by r.id desc, l.n desc
    limit ${limit}`.execute(db);
  return rows.reverse().map((r) => ({
    runId: r.run_id,
    at: r.at,
    level: r.level,
    message: r.message,
  }));
}
