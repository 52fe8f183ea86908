/**
 * Recording what an attempt came to, in one transaction: the run row, and
 * then either the next attempt's job, or a dead letter and the function's
 * error handler. A crash between them cannot lose the retry or the dead letter.
 */
import { sql } from "kysely";
import type { Db } from "../db/database.js";
import type { EventRow } from "../db/events.js";
import type { FunctionInfo } from "../db/functions.js";
import { finishRun, type FinishRunInput, type Run } from "../db/runs.js";
import type { EventInput } from "../interfaces.js";
import { isRetryable, retryDelayMs, type FailureFacts } from "./policy.js";
import type { SuccessRecorder } from "./recorder.js";
import { RUN_TASK } from "./tasks.js";

export interface OutcomeContext {
  readonly event: EventRow;
  readonly input: EventInput;
  /** Undefined when the function is missing. */
  readonly fn: FunctionInfo | undefined;
  readonly attempt: number;
  /** Synchronous invokes report failures to their caller: no retry, no dead letter. */
  readonly sync: boolean;
}

export async function recordOutcome(
  db: Db,
  context: OutcomeContext,
  finish: FinishRunInput,
  facts: FailureFacts | undefined,
  /** Records a success together with others (see recorder.ts). */
  recorder?: SuccessRecorder,
): Promise<Run> {
  const { event, fn, attempt } = context;
  // Not an ordered function's: its next event may start as soon as this
  // success is visible, so the success must be on disk first (recorder.ts
  // commits without waiting for the flush).
  if (finish.status === "succeeded" && recorder && !context.sync && fn?.ordering === "none") {
    return recorder.record(finish);
  }
  // One statement needs no transaction of its own: a success (the common
  // case) costs one round trip, not three.
  if (finish.status === "succeeded" || !facts || context.sync) return finishRun(db, finish);
  return db.transaction().execute(async (trx) => {
    const policy = fn && {
      maxAttempts: fn.max_attempts,
      baseMs: fn.retry_base_ms,
      maxMs: fn.retry_max_ms,
    };
    if (policy && attempt < policy.maxAttempts && isRetryable(facts)) {
      const delayMs = retryDelayMs(policy, attempt, facts);
      const run = await finishRun(trx, {
        ...finish,
        willRetry: true,
        nextAttemptAt: sql<Date>`clock_timestamp() + make_interval(secs => ${delayMs / 1000})`,
      });
      await sql`select graphile_worker.add_job(
          ${RUN_TASK},
          json_build_object('event_id', ${event.id}::bigint),
          run_at => ${run.next_attempt_at},
          max_attempts => pgfn.job_max_attempts(${policy.maxAttempts}::integer, ${attempt + 1}::integer),
          job_key => ${`pgfn:retry:${event.id}:${attempt + 1}`}::text
        )`.execute(trx);
      return run;
    }

    const run = await finishRun(trx, finish);
    await sql`insert into pgfn.dead_letters (event_id, function_name, last_run_id, error_code, error_message)
      values (${event.id}, ${event.function_name}, ${run.id}, ${run.error_code ?? "INTERNAL"}, ${run.error_message})
      on conflict (event_id) where resolved_at is null do update
        set last_run_id = excluded.last_run_id, error_code = excluded.error_code,
            error_message = excluded.error_message, created_at = now()`.execute(trx);
    // The watchdog: the error handler gets the event that failed, the run and
    // the error. An error handler's own failure goes no further.
    if (fn?.on_error && event.source !== "error_handler") {
      const payload = {
        event: context.input,
        run: {
          id: Number(run.id),
          attempt: run.attempt,
          status: run.status,
          error_code: run.error_code,
          http_status: run.http_status,
          error_message: run.error_message,
          duration_ms: run.duration_ms,
        },
        error: { code: run.error_code, message: run.error_message },
      };
      await sql`insert into pgfn.events (function_name, source, payload)
        values (${fn.on_error}, 'error_handler', ${JSON.stringify(payload)}::jsonb)`.execute(trx);
    }
    return run;
  });
}

/**
 * Runs the event again in `delayMs`, as a new job; the current one then
 * completes. Nothing is recorded: the event did not run. Like every pgfn_run
 * job, the new one may be tried by graphile-worker only as often as the
 * event has attempts left, plus one (pgfn.job_max_attempts, sql/000009).
 */
export async function deferEvent(
  db: Db,
  event: EventRow,
  fn: FunctionInfo | undefined,
  delayMs: number,
): Promise<void> {
  await sql`select graphile_worker.add_job(
      ${RUN_TASK},
      json_build_object('event_id', ${event.id}::bigint),
      run_at => clock_timestamp() + make_interval(secs => ${delayMs / 1000}),
      max_attempts => pgfn.job_max_attempts(
        ${fn?.max_attempts ?? null}::integer,
        (select count(*)::integer + 1 from pgfn.function_runs where event_id = ${event.id}::bigint)
      ),
      job_key => ${`pgfn:wait:${event.id}`}::text
    )`.execute(db);
}
