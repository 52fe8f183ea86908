/**
 * One attempt at one event: begin it (load the event and its function,
 * record a `running` run), call the handler (no transaction open
 * meanwhile), record the outcome, and tell the circuit and the ordering
 * about it. Used by the graphile-worker task and by synchronous invokes
 * alike. The event's JSON is eventInput.ts's; what an outcome means and how
 * it is recorded, outcome.ts's.
 */
import type { Logger } from "pino";
import type { Db } from "../db/database.js";
import type { EventRow } from "../db/events.js";
import { getWasm, type FunctionInfo } from "../db/functions.js";
import { addWaitJob } from "../db/jobs.js";
import {
  abandonEarlierRuns,
  abandonRun,
  recordCircuit,
  beginRun,
  beginRuns,
  wakeNextInLine,
  succeededRun,
  type BeginRunResult,
  type Run,
  type StartRunResult,
} from "../db/runs.js";
import { coerceError, PgfnError } from "../errors.js";
import { roundMs } from "../format.js";
import { HTTP_STATUS } from "../http/errors.js";
import type { ModuleCache } from "../sandbox/module.js";
import type { HostBinding, SandboxPool } from "../sandbox/pool.js";
import { handlerInput } from "./eventInput.js";
import { classifyOutcome, cleanText, recordOutcome, type OutcomeContext } from "./outcome.js";
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
  readonly daemonId: string;
  readonly logger: Logger;
  /** Called after each run is recorded, with its event (the dev console, the metrics). */
  readonly onRunFinished?: (run: Run, event: EventRow) => void;
  /** Records successes together (see recorder.ts). (Default: one statement per run) */
  readonly recorder?: SuccessRecorder;
  /** Bounds the attempts jobs run at once (see slots.ts). (Default: no bound) */
  readonly slots?: Slots;
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
  const begun = await beginRun(deps.db, { eventId, daemonId: deps.daemonId, jobId });
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
        begun = await beginRuns(deps.db, { eventIds: chunk, daemonId: deps.daemonId, jobId });
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
  const { event, fn, slot } = begun;
  // A job can outlive its work: a daemon killed after recording the run but
  // before graphile-worker completed the job leaves it to run again.
  if (!slot) {
    deps.logger.info(
      { operation: "run", event_id: event.id, run_id: begun.doneRunId },
      "event already done; not run again",
    );
    return succeededRun(deps.db, event.id);
  }
  if (!slot.started) {
    await notStarted(deps, begun, slot, jobId, options.sync ?? false);
    return undefined;
  }
  const attempt: Attempt = {
    event,
    fn,
    attempt: slot.attempt,
    sync: options.sync ?? false,
    runId: slot.id,
    jobId,
  };
  const run = await runAttempt(deps, attempt);
  logRun(deps.logger, run);
  await afterRun(deps, run, fn, slot.probe);
  deps.onRunFinished?.(run, event);
  return run;
}

/**
 * An attempt that may not start now. A synchronous invoke hears why; a
 * job's event waits without holding a worker, as a job due later: at the
 * circuit's cooldown, or a moment from now for a free slot. Jitter keeps
 * the waiting events of one function from returning together. An ordered
 * function's event waits exactly as told: its turn comes in line. An event
 * that another job of its own will run (DEFERRED) is left to it.
 */
async function notStarted(
  deps: ExecutorDeps,
  { event, fn }: BeginRunResult,
  slot: Extract<StartRunResult, { started: false }>,
  jobId: string | null,
  sync: boolean,
): Promise<void> {
  if (slot.refused === "DEFERRED") {
    deps.logger.debug(
      { operation: "run", event_id: event.id, job_id: jobId },
      "event waits for a job of its own; not run by this one",
    );
    return;
  }
  if (sync) {
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
  const waitMs = slot.retryAt ? Math.max(0, slot.retryAt.getTime() - Date.now()) : 100;
  const jitterMs = slot.refused === "ORDERING" ? 0 : slot.retryAt ? 1000 : 400;
  await addWaitJob(deps.db, event.id, waitMs + Math.floor(Math.random() * jitterMs));
  deps.logger.debug(
    { operation: "run", event_id: event.id, function: event.function_name, reason: slot.refused },
    "deferred",
  );
}

/** A started attempt: what running and recording it needs. */
interface Attempt extends OutcomeContext {
  /** Its `running` row. */
  readonly runId: string;
  /** The job running it; null for a synchronous invoke. */
  readonly jobId: string | null;
}

/**
 * Runs a started attempt and records its outcome; whatever goes wrong on
 * the way is recorded as the attempt's failure (recordFailure).
 */
async function runAttempt(deps: ExecutorDeps, a: Attempt): Promise<Run> {
  // duration_ms is the handler's time, not the module's first compile;
  // until the handler starts, the time since the attempt began.
  let started = performance.now();
  try {
    if (a.attempt > 1 && a.jobId !== null) await endEarlierAttempts(deps, a);
    const fn = runnableFunction(a);
    const input = await handlerInput(deps.db, a.event, a.attempt);
    const module = await loadModule(deps, fn);
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
    const clean = cleanText(fn);
    const logs = outcome.logs.map((l) => ({ ...l, message: clean(l.message) }));
    logHandler(deps.logger, a, logs);
    const { finish, facts } = classifyOutcome(
      { runId: a.runId, functionName: a.event.function_name },
      { ...outcome, logs },
      durationMs,
      clean,
    );
    return await recordOutcome(deps.db, a, finish, facts, deps.recorder);
  } catch (caught) {
    return recordFailure(deps, a, caught, performance.now() - started);
  }
}

/**
 * Ends the attempts of this event that this daemon left running before
 * (sql/000015, pgfn.abandon_earlier_runs). Housekeeping: failing it must
 * not fail the attempt.
 */
async function endEarlierAttempts(deps: ExecutorDeps, a: Attempt): Promise<void> {
  await abandonEarlierRuns(deps.db, a.runId).catch((e: unknown) =>
    deps.logger.warn(
      { operation: "run", event_id: a.event.id, error: (e as Error).message },
      "could not end this event's earlier attempts",
    ),
  );
}

/** The attempt's function, if its handler may run; else the failure to record. */
function runnableFunction(a: Attempt): FunctionInfo {
  const { fn, event, attempt } = a;
  // graphile-worker tries a job once more than the event has attempts
  // left (sql/000009): that last try, or an attempt started after
  // max_attempts was lowered, ends the event here without running it.
  if (fn && !a.sync && attempt > fn.max_attempts) {
    throw new PgfnError(
      "INTERNAL",
      `This would be attempt ${attempt} of an event whose function allows ${fn.max_attempts} (max_attempts), so the handler was not run: the last attempt could not be recorded, or max_attempts was lowered since. The earlier runs of event ${event.id} say what happened.`,
    );
  }
  if (!fn || !fn.enabled) {
    throw new PgfnError(
      "FUNCTION_NOT_FOUND",
      fn
        ? `Function "${event.function_name}" is disabled. Enable it (\`pgfn enable ${event.function_name}\`) and retry the run.`
        : `Function "${event.function_name}" is not deployed. Deploy it and retry the run.`,
    );
  }
  return fn;
}

/** The function's compiled module (or JavaScript handler), from the cache or the database. */
async function loadModule(deps: ExecutorDeps, fn: FunctionInfo) {
  return deps.modules.get(
    fn.wasm_sha256,
    async () => {
      const wasm = await getWasm(deps.db, fn.name, fn.wasm_sha256);
      if (!wasm) {
        throw new PgfnError(
          "FUNCTION_NOT_FOUND",
          `Function "${fn.name}" was redeployed or deleted while this run started.`,
        );
      }
      return wasm;
    },
    fn.runtime,
  );
}

/** The handler's log lines, into the daemon's log. */
function logHandler(
  logger: Logger,
  a: Attempt,
  logs: readonly { readonly level: string; readonly message: string }[],
): void {
  for (const l of logs) {
    const level =
      l.level === "error" || l.level === "warn" || l.level === "info" ? l.level : "debug";
    logger[level](
      {
        operation: "handler_log",
        function: a.event.function_name,
        run_id: a.runId,
        event_id: a.event.id,
      },
      l.message,
    );
  }
}

/**
 * Records an attempt that failed before it had an outcome of its own: the
 * function refused (missing, disabled, past max_attempts), or pgfn or the
 * database failed, such as the statement that recorded the outcome. The
 * function's failure model applies, whatever failed: retried while its
 * max_attempts allows (INTERNAL is retryable), then a dead letter and
 * on_error. Never graphile-worker's 25 retries of a throwing job.
 */
async function recordFailure(
  deps: ExecutorDeps,
  a: Attempt,
  caught: unknown,
  durationMs: number,
): Promise<Run> {
  const { logger, db } = deps;
  const error = coerceError(caught);
  // Not one of ours (those say what happened): pgfn's own fault or the database's.
  const unexpected = !(caught instanceof PgfnError);
  const errorMessage = cleanText(a.fn)(
    unexpected ? `pgfn could not finish this attempt: ${error.message}` : error.message,
  );
  const fields = {
    operation: "run",
    function: a.event.function_name,
    run_id: a.runId,
    event_id: a.event.id,
  };
  if (unexpected) {
    logger.error(
      { ...fields, error: error.message },
      "attempt failed by an internal error; it is retried while max_attempts allows",
    );
  }
  try {
    return await recordOutcome(
      db,
      a,
      {
        runId: a.runId,
        functionName: a.event.function_name,
        status: "failed",
        errorCode: error.code,
        httpStatus: HTTP_STATUS[error.code],
        errorMessage,
        logs: [],
        durationMs,
      },
      { code: error.code },
    );
  } catch (again) {
    await abandonUnrecorded(deps, a, errorMessage);
    logger.error(
      { ...fields, error: (again as Error).message },
      "could not record the attempt's failure; its job will be retried",
    );
    throw again;
  }
}

/**
 * Not even the attempt's failure could be recorded: the database is down.
 * The attempt must not stay `running` while this daemon lives (no reaper
 * would end it, and it would hold a max_concurrency slot); if this fails
 * too, the next attempt ends it (pgfn.abandon_earlier_runs), or this
 * daemon's heartbeat once graphile-worker has released the job
 * (pgfn.abandon_orphaned_runs), or the reaper if the daemon dies.
 * graphile-worker then tries the job again, at most once more than the
 * event has attempts left (sql/000009): the attempt past max_attempts is
 * refused (runnableFunction) and ends the event in the dead letters.
 */
async function abandonUnrecorded(
  deps: ExecutorDeps,
  a: Attempt,
  errorMessage: string,
): Promise<void> {
  await abandonRun(deps.db, {
    runId: a.runId,
    errorMessage,
    willRetry: a.jobId !== null,
  }).catch((e: unknown) =>
    deps.logger.error(
      { operation: "run", run_id: a.runId, error: (e as Error).message },
      "could not mark the attempt abandoned",
    ),
  );
}

/** The run's one log line. */
function logRun(logger: Logger, run: Run): void {
  const line = {
    operation: "run",
    function: run.function_name,
    run_id: run.id,
    event_id: run.event_id,
    attempt: run.attempt,
    status: run.status,
    duration_ms: run.duration_ms === null ? null : roundMs(run.duration_ms),
    ...(run.error_code && { error: { code: run.error_code, message: run.error_message } }),
  };
  if (run.status === "succeeded") logger.info(line, "run succeeded");
  else logger.warn(line, "run failed");
}

/**
 * What a recorded run tells the rest of the function: its circuit (only
 * failures and probes can move one, so a healthy function's runs skip it),
 * and, for an ordered function, the event next in line.
 */
async function afterRun(
  deps: ExecutorDeps,
  run: Run,
  fn: FunctionInfo | undefined,
  probe: boolean,
): Promise<void> {
  const { db, logger } = deps;
  if (fn && (run.status === "failed" || probe)) {
    const circuit = await recordCircuit(db, run.id);
    if (circuit === "opened" || circuit === "reopened" || (circuit === "closed" && probe)) {
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
}
