/**
 * `pgfn start`: the listener (NOTIFY -> dispatch), the worker (jobs ->
 * handler runs), the scheduler (cron slots -> events) and the HTTP API over
 * one pool. Stateless: every fact lives in Postgres, so
 * any number of daemons can run against one database.
 */
import type pg from "pg";
import type { Logger } from "pino";
import type { Config } from "./config.js";
import { createDb, type Db } from "./db/database.js";
import { createPool, currentRole } from "./db/pool.js";
import type { EventRow } from "./db/events.js";
import type { Run } from "./db/runs.js";
import { checksDbRole } from "./deploy.js";
import { checkReadiness } from "./http/health.js";
import { startHttpServer, type HttpServer } from "./http/server.js";
import { Dispatcher } from "./listener/dispatcher.js";
import { startListener, type Listener } from "./listener/listener.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { assertSchemaCurrent } from "./migrate.js";
import { DbQueryExecutor } from "./sandbox/host/dbQuery.js";
import { hostBindings } from "./sandbox/host/bindings.js";
import { warmMemoryGuard } from "./sandbox/memoryGuard.js";
import { createSandbox, type Sandbox } from "./sandbox/sandbox.js";
import { Scheduler, type Clock } from "./scheduler/scheduler.js";
import type { ExecutorDeps } from "./worker/execute.js";
import { startHeartbeat, type Heartbeat } from "./worker/heartbeat.js";
import { SuccessRecorder } from "./worker/recorder.js";
import { Slots } from "./worker/slots.js";
import { startWorker, type Worker } from "./worker/worker.js";

export interface DaemonOptions {
  readonly connectionString: string;
  readonly config: Config;
  readonly logger: Logger;
  /** Called after each run this daemon records. */
  readonly onRunFinished?: (run: Run, event: EventRow) => void;
  /**
   * Serve the HTTP API here (`pgfn start` passes PGFN_HTTP_PORT unless it is
   * 0). Port 0 picks a free port (tests). Tokens come from `config`.
   * (Default: no HTTP server)
   */
  readonly http?: { readonly port: number; readonly host?: string };
  /** The scheduler's time, so tests can move it. (Default: the system clock) */
  readonly clock?: Clock;
  /**
   * Called when a part of the daemon stopped and cannot be restarted in
   * this process; `pgfn start` then exits non-zero so that its supervisor
   * starts a fresh one. Parts that can be restarted (the worker's runner,
   * the listener's connection, the scheduler's ticks) are, for as long as
   * the database is away. (Default: the error is logged)
   */
  readonly onFatal?: (error: Error) => void;
}

export interface Daemon {
  readonly pool: pg.Pool;
  readonly db: Db;
  readonly executor: ExecutorDeps;
  readonly dispatcher: Dispatcher | undefined;
  readonly listener: Listener | undefined;
  /** The supervised graphile-worker runner (see src/worker/worker.ts). */
  readonly worker: Worker | undefined;
  readonly scheduler: Scheduler | undefined;
  /** This daemon's metrics, fed by the runs it records (GET /metrics). */
  readonly metrics: Metrics;
  readonly http: HttpServer | undefined;
  /** Stops taking work, lets in-flight runs finish, closes every connection. */
  stop(): Promise<void>;
}

export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  const { config, logger } = options;
  const pool = createPool(options.connectionString, config.poolSize, logger);
  let listener: Listener | undefined;
  let dispatcher: Dispatcher | undefined;
  let worker: Worker | undefined;
  let sandbox: Sandbox | undefined;
  let dbQuery: DbQueryExecutor | undefined;
  let heartbeat: Heartbeat | undefined;
  let scheduler: Scheduler | undefined;
  let http: HttpServer | undefined;
  try {
    await assertSchemaCurrent(pool);
    const db = createDb(pool);
    sandbox = createSandbox({
      size: config.sandboxThreads,
      maxInvocationsPerThread: config.sandboxRecycleAfter,
    });
    // All threads now: starting one costs tens of milliseconds a run should not pay.
    await Promise.all([sandbox.pool.warm(), warmMemoryGuard()]);
    // A db_role may not be, or reach, the role the daemon itself runs as.
    const daemonRole = await currentRole(pool);
    dbQuery = new DbQueryExecutor({
      connectionString: config.dbQueryUrl ?? options.connectionString,
      poolSize: config.dbQueryPoolSize,
      maxBytes: config.dbQueryMaxBytes,
      ...(daemonRole !== undefined && { daemonRole }),
    });
    const bindingsOptions = { dbQuery };
    const metrics = createMetrics({ db, logger });
    const onRunFinished = options.onRunFinished;
    const executor: ExecutorDeps = {
      hostFunctions: (fn, deadline) => hostBindings(bindingsOptions, fn, deadline),
      db,
      modules: sandbox.modules,
      sandbox: sandbox.pool,
      daemonId: config.daemonId,
      logger,
      recorder: new SuccessRecorder(db),
      slots: new Slots(config.workerConcurrency),
      onRunFinished: (run, event) => {
        metrics.observeRun(run, event);
        onRunFinished?.(run, event);
      },
    };
    // Registered before any run can start, so every run has a daemon to outlive.
    heartbeat = await startHeartbeat({
      pool,
      connectionString: options.connectionString,
      daemonId: config.daemonId,
      intervalMs: config.heartbeatIntervalMs,
      deadAfterMs: config.deadAfterMs,
      graphileWorkerIds: () => worker?.graphileWorkerIds ?? [],
      // A daemon without a worker runs no jobs; one whose worker is starting
      // does not know its ids yet.
      liveGraphileWorkerIds: () => (config.worker ? worker?.graphileWorkerIds : []),
      heldJobs: () => worker?.heldJobs(),
      logger,
    });
    if (config.worker) {
      worker = await startWorker({
        pool,
        executor,
        concurrency: config.workerConcurrency,
        pollIntervalMs: config.pollIntervalMs,
        logger,
        ...(options.onFatal && { onFatal: options.onFatal }),
      });
    }
    // Records the worker ids, and reaps at once whatever died while we were away.
    await heartbeat.beat();
    if (config.listener) {
      dispatcher = new Dispatcher({
        db,
        batchSize: config.dispatchBatch,
        eventsPerJob: config.eventsPerJob,
        // Twice what this daemon's worker takes at once: work in hand and
        // the next fetch, while more events gather into fuller jobs.
        maxReadyJobs: 2 * config.workerConcurrency,
        logger,
      });
      listener = await startListener({
        connectionString: options.connectionString,
        dispatcher,
        sweepIntervalMs: config.sweepIntervalMs,
        logger,
      });
    }
    if (config.scheduler) {
      scheduler = new Scheduler({
        db,
        logger,
        intervalMs: config.schedulerIntervalMs,
        ...(options.clock && { clock: options.clock }),
      });
      scheduler.start();
    }
    if (options.http) {
      // Last: /readyz must not say ready before the listener is up.
      const parts = { listener, worker, scheduler };
      http = await startHttpServer({
        port: options.http.port,
        ...(options.http.host !== undefined && { host: options.http.host }),
        db,
        executor,
        checkDbRole: checksDbRole(config.dbQueryUrl, options.connectionString),
        auth: { adminToken: config.adminToken, invokeTokens: config.invokeTokens },
        metrics: metrics.registry,
        readiness: () => checkReadiness({ pool, ...parts, logger }),
        logger,
      });
    }
    logger.info(
      {
        operation: "start",
        worker_id: config.daemonId,
        listener: config.listener,
        worker: config.worker,
        scheduler: config.scheduler,
        http: http?.url ?? false,
      },
      "pgfn daemon started",
    );
    let stopping: Promise<void> | undefined;
    return {
      pool,
      db,
      executor,
      dispatcher,
      listener,
      worker,
      scheduler,
      metrics,
      http,
      stop() {
        stopping ??= (async () => {
          // First, and waited for: synchronous invokes in flight finish
          // while the sandbox and the pool are still there.
          await http?.close();
          await scheduler?.stop();
          await listener?.stop();
          await dispatcher?.stop();
          // graphile-worker's stop waits for the jobs under way.
          await worker?.stop();
          await sandbox?.close();
          await heartbeat?.stop();
          await dbQuery?.end();
          await pool.end();
          logger.info({ operation: "stop", worker_id: config.daemonId }, "pgfn daemon stopped");
        })();
        return stopping;
      },
    };
  } catch (error) {
    await scheduler?.stop().catch(() => undefined);
    await http?.close().catch(() => undefined);
    await listener?.stop().catch(() => undefined);
    await worker?.stop().catch(() => undefined);
    await sandbox?.close().catch(() => undefined);
    await heartbeat?.stop().catch(() => undefined);
    await dbQuery?.end().catch(() => undefined);
    await pool.end().catch(() => undefined);
    throw error;
  }
}

/**
 * A daemon that takes no work of its own (no listener, worker, scheduler or
 * HTTP API), for synchronous invocations (`pgfn invoke`, `makeUtils().invoke`):
 * the executor, the sandbox and the host functions, exactly as runs get them.
 */
export function startInvoker(
  options: Pick<DaemonOptions, "connectionString" | "config" | "logger">,
): Promise<Daemon> {
  return startDaemon({
    ...options,
    config: {
      ...options.config,
      listener: false,
      worker: false,
      scheduler: false,
      sandboxThreads: 1,
    },
  });
}
