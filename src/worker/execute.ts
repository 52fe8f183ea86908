/**
 * One attempt at one event: load the function, record a `running` run,
 * call the handler (no transaction open meanwhile), record the outcome.
 * Used by the graphile-worker task and by synchronous invokes alike.
 */
import { sql } from "kysely";
import type { Logger } from "pino";
import type { Db } from "../db/database.js";
import type { EventRow } from "../db/events.js";
import { getWasm, type FunctionInfo } from "../db/functions.js";
import {
  abandonEarlierRuns,
  recordCircuit,
  beginRun,
  beginRuns,
  wakeNextInLine,
  succeededRun,
  type BeginRunResult,
  type FinishRunInput,
  type Run,
} from "../db/runs.js";
import { coerceError, HTTP_STATUS, PgfnError } from "../errors.js";
import { storableText, unstorableJson } from "../db/jsonb.js";
import { redactAndClip, secretValues } from "../sandbox/host/redact.js";
import { MAX_MESSAGE_CHARS } from "../sandbox/logs.js";
import type { EventInput, Operation } from "../interfaces.js";
import type { InvokeOutcome } from "../sandbox/invocation.js";
import type { ModuleCache } from "../sandbox/module.js";
import type { HostBinding, SandboxPool } from "../sandbox/pool.js";
import { deferEvent, recordOutcome } from "./outcome.js";
import type { SuccessRecorder } from "./recorder.js";
import type { Slots } from "./slots.js";

export interface ExecutorDeps {
  readonly db: Db;
  /** Compiled, memory-guarded modules (see createModuleCache). */
  readonly modules: ModuleCache;
  /** Where handlers run. */
  readonly sandbox: SandboxPool;
  /** The host functions a function's handler may call, made for one run. */
  readonly hostFunctions?: (fn: FunctionInfo, deadline: number) => Record<string, HostBinding>;
  /** Written to `function_runs.worker_id`. */
  readonly workerId: string;
  readonly logger: Logger;
  /** Called after each run is recorded, with its event (the dev console, the metrics). */
  readonly onRunFinished?: (run: Run, event: EventRow) => void;
  /** Records successes together (see recorder.ts). (Default: one statement per run) */
  readonly recorder?: SuccessRecorder;
  /** Bounds the attempts jobs run at once (see slots.ts). (Default: no bound) */
  readonly slots?: Slots;
}

/** The JSON a handler receives (DESIGN.md section 1). */
export function toEventInput(event: EventRow, attempt: number): EventInput {
  const common = {
    id: Number(event.id),
    attempt,
    function: event.function_name,
    timestamp: event.created_at.toISOString(),
  };
  if (event.source === "database") {
    return {
      ...common,
      trigger: "database",
      schema: event.table_schema ?? "",
      table: event.table_name ?? "",
      operation: event.operation as Operation,
      old: (event.old as Record<string, unknown> | null) ?? null,
      new: (event.new as Record<string, unknown> | null) ?? null,
    };
  }
  if (event.source === "schedule") {
    // Written by the scheduler (src/scheduler/scheduler.ts); a hand-made
    // schedule event with a different payload still gets every field.
    const payload = (event.payload ?? {}) as Partial<Record<string, unknown>>;
    const text = (value: unknown) => (typeof value === "string" ? value : "");
    return {
      ...common,
      trigger: "schedule",
      cron: text(payload.cron),
      timezone: text(payload.timezone),
      scheduled_time: text(payload.scheduled_time),
      actual_time: text(payload.actual_time) || common.timestamp,
    };
  }
  return { ...common, trigger: event.source, payload: event.payload ?? null };
}

/**
 * Runs the event once and returns the recorded run; undefined when the event
 * no longer exists (pruned while its job waited) or had to wait (the function
 * is at max_concurrency: a new job runs it shortly). A synchronous invoke
 * over max_concurrency throws CONCURRENCY_LIMIT instead.
 */
export async function executeEvent(
  deps: ExecutorDeps,
  eventId: string,
  jobId: string | null = null,
  options: { readonly sync?: boolean } = {},
): Promise<Run | undefined> {
  const begun = await beginRun(deps.db, { eventId, workerId: deps.workerId, jobId });
  if (!begun) {
    deps.logger.warn(
      { operation: "run", event_id: eventId },
      "event no longer exists; nothing to run",
    );
    return undefined;
  }
  return runBegun(deps, begun, jobId, options);
}

/**
 * Runs a job's events: as many at once as there are free slots, each
 * started (pgfn.begin_runs, one round trip for all that fit) just before it
 * runs. Every event is run and recorded on its own terms, as executeEvent
 * would: a failed one gets its own retry or dead letter. Throws, once all
 * are over, if an attempt's outcome could not be recorded at all (the
 * database is away): graphile-worker then runs the job again, and the
 * events it finished already are skipped (pgfn.begin_run: done).
 */
export async function executeJob(
  deps: ExecutorDeps,
  eventIds: readonly string[],
  jobId: string,
): Promise<void> {
  const pending = [...new Set(eventIds)].sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1));
  const runs: Promise<unknown>[] = [];
  const errors: unknown[] = [];
  try {
    while (pending.length > 0) {
      const taken = deps.slots ? await deps.slots.take(pending.length) : pending.length;
      const chunk = pending.splice(0, taken);
      let begun: BeginRunResult[];
      try {
        begun = await beginRuns(deps.db, { eventIds: chunk, workerId: deps.workerId, jobId });
      } catch (error) {
        deps.slots?.give(taken);
        throw error;
      }
      const gone = chunk.length - begun.length;
      if (gone > 0) {
        deps.logger.warn(
          { operation: "run", job_id: jobId, events: gone },
          "events no longer exist; nothing to run",
        );
      }
      // Only an attempt that started keeps its slot while it runs.
      deps.slots?.give(taken - begun.filter((b) => b.slot?.started).length);
      for (const b of begun) {
        const run = runBegun(deps, b, jobId, {}).catch((error: unknown) => errors.push(error));
        runs.push(b.slot?.started ? run.finally(() => deps.slots?.give()) : run);
      }
    }
  } finally {
    await Promise.all(runs);
  }
  if (errors.length > 0) throw errors[0];
}

/** executeEvent once its attempt was begun (or found done, or refused). */
async function runBegun(
  deps: ExecutorDeps,
  begun: BeginRunResult,
  jobId: string | null,
  options: { readonly sync?: boolean },
): Promise<Run | undefined> {
  const { db, logger } = deps;
  const { event, fn, slot } = begun;
  const eventId = event.id;
  // A job can outlive its work: a daemon killed after recording the run but
  // before graphile-worker completed the job leaves it to run again.
  if (!slot) {
    logger.info(
      { operation: "run", event_id: eventId, run_id: begun.doneRunId },
      "event already done; not run again",
    );
    return succeededRun(db, eventId);
  }
  if (!slot.started && slot.refused === "DEFERRED") {
    logger.debug(
      { operation: "run", event_id: eventId, job_id: jobId },
      "event waits for a job of its own; not run by this one",
    );
    return undefined;
  }
  if (!slot.started) {
    if (options.sync) {
      throw slot.refused === "CIRCUIT_OPEN"
        ? new PgfnError(
            "CIRCUIT_OPEN",
            `Function "${event.function_name}" is failing too often; its circuit is open until ${slot.retryAt?.toISOString() ?? "its cooldown ends"}. Try again later.`,
          )
        : new PgfnError(
            "CONCURRENCY_LIMIT",
            slot.refused === "ORDERING"
              ? `Function "${event.function_name}" runs its events one at a time in order (ordering = '${fn?.ordering}') and is busy with earlier ones; try again shortly.`
              : `Function "${event.function_name}" is already running ${fn?.max_concurrency} times (its max_concurrency); try again shortly.`,
          );
    }
    // Wait without holding a worker, as a job due later: at the circuit's
    // cooldown, or a moment from now for a free slot. Jitter keeps the
    // waiting events of one function from returning together. An ordered
    // function's event waits exactly as told: its turn comes in line.
    const waitMs = slot.retryAt ? Math.max(0, slot.retryAt.getTime() - Date.now()) : 100;
    const jitterMs = slot.refused === "ORDERING" ? 0 : slot.retryAt ? 1000 : 400;
    await deferEvent(db, event, fn, waitMs + Math.floor(Math.random() * jitterMs));
    logger.debug(
      { operation: "run", event_id: eventId, function: event.function_name, reason: slot.refused },
      "deferred",
    );
    return undefined;
  }
  const { id: runId, attempt } = slot;

  const input = toEventInput(event, attempt);
  const context = { event, input, fn, attempt, sync: options.sync ?? false };
  let started = performance.now();
  let run: Run;
  try {
    if (attempt > 1 && jobId !== null) {
      // Housekeeping: failing it must not fail the attempt.
      await abandonEarlierRuns(db, { eventId, workerId: deps.workerId, runId }).catch(
        (e: unknown) =>
          logger.warn(
            { operation: "run", event_id: eventId, error: (e as Error).message },
            "could not end this event's earlier attempts",
          ),
      );
    }
    // graphile-worker tries a job once more than the event has attempts
    // left (sql/000009): that last try, or an attempt started after
    // max_attempts was lowered, ends the event here without running it.
    if (fn && !options.sync && attempt > fn.max_attempts) {
      throw new PgfnError(
        "INTERNAL",
        `This would be attempt ${attempt} of an event whose function allows ${fn.max_attempts} (max_attempts), so the handler was not run: the last attempt could not be recorded, or max_attempts was lowered since. The earlier runs of event ${eventId} say what happened.`,
      );
    }
    if (!fn || !fn.enabled) {
      throw new PgfnError(
        "FUNCTION_NOT_FOUND",
        fn
          ? `Function "${event.function_name}" is disabled. Enable it and retry the run.`
          : `Function "${event.function_name}" is not deployed. Deploy it and retry the run.`,
      );
    }
    const module = await deps.modules.get(fn.wasm_sha256, async () => {
      const wasm = await getWasm(db, fn.name, fn.wasm_sha256);
      if (!wasm) {
        throw new PgfnError(
          "FUNCTION_NOT_FOUND",
          `Function "${fn.name}" was redeployed or deleted while this run started.`,
        );
      }
      return wasm;
    });
    // From here: duration_ms is the handler's time, not the module's first compile.
    started = performance.now();
    const outcome = await deps.sandbox.invoke({
      module,
      input,
      entry: fn.entrypoint,
      timeoutMs: fn.timeout_ms,
      memoryLimitBytes: fn.memory_limit_mb * 1024 * 1024,
      config: fn.env,
      // Built when a sandbox thread starts the run: the deadline the pool kills it at.
      ...(deps.hostFunctions && {
        host: (deadline: number) => deps.hostFunctions!(fn, deadline),
      }),
    });
    const durationMs = performance.now() - started;
    // Secret env values never reach a run row or a log line, whatever the
    // handler printed; nor does a character Postgres cannot store, which
    // would fail the statement that records the run.
    const secrets = secretValues(fn.env);
    const clean = (text: string) => storableText(redactAndClip(text, secrets, MAX_MESSAGE_CHARS));
    const logs = outcome.logs.map((l) => ({ ...l, message: clean(l.message) }));
    for (const l of logs) {
      const level =
        l.level === "error" || l.level === "warn" || l.level === "info" ? l.level : "debug";
      logger[level](
        { operation: "handler_log", function: fn.name, run_id: runId, event_id: eventId },
        l.message,
      );
    }
    // Output that jsonb cannot hold is the handler's fault, like output that
    // is not JSON: not something to retry, let alone for ever.
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
      runId,
      functionName: event.function_name,
      status: ok ? "succeeded" : "failed",
      result: ok ? outcome.output : undefined,
      ...(error && {
        errorCode: error.code,
        httpStatus: HTTP_STATUS[error.code],
        errorMessage: clean(error.message),
      }),
      logs,
      durationMs,
      ...(outcome.memoryPeakBytes !== undefined && { memoryPeakBytes: outcome.memoryPeakBytes }),
    };
    run = await recordOutcome(db, context, finish, facts, deps.recorder);
  } catch (caught) {
    const error = coerceError(caught);
    // Not one of ours (those say what happened): pgfn's own fault or the
    // database's, such as a statement that recorded the outcome failing.
    const unexpected = !(caught instanceof PgfnError);
    const message = unexpected
      ? `pgfn could not finish this attempt: ${error.message}`
      : error.message;
    const secrets = fn ? secretValues(fn.env) : [];
    const errorMessage = storableText(redactAndClip(message, secrets, MAX_MESSAGE_CHARS));
    if (unexpected) {
      logger.error(
        {
          operation: "run",
          function: event.function_name,
          run_id: runId,
          event_id: eventId,
          error: error.message,
        },
        "attempt failed by an internal error; it is retried while max_attempts allows",
      );
    }
    try {
      // The function's failure model, whatever failed: retried while its
      // max_attempts allows (INTERNAL is retryable), then a dead letter and
      // on_error. Never graphile-worker's 25 retries of a throwing job.
      run = await recordOutcome(
        db,
        context,
        {
          runId,
          functionName: event.function_name,
          status: "failed",
          errorCode: error.code,
          httpStatus: error.status,
          errorMessage,
          logs: [],
          durationMs: performance.now() - started,
        },
        { code: error.code },
      );
    } catch (again) {
      // Not even the failure can be recorded: the database is down. The
      // attempt must not stay `running` while this daemon lives (no reaper
      // would end it, and it would hold a max_concurrency slot); if this
      // fails too, this daemon's heartbeat ends it once graphile-worker has
      // released the job (pgfn.abandon_orphaned_runs), or the reaper does
      // if the daemon dies. graphile-worker
      // then tries the job again, at most once more than the event has
      // attempts left (sql/000009): the attempt past max_attempts is refused
      // above and ends the event in the dead letters.
      await db
        .updateTable("pgfn.function_runs")
        .set({
          status: "abandoned",
          error_code: "INTERNAL",
          http_status: HTTP_STATUS.INTERNAL,
          error_message: errorMessage,
          finished_at: sql`clock_timestamp()`,
          duration_ms: performance.now() - started,
          will_retry: jobId !== null,
        })
        .where("id", "=", runId)
        .where("status", "=", "running")
        .execute()
        .catch((e: unknown) =>
          logger.error(
            { operation: "run", run_id: runId, error: (e as Error).message },
            "could not mark the attempt abandoned",
          ),
        );
      logger.error(
        {
          operation: "run",
          function: event.function_name,
          run_id: runId,
          event_id: eventId,
          error: (again as Error).message,
        },
        "could not record the attempt's failure; its job will be retried",
      );
      throw again;
    }
  }

  const line = {
    operation: "run",
    function: run.function_name,
    run_id: run.id,
    event_id: run.event_id,
    attempt: run.attempt,
    status: run.status,
    duration_ms: run.duration_ms,
    ...(run.error_code && { error: { code: run.error_code, message: run.error_message } }),
  };
  if (run.status === "succeeded") logger.info(line, "run succeeded");
  else logger.warn(line, "run failed");
  // Only failures and probes can move a circuit: a healthy function's runs skip this.
  if (fn && (run.status === "failed" || slot.probe)) {
    const circuit = await recordCircuit(db, run.id);
    if (circuit === "opened" || circuit === "reopened" || (circuit === "closed" && slot.probe)) {
      logger.warn(
        { operation: "circuit", function: fn.name, run_id: run.id, state: circuit },
        circuit === "closed"
          ? "circuit closed: the probe succeeded; deferred work runs again"
          : `circuit ${circuit}: work for this function is deferred for ${fn.circuit_cooldown_ms} ms`,
      );
    }
  }
  if (fn && fn.ordering !== "none") {
    await wakeNextInLine(db, fn.name).catch((e: unknown) =>
      logger.warn(
        { operation: "run", function: fn.name, error: (e as Error).message },
        "could not wake the next event in line; it runs at its deferral",
      ),
    );
  }
  deps.onRunFinished?.(run, event);
  return run;
}
