/**
 * The graphile-worker side: jobs named `pgfn_run` (added by pgfn.dispatch)
 * become handler runs, under a supervisor that replaces graphile-worker's
 * runner when it stops on its own.
 *
 * Why a supervisor: graphile-worker 0.17.3 stops its whole worker pool when
 * one batched job completion or failure fails (`batch()` in its main.js
 * gives up after the first error: graphile/worker#636), which is what
 * happens to a completion sent while the database is restarting. The
 * runner's promise then resolves as if it had been asked to stop
 * (graphile/worker#635), and the jobs it held stay locked for graphile's 4
 * hours. So the supervisor watches the runner; when it stops without being
 * asked (graphile-worker lets the runs under way finish first), the
 * supervisor releases its jobs (pgfn.release_stopped_worker) and starts a
 * new runner, retrying with backoff for as long as the database is away.
 * Released jobs get back the attempt graphile-worker counted when it fetched
 * them (pgfn.release_jobs): a job held by a few stopped runners must not run out of
 * graphile attempts before pgfn's own count says the event is done.
 *
 * graphile-worker also stops its runner when it hears a "breaking" notice on
 * the `worker:migrate` channel (a newer graphile-worker announcing a schema
 * change this one does not understand). Any role that can connect may
 * NOTIFY any channel, handlers' db_roles included, and graphile-worker
 * trusts the notice (graphile/worker#361): one `select pg_notify(...)` from
 * a handler would stop every daemon's runner, and stall all their work
 * until the slowest run under way ended. So the supervisor takes such
 * notices from graphile-worker before it acts on them and believes one only
 * if graphile_worker.migrations, which only pgfn's owner writes, holds a
 * breaking migration newer than the revisions our graphile-worker knows.
 */
import { EventEmitter } from "node:events";
import {
  run,
  Logger as GraphileLogger,
  type Runner,
  type Task,
  type WorkerEvents,
} from "graphile-worker";
// Not part of graphile-worker's API, but the list its own startup check
// compares the database with; the version is pinned in package.json.
import { migrations as graphileMigrations } from "graphile-worker/dist/generated/sql.js";
import type pg from "pg";
import type { Logger } from "pino";
import { z } from "zod";
import { releaseStoppedWorker } from "../db/daemons.js";
import { coerceError, PgfnError } from "../errors.js";
import { executeJob, type ExecutorDeps } from "./execute.js";
import { RUN_TASK } from "./tasks.js";

const eventId = z.union([z.number().int(), z.string().regex(/^\d+$/)]);
/** A job carries one event, or a batch of one function's events (sql/000011_batch_jobs.sql). */
const runPayload = z.union([
  z.object({ event_id: eventId }),
  z.object({ event_ids: z.array(eventId).min(1) }),
]);

/**
 * How long a runner that began to stop on its own may take to finish (it
 * waits for its runs) before the daemon gives up on replacing it in this
 * process: the longest timeout_ms a function may have (300 s), and a margin
 * for recording the outcome.
 */
export const DRAIN_TIMEOUT_MS = 330_000;

/**
 * The newest graphile_worker schema revision the graphile-worker we ship
 * knows (19 for 0.17.3). A breaking migration past it makes our runner
 * unsafe, as graphile-worker's startup check says.
 */
export const GRAPHILE_SCHEMA_REVISION = Math.max(
  ...Object.keys(graphileMigrations).map((file) => Number.parseInt(file, 10)),
);

/** Where graphile-worker announces its migrations. */
const MIGRATE_CHANNEL = "worker:migrate";

/**
 * How often, at most, a warning says that worker:migrate notices were
 * ignored: anyone may send them, as fast as they like. (60000 ms)
 */
const IGNORED_NOTICE_LOG_INTERVAL_MS = 60_000;

/**
 * The pause before the next try at replacing a stopped runner: 200 ms
 * doubling to at most 5 s (200, 400, 800, 1600, 3200, 5000, ...), each
 * between half and all of that so that daemons stopped by one outage do not
 * come back in step.
 */
export function restartDelayMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(200 * 2 ** Math.min(attempt, 10), 5000);
  return Math.round(ceiling * (0.5 + random() / 2));
}

export interface WorkerOptions {
  readonly pool: pg.Pool;
  readonly executor: ExecutorDeps;
  /** Jobs run at once in this process. */
  readonly concurrency: number;
  /** How often to look for jobs that became due (retries); new jobs are announced by NOTIFY. */
  readonly pollIntervalMs: number;
  readonly logger: Logger;
  /**
   * Called when a stopping runner cannot be replaced in this process (its
   * runs did not finish within DRAIN_TIMEOUT_MS): the process should exit
   * non-zero so that its supervisor starts a fresh one. (Default: log only)
   */
  readonly onFatal?: (error: Error) => void;
}

/**
 * "running"; "restarting" from the moment a runner stops on its own until
 * its replacement runs; "stopped" once stop() was called.
 */
export type WorkerState = "running" | "restarting" | "stopped";

export interface Worker {
  readonly state: WorkerState;
  /** Runners that stopped on their own and were replaced since start. */
  readonly restarts: number;
  /**
   * graphile-worker ids (pools and workers) that may hold this daemon's
   * jobs: the current runner's, and a stopped runner's until its jobs are
   * released. The heartbeat records them so that the reaper can release
   * them if this daemon dies.
   */
  readonly graphileWorkerIds: readonly string[];
  /**
   * The running runner's ids and the jobs it knows it holds (fetched and
   * not yet completed, failed or returned), or undefined while no runner
   * runs. A job locked by those ids that is not among them was locked by a
   * fetch whose reply was lost (the connection dropped after the database
   * committed it): the runner will never run or release it.
   */
  heldJobs(): { readonly ids: readonly string[]; readonly jobIds: readonly string[] } | undefined;
  /** Stops taking jobs and waits for the runs under way. */
  stop(): Promise<void>;
}

/**
 * How long a job stays counted as held after its runner reported it done:
 * its completion (or failure, or return) query is sent at once, and is over
 * well before this. (10000 ms)
 */
const HELD_AFTER_DONE_MS = 10_000;

/** graphile-worker logs through ours, one level down: its info is our debug. */
function graphileLogger(logger: Logger): GraphileLogger {
  return new GraphileLogger((scope) => (level, message, meta) => {
    const fields = { operation: "worker", scope: { ...scope }, ...(meta && { meta }) };
    if (level === "error") logger.error(fields, message);
    else if (level === "warning") logger.warn(fields, message);
    else logger.debug(fields, message);
  });
}

/** One graphile-worker runner and what the supervisor knows about it. */
interface Generation {
  runner: Runner | undefined;
  /** Its pool's and workers' ids: what its jobs are locked by. */
  readonly ids: string[];
  /** Why it stopped, from its events. */
  reason: string | undefined;
  /** Set when it began to stop on its own: fires if it never finishes stopping. */
  watchdog?: NodeJS.Timeout;
  /** Ids of the jobs it fetched and has not reported done (see Worker.heldJobs). */
  readonly held: Set<string>;
}

export async function startWorker(options: WorkerOptions): Promise<Worker> {
  const { logger, pool } = options;
  const daemonId = options.executor.daemonId;
  let state: WorkerState = "running";
  let restarts = 0;
  let current: Generation | undefined;
  /** Stopped runners whose jobs are not released yet. */
  const unreleased = new Set<Generation>();
  let replacing: Promise<void> | undefined;
  /** A stopping runner's runs never finished: it is never replaced here (see fail). */
  let fatal = false;
  const stopController = new AbortController();
  /** A check of worker:migrate notices under way, and whether one came in meanwhile. */
  let checkingNotice: Promise<void> | undefined;
  let noticeAgain = false;
  /** Notices found false since the last warning, and the sender of the latest. */
  let ignoredNotices = 0;
  let noticePid: number | undefined;
  let ignoredLoggedAt = -Infinity;

  const startRunner = async (): Promise<Generation> => {
    const gen: Generation = {
      runner: undefined,
      ids: [],
      reason: undefined,
      held: new Set(),
    };
    const task: Task = async (payload, helpers) => {
      const parsed = runPayload.safeParse(payload);
      if (!parsed.success) {
        // A job we did not make; failing it would only retry it 25 times.
        helpers.logger.error(`ignoring ${RUN_TASK} job ${helpers.job.id} with a malformed payload`);
        return;
      }
      const ids = "event_id" in parsed.data ? [parsed.data.event_id] : parsed.data.event_ids;
      await executeJob(options.executor, ids.map(String), String(helpers.job.id));
    };
    const events = new EventEmitter() as WorkerEvents;
    events.on("pool:create", ({ workerPool }) => gen.ids.push(workerPool.id));
    events.on("worker:create", ({ worker }) => gen.ids.push(worker.workerId));
    events.on("localQueue:getJobs:complete", ({ jobs }) => {
      for (const job of jobs) gen.held.add(String(job.id));
    });
    const done = (id: string) => {
      const timer = setTimeout(() => gen.held.delete(id), HELD_AFTER_DONE_MS);
      timer.unref();
    };
    events.on("job:complete", ({ job }) => done(String(job.id)));
    events.on("localQueue:returnJobs", ({ jobs }) => {
      for (const job of jobs) done(String(job.id));
    });
    events.on("pool:listen:notification", ({ message }) => {
      if (message.channel !== MIGRATE_CHANNEL) return;
      // graphile-worker looks at the channel right after this event, on this
      // very object: renamed, the notice is passed over (logged at debug).
      // checkMigrateNotice decides, from the database, whether to stop.
      message.channel = `${MIGRATE_CHANNEL} (checked by pgfn)`;
      ignoredNotices++;
      noticePid = message.processId;
      checkMigrateNotice();
    });
    events.on("pool:fatalError", ({ error, action }) => {
      gen.reason ??= `${action} failed: ${coerceError(error).message}`;
    });
    events.on("pool:gracefulShutdown", ({ message }) => {
      if (stopController.signal.aborted || gen !== current) return;
      gen.reason ??= message;
      // Not asked to stop: say so at once (/readyz), not only once it has.
      state = "restarting";
      // graphile-worker waits for the runs under way before its runner
      // settles; one that never ends would keep this daemon from working.
      gen.watchdog = setTimeout(() => fail(gen), DRAIN_TIMEOUT_MS);
      gen.watchdog.unref();
    });
    const runner = await run({
      events,
      pgPool: pool,
      concurrency: options.concurrency,
      pollInterval: options.pollIntervalMs,
      noHandleSignals: true,
      logger: graphileLogger(logger),
      taskList: { [RUN_TASK]: task },
      preset: {
        worker: {
          // One query fetches (and locks) a batch of jobs, and completions
          // made in the same tick share one query: per run, the job costs a
          // fraction of a round trip instead of two. A completion delayed by
          // a crash only means the job runs again, and a job whose event
          // already succeeded is skipped (executeEvent).
          localQueue: { size: options.concurrency },
          completeJobBatchDelay: 0,
          // Failures batched too, for their error path rather than speed:
          // unbatched, graphile-worker does not await the failure query, and
          // one sent while the database is away rejects unhandled (which
          // kills the process). Batched, it stops the pool, which the
          // supervisor replaces.
          failJobBatchDelay: 0,
        },
      },
    });
    gen.runner = runner;
    // Current before anything can settle: the watcher below compares.
    current = gen;
    const watched = runner.promise.then(
      () => undefined,
      (error: unknown) => {
        gen.reason ??= coerceError(error).message;
      },
    );
    void watched.then(() => {
      clearTimeout(gen.watchdog);
      if (stopController.signal.aborted || gen !== current || fatal) return;
      unreleased.add(gen);
      replacing = replace(gen).finally(() => (replacing = undefined));
    });
    return gen;
  };

  /** Waits `ms`, or less if stop() is called meanwhile. */
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const signal = stopController.signal;
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
    });

  /**
   * Whether the database holds a breaking graphile_worker migration newer
   * than our graphile-worker knows; if so, stops the running runner as
   * graphile-worker would have (its runs finish first), and replacing it
   * fails on graphile-worker's own startup check until pgfn is upgraded.
   */
  const checkMigrations = async () => {
    const { rows } = await pool.query<{ id: number | null }>(
      "select max(id) as id from graphile_worker.migrations where breaking and id > $1",
      [GRAPHILE_SCHEMA_REVISION],
    );
    const breaking = rows[0]?.id ?? null;
    if (breaking !== null) {
      const gen = current;
      if (stopController.signal.aborted || !gen?.runner || gen.reason !== undefined) return;
      gen.reason = `the graphile_worker schema has breaking migration ${breaking}, and this pgfn's graphile-worker knows revisions up to ${GRAPHILE_SCHEMA_REVISION}: upgrade pgfn`;
      logger.error({ operation: "worker", worker_id: daemonId, error: gen.reason }, gen.reason);
      void gen.runner.stop(gen.reason).catch(() => undefined);
      return;
    }
    if (Date.now() - ignoredLoggedAt >= IGNORED_NOTICE_LOG_INTERVAL_MS) {
      ignoredLoggedAt = Date.now();
      logger.warn(
        {
          operation: "worker",
          worker_id: daemonId,
          notices: ignoredNotices,
          sender_pid: noticePid,
        },
        `ignored ${MIGRATE_CHANNEL} notices: graphile_worker.migrations has no breaking migration past revision ${GRAPHILE_SCHEMA_REVISION}, so no newer graphile-worker sent them (any database role can)`,
      );
      ignoredNotices = 0;
    }
  };

  /**
   * One check at a time however many notices come in; a notice that comes
   * during a check gets a check after it, since the migration it announces
   * may have committed after the first one read.
   */
  const checkMigrateNotice = () => {
    noticeAgain = true;
    if (checkingNotice || stopController.signal.aborted) return;
    checkingNotice = (async () => {
      while (noticeAgain && !stopController.signal.aborted) {
        noticeAgain = false;
        try {
          await checkMigrations();
        } catch (error) {
          logger.warn(
            { operation: "worker", worker_id: daemonId, error: coerceError(error).message },
            `could not check a ${MIGRATE_CHANNEL} notice against graphile_worker.migrations; the runner goes on`,
          );
        }
      }
      // In the same step as the last look at noticeAgain: no notice slips between.
      checkingNotice = undefined;
    })();
  };

  /** A stopped runner that cannot be replaced in this process. */
  const fail = (gen: Generation) => {
    if (fatal || stopController.signal.aborted) return;
    fatal = true;
    const error = new Error(
      `graphile-worker's runner began to stop on its own (${gen.reason ?? "unknown"}) and had not finished after ${DRAIN_TIMEOUT_MS} ms: a run under way does not end. Restart the daemon.`,
    );
    logger.fatal({ operation: "worker", worker_id: daemonId, error: error.message }, error.message);
    options.onFatal?.(error);
  };

  /** Releases the jobs of every stopped runner not released yet; throws while the database is away. */
  const releaseStopped = async () => {
    for (const gen of unreleased) {
      const abandoned = await releaseStoppedWorker(pool, daemonId, gen.ids);
      unreleased.delete(gen);
      if (abandoned > 0) {
        logger.warn(
          { operation: "worker", worker_id: daemonId, abandoned },
          "attempts left running by the stopped runner were abandoned; their jobs run again",
        );
      }
    }
  };

  const replace = async (dead: Generation): Promise<void> => {
    state = "restarting";
    logger.error(
      { operation: "worker", worker_id: daemonId, error: dead.reason ?? "unknown" },
      "graphile-worker's runner stopped on its own; replacing it",
    );
    for (let attempt = 0; !stopController.signal.aborted; attempt++) {
      try {
        await releaseStopped();
        await startRunner();
        // stop() stops the new runner too: it is `current`.
        if (stopController.signal.aborted) return;
        restarts++;
        state = "running";
        logger.warn(
          { operation: "worker", worker_id: daemonId, restarts, attempts: attempt + 1 },
          "graphile-worker's runner replaced; jobs run again",
        );
        return;
      } catch (error) {
        if (attempt === 0 || attempt % 10 === 0) {
          logger.warn(
            {
              operation: "worker",
              worker_id: daemonId,
              attempt,
              error: coerceError(error).message,
            },
            "cannot replace the stopped runner yet (is the database back?); retrying",
          );
        }
        await sleep(restartDelayMs(attempt));
      }
    }
  };

  try {
    await startRunner();
  } catch (error) {
    throw new PgfnError("INTERNAL", `graphile-worker did not start: ${(error as Error).message}`, {
      cause: error,
    });
  }

  let stopping: Promise<void> | undefined;
  return {
    get state() {
      return state;
    },
    get restarts() {
      return restarts;
    },
    get graphileWorkerIds() {
      return [...new Set([...[...unreleased].flatMap((g) => g.ids), ...(current?.ids ?? [])])];
    },
    heldJobs() {
      if (state !== "running" || !current || current.ids.length === 0) return undefined;
      return { ids: [...current.ids], jobIds: [...current.held] };
    },
    stop() {
      stopping ??= (async () => {
        stopController.abort();
        state = "stopped";
        await replacing;
        await checkingNotice;
        // graphile-worker's stop waits for the jobs under way; a runner that
        // stopped on its own says it is "already stopped".
        await current?.runner?.stop().catch(() => undefined);
        // One that had begun to stop on its own before stop() was called.
        if (current?.reason !== undefined) unreleased.add(current);
        // Best effort: a stopped runner's jobs should not wait for the reaper.
        await releaseStopped().catch((error: unknown) =>
          logger.warn(
            { operation: "worker", worker_id: daemonId, error: coerceError(error).message },
            "could not release the stopped runner's jobs; the reaper will",
          ),
        );
      })();
      return stopping;
    },
  };
}
