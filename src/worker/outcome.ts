/**
 * What an attempt came to, and recording it. classifyOutcome turns what
 * the sandbox returned into the run's row and what the failure says about
 * retrying; recordOutcome writes it in one transaction: the run row, and
 * then either the next attempt's job, or a dead letter (which adds the
 * function's error handler's event, pgfn.dead_letter in sql/000023). A crash
 * between them cannot lose the retry or the dead letter. The jobs' keys and
 * the dead letter's rules are SQL's (sql/000015_job_contract.sql).
 */
import { sql } from "kysely";
import type { Db } from "../db/database.js";
import type { EventRow } from "../db/events.js";
import type { FunctionInfo } from "../db/functions.js";
import { addRetryJob, deadLetter } from "../db/jobs.js";
import { storableText, unstorableJson } from "../db/jsonb.js";
import { finishRun, type FinishRunInput, type Run } from "../db/runs.js";
import { HTTP_STATUS } from "../http/errors.js";
import { redactAndClip, secretValues } from "../sandbox/host/redact.js";
import type { InvokeOutcome } from "../sandbox/invocation.js";
import { MAX_MESSAGE_CHARS } from "../sandbox/logs.js";
import { isRetryable, retryDelayMs, type FailureFacts } from "./policy.js";
import type { SuccessRecorder } from "./recorder.js";

export interface OutcomeContext {
  readonly event: EventRow;
  /** Undefined when the function is missing. */
  readonly fn: FunctionInfo | undefined;
  readonly attempt: number;
  /** Synchronous invokes report failures to their caller: no retry, no dead letter. */
  readonly sync: boolean;
}

/**
 * Text fit for a run row and a log line: secret env values of the function
 * redacted (whatever the handler printed), clipped, and without characters
 * Postgres cannot store (they would fail the statement that records the run).
 */
export function cleanText(fn: FunctionInfo | undefined): (text: string) => string {
  const secrets = fn ? secretValues(fn.env) : [];
  return (text) => storableText(redactAndClip(text, secrets, MAX_MESSAGE_CHARS));
}

/** What the sandbox returned, as the run's outcome and the failure's facts. */
export interface ClassifiedOutcome {
  readonly finish: FinishRunInput;
  /** Undefined for a success. */
  readonly facts: FailureFacts | undefined;
}

/**
 * The run's outcome from the sandbox's. `outcome.logs` must be clean
 * already (cleanText); the error message is cleaned here. Output that jsonb
 * cannot hold is the handler's fault, like output that is not JSON: not
 * something to retry, let alone for ever.
 */
export function classifyOutcome(
  run: { readonly runId: string; readonly functionName: string },
  outcome: InvokeOutcome,
  durationMs: number,
  clean: (text: string) => string,
): ClassifiedOutcome {
  const unstorable = outcome.ok ? unstorableJson(outcome.output) : undefined;
  const error: InvokeOutcome["error"] = unstorable
    ? {
        code: "FUNCTION_ERROR",
        message: `The handler's output contains ${unstorable}, which Postgres jsonb cannot store; remove it, or encode the text (e.g. as base64), before returning it.`,
      }
    : outcome.error;
  const ok = outcome.ok && !unstorable;
  const facts = error && {
    code: error.code,
    ...(error.transient !== undefined && { transient: error.transient }),
    ...(outcome.retry?.afterMs !== undefined && { retryAfterMs: outcome.retry.afterMs }),
    ...(outcome.retry?.never && { noRetry: true }),
  };
  const finish: FinishRunInput = {
    ...run,
    status: ok ? "succeeded" : "failed",
    result: ok ? outcome.output : undefined,
    ...(error && {
      errorCode: error.code,
      httpStatus: HTTP_STATUS[error.code],
      errorMessage: clean(error.message),
    }),
    logs: outcome.logs,
    durationMs,
    ...(outcome.memoryPeakBytes !== undefined && { memoryPeakBytes: outcome.memoryPeakBytes }),
  };
  return { finish, facts };
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
      await addRetryJob(trx, event.id, attempt + 1, run.next_attempt_at!);
      return run;
    }

    const run = await finishRun(trx, finish);
    await deadLetter(trx, run.id);
    return run;
  });
}
