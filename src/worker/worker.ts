/**
 * The graphile-worker side: jobs named `pgfn_run` (added by pgfn.dispatch)
 * become handler runs.
 */
import { EventEmitter } from "node:events";
import {
  run,
  Logger as GraphileLogger,
  type Runner,
  type Task,
  type WorkerEvents,
} from "graphile-worker";
import type pg from "pg";
import type { Logger } from "pino";
import { z } from "zod";
import { PgfnError } from "../errors.js";
import { executeEvent, type ExecutorDeps } from "./execute.js";
import { RUN_TASK } from "./tasks.js";

const runPayload = z.object({ event_id: z.union([z.number().int(), z.string().regex(/^\d+$/)]) });

export interface WorkerOptions {
  readonly pool: pg.Pool;
  readonly executor: ExecutorDeps;
  /** Jobs run at once in this process. */
  readonly concurrency: number;
  /** How often to look for jobs that became due (retries); new jobs are announced by NOTIFY. */
  readonly pollIntervalMs: number;
  readonly logger: Logger;
  /** Called with each graphile-worker worker (and pool) id as it is created (for the heartbeat). */
  readonly onWorkerCreated?: (workerId: string) => void;
}

/** graphile-worker logs through ours, one level down: its info is our debug. */
function graphileLogger(logger: Logger): GraphileLogger {
  return new GraphileLogger((scope) => (level, message, meta) => {
    const fields = { operation: "worker", scope: { ...scope }, ...(meta && { meta }) };
    if (level === "error") logger.error(fields, message);
    else if (level === "warning") logger.warn(fields, message);
    else logger.debug(fields, message);
  });
}

export async function startWorker(options: WorkerOptions): Promise<Runner> {
  const task: Task = async (payload, helpers) => {
    const parsed = runPayload.safeParse(payload);
    if (!parsed.success) {
      // A job we did not make; failing it would only retry it 25 times.
      helpers.logger.error(`ignoring ${RUN_TASK} job ${helpers.job.id} with a malformed payload`);
      return;
    }
    await executeEvent(options.executor, String(parsed.data.event_id), String(helpers.job.id));
  };
  const events = new EventEmitter() as WorkerEvents;
  events.on("worker:create", ({ worker }) => options.onWorkerCreated?.(worker.workerId));
  // With the local queue, jobs waiting in it are locked by the pool's id:
  // the reaper must release those too.
  events.on("pool:create", ({ workerPool }) => options.onWorkerCreated?.(workerPool.id));
  return run({
    events,
    pgPool: options.pool,
    concurrency: options.concurrency,
    pollInterval: options.pollIntervalMs,
    noHandleSignals: true,
    logger: graphileLogger(options.logger),
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
      },
    },
  }).catch((error: unknown) => {
    throw new PgfnError("INTERNAL", `graphile-worker did not start: ${(error as Error).message}`, {
      cause: error,
    });
  });
}
