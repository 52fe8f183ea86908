/**
 * `run()`: the daemon of `pgfn start`, inside a Node application, in the
 * manner of graphile-worker's `run()`. The package's public entry is
 * src/index.ts.
 */
import type { Logger } from "pino";
import { loadConfigFor } from "./config.js";
import { startDaemon } from "./daemon.js";
import { createPool } from "./db/pool.js";
import type { Run } from "./db/runs.js";
import { createLogger } from "./logger.js";
import { migrate } from "./migrate.js";

export interface RunOptions {
  /** The database pgfn is installed in (a postgres:// URL). */
  readonly connectionString: string;
  /**
   * Settings by their environment variable names (README "Configuration"),
   * e.g. `{ PGFN_WORKER_CONCURRENCY: "4" }`; a bad value is refused naming
   * the variable. DATABASE_URL is not read: `connectionString` is.
   * (Default: process.env)
   */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** A pino logger. (Default: JSON lines on stdout, at PGFN_LOG_LEVEL) */
  readonly logger?: Logger;
  /**
   * Serve the HTTP API on this port (0: a free one, see `Runner.httpUrl`);
   * tokens come from PGFN_ADMIN_TOKEN and PGFN_INVOKE_TOKENS. PGFN_HTTP_PORT
   * is not read. (Default: no HTTP API)
   */
  readonly http?: { readonly port: number; readonly host?: string };
  /** Apply pending migrations first, as `pgfn start --migrate` does. (Default: false) */
  readonly migrate?: boolean;
  /** Called after each run this daemon records, succeeded or not. */
  readonly onRunFinished?: (run: Run) => void;
}

export interface Runner {
  /**
   * Stops taking work, lets the runs under way finish and closes every
   * connection. Idempotent.
   */
  stop(): Promise<void>;
  /**
   * Settles when the daemon has stopped: resolves after `stop()`; rejects
   * when a part of it failed beyond restarting, after it stopped itself.
   * (The failure is also logged, so leaving this unobserved is safe.)
   */
  readonly promise: Promise<void>;
  /** Where the HTTP API listens (`http://127.0.0.1:7780`), when `http` was given. */
  readonly httpUrl: string | undefined;
}

/**
 * Starts a daemon: the listener, the worker and the scheduler (each can be
 * turned off with PGFN_LISTENER, PGFN_WORKER, PGFN_SCHEDULER = false), and
 * the HTTP API if asked for. Resolves once it runs; rejects if it cannot
 * start (no schema: run `migrate` first, or pass `migrate: true`).
 *
 * No signal handlers are installed: call `stop()` on SIGTERM yourself.
 *
 * @example
 * const runner = await run({ connectionString: process.env.DATABASE_URL! });
 * process.once("SIGTERM", () => void runner.stop());
 * await runner.promise;
 */
export async function run(options: RunOptions): Promise<Runner> {
  const config = loadConfigFor(options.connectionString, options.env);
  const logger = options.logger ?? createLogger({ level: config.logLevel });
  if (options.migrate) {
    const pool = createPool(options.connectionString, 2, logger);
    try {
      await migrate(pool);
    } finally {
      await pool.end();
    }
  }
  let failed: (error: Error) => void = () => undefined;
  const failure = new Promise<Error>((resolve) => (failed = resolve));
  const onRunFinished = options.onRunFinished;
  const daemon = await startDaemon({
    connectionString: options.connectionString,
    config,
    logger,
    ...(options.http && { http: options.http }),
    ...(onRunFinished && { onRunFinished: (run: Run) => onRunFinished(run) }),
    onFatal: (error) => failed(error),
  });
  let stopped: () => void = () => undefined;
  const stopping = new Promise<void>((resolve) => (stopped = resolve));
  const promise = Promise.race([
    stopping,
    failure.then(async (error) => {
      await daemon.stop().catch(() => undefined);
      throw error;
    }),
  ]);
  // Logged by the daemon already; a caller who never looks must not crash on it.
  promise.catch(() => undefined);
  return {
    async stop() {
      await daemon.stop();
      stopped();
    },
    promise,
    httpUrl: daemon.http?.url,
  };
}
