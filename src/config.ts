/**
 * Configuration comes from the environment, validated once at start-up.
 * A bad value is reported by variable name, never as a stack trace.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { z } from "zod";
import { PgfnError } from "./errors.js";
import { DEFAULT_DB_QUERY_MAX_BYTES } from "./sandbox/host/dbQuery.js";

/** Shortest bearer token accepted: a short one can be guessed. */
const MIN_TOKEN_LENGTH = 16;

/** PGFN_INVOKE_TOKENS as a list: comma-separated, spaces around each ignored. */
function splitTokens(value: string): string[] {
  return value
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
}

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const bool = z
  .enum(["true", "false", "1", "0", "yes", "no", "on", "off"])
  .transform((v) => ["true", "1", "yes", "on"].includes(v));

const schema = z.object({
  /** Postgres to use. Required except for `pgfn dev`, which starts its own. */
  DATABASE_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\//, "must be a postgres:// or postgresql:// URL")
    .optional(),
  /** HTTP API port; 0 disables it. (Default: 7780) */
  PGFN_HTTP_PORT: int(0, 65535).default(7780),
  /** Interface the HTTP API listens on. (Default: 0.0.0.0, every interface) */
  PGFN_HTTP_HOST: z.string().min(1).default("0.0.0.0"),
  /** Token for deploy, manage and invoke over HTTP. */
  PGFN_ADMIN_TOKEN: z
    .string()
    .min(
      MIN_TOKEN_LENGTH,
      `must be at least ${MIN_TOKEN_LENGTH} characters (e.g. openssl rand -hex 24)`,
    )
    .optional(),
  /** Comma-separated invoke-only tokens, each of 16+ characters. */
  PGFN_INVOKE_TOKENS: z
    .string()
    .superRefine((value, ctx) => {
      // Which token, by position: the message must not print the token.
      splitTokens(value).forEach((token, i) => {
        if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
          ctx.addIssue({
            code: "custom",
            message: `token ${i + 1} of the comma-separated list ${/\s/.test(token) ? "contains whitespace" : `has ${token.length} characters`}; each token must be at least ${MIN_TOKEN_LENGTH} characters without spaces (e.g. openssl rand -hex 24)`,
          });
        }
      });
    })
    .optional(),
  /** Handler runs one daemon runs at once, and jobs it holds. (Default: 10) */
  PGFN_WORKER_CONCURRENCY: int(1, 1000).default(10),
  /**
   * Events of one function one job carries at most: a batch is started,
   * and its successes recorded, in a few statements. (Default: 50)
   */
  PGFN_EVENTS_PER_JOB: int(1, 1000).default(50),
  /**
   * The server, database and connection options of db_query. Each function's
   * queries log in as its own db_role (the URL's user is replaced by it);
   * passwords come from the pgpass file (PGPASSFILE, else ~/.pgpass), the
   * URL's password only for the URL's own user. (Default: DATABASE_URL)
   */
  PGFN_DB_QUERY_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\//, "must be a postgres:// or postgresql:// URL")
    .optional(),
  /**
   * Connections db_query may hold per daemon, across all db_roles: handlers
   * cannot exhaust the server's. One function holds at most half. (Default: 4)
   */
  PGFN_DB_QUERY_POOL_SIZE: int(1, 1000).default(4),
  /**
   * The most bytes (as JSON) one db_query reply may take, counted as rows
   * arrive; a bigger one fails the call. At most what a host reply can carry.
   * (Default: 4000000)
   */
  PGFN_DB_QUERY_MAX_BYTES: int(1024, DEFAULT_DB_QUERY_MAX_BYTES).default(
    DEFAULT_DB_QUERY_MAX_BYTES,
  ),
  /** Threads that run handlers. (Default: the worker concurrency, so no run waits for one) */
  PGFN_SANDBOX_THREADS: int(1, 1000).optional(),
  /**
   * A sandbox thread is replaced after this many invocations: a backstop for
   * what a thread's own heap gathers, since instances are restored after
   * each invocation. Starting a thread costs as much CPU as thousands of
   * invocations. (Default: 100000)
   */
  PGFN_SANDBOX_RECYCLE_AFTER: int(1, 1_000_000).default(100_000),
  /** Events claimed per dispatch transaction. (Default: 500) */
  PGFN_DISPATCH_BATCH: int(1, 10000).default(500),
  /**
   * How often the listener looks for undispatched events without being told
   * to: the safety net for notifications lost while disconnected, and for
   * the few that pgfn.wake skips wrongly (sql/000013_write_path.sql). (Default: 1000)
   */
  PGFN_SWEEP_INTERVAL_MS: int(50, 600000).default(1000),
  /** graphile-worker's poll for jobs due later (retries). (Default: 1000) */
  PGFN_POLL_INTERVAL_MS: int(50, 600000).default(1000),
  /** Connections in the daemon's pool. (Default: worker concurrency + 4) */
  PGFN_POOL_SIZE: int(2, 1000).optional(),
  /** How often a daemon heartbeats and reaps silent ones. (Default: 1000) */
  PGFN_HEARTBEAT_INTERVAL_MS: int(100, 60_000).default(1000),
  /**
   * Silence after which a daemon is reaped and its runs retried: a SIGKILLed
   * daemon's attempts run again 4-5 s later. Raise it where event-loop stalls
   * of seconds are normal (a reaped live daemon only means duplicate runs).
   * (Default: 4000)
   */
  PGFN_DEAD_AFTER_MS: int(300, 600_000).default(4000),
  /**
   * Identifies this daemon in `function_runs.worker_id`; must be unique among
   * running daemons. (Default: host-pid-random)
   */
  PGFN_WORKER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]{1,128}$/, "may only contain letters, digits and _.:-")
    .optional(),
  PGFN_LOG_LEVEL: z
    .enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"])
    .default("info"),
  /** Run the listener (NOTIFY -> dispatch) in `pgfn start`. (Default: true) */
  PGFN_LISTENER: bool.default(true),
  /** Run the worker (jobs -> handlers) in `pgfn start`. (Default: true) */
  PGFN_WORKER: bool.default(true),
  /** Run the scheduler (pgfn.schedules -> events) in `pgfn start`. (Default: true) */
  PGFN_SCHEDULER: bool.default(true),
  /**
   * How often the scheduler looks for due slots: a slot fires up to this late.
   * (Default: 1000)
   */
  PGFN_SCHEDULER_INTERVAL_MS: int(50, 60_000).default(1000),
});

/** Every environment variable pgfn reads (README "Configuration", docker-compose.yml). */
export const CONFIG_VARIABLES: readonly string[] = Object.freeze(Object.keys(schema.shape));

export type Config = Readonly<{
  databaseUrl: string | undefined;
  httpPort: number;
  httpHost: string;
  adminToken: string | undefined;
  invokeTokens: readonly string[];
  workerConcurrency: number;
  eventsPerJob: number;
  dbQueryUrl: string | undefined;
  dbQueryPoolSize: number;
  dbQueryMaxBytes: number;
  sandboxThreads: number;
  sandboxRecycleAfter: number;
  dispatchBatch: number;
  sweepIntervalMs: number;
  pollIntervalMs: number;
  poolSize: number;
  /**
   * This daemon's id (PGFN_WORKER_ID). The env var and the column
   * `function_runs.worker_id` keep the published name; in the code "worker"
   * means graphile-worker only.
   */
  daemonId: string;
  heartbeatIntervalMs: number;
  deadAfterMs: number;
  logLevel: z.infer<typeof schema>["PGFN_LOG_LEVEL"];
  listener: boolean;
  worker: boolean;
  scheduler: boolean;
  schedulerIntervalMs: number;
}>;

/**
 * Reads and validates the configuration. Throws a PgfnError (INVALID_REQUEST)
 * whose message names every bad variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // Empty strings mean "unset": `PGFN_HTTP_PORT= pgfn start` should not fail.
  const present = Object.fromEntries(
    Object.entries(env).filter(
      ([k, v]) => (k === "DATABASE_URL" || k.startsWith("PGFN_")) && v !== "",
    ),
  );
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new PgfnError("INVALID_REQUEST", `Invalid configuration: ${problems.join("; ")}.`);
  }
  const e = parsed.data;
  if (e.PGFN_DEAD_AFTER_MS < 2 * e.PGFN_HEARTBEAT_INTERVAL_MS) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid configuration: PGFN_DEAD_AFTER_MS (${e.PGFN_DEAD_AFTER_MS}) must be at least twice PGFN_HEARTBEAT_INTERVAL_MS (${e.PGFN_HEARTBEAT_INTERVAL_MS}), or live daemons get reaped.`,
    );
  }
  return Object.freeze({
    databaseUrl: e.DATABASE_URL,
    httpPort: e.PGFN_HTTP_PORT,
    httpHost: e.PGFN_HTTP_HOST,
    adminToken: e.PGFN_ADMIN_TOKEN,
    invokeTokens: Object.freeze(splitTokens(e.PGFN_INVOKE_TOKENS ?? "")),
    workerConcurrency: e.PGFN_WORKER_CONCURRENCY,
    eventsPerJob: e.PGFN_EVENTS_PER_JOB,
    dbQueryUrl: e.PGFN_DB_QUERY_URL ?? e.DATABASE_URL,
    dbQueryPoolSize: e.PGFN_DB_QUERY_POOL_SIZE,
    dbQueryMaxBytes: e.PGFN_DB_QUERY_MAX_BYTES,
    sandboxThreads: e.PGFN_SANDBOX_THREADS ?? e.PGFN_WORKER_CONCURRENCY,
    sandboxRecycleAfter: e.PGFN_SANDBOX_RECYCLE_AFTER,
    dispatchBatch: e.PGFN_DISPATCH_BATCH,
    sweepIntervalMs: e.PGFN_SWEEP_INTERVAL_MS,
    pollIntervalMs: e.PGFN_POLL_INTERVAL_MS,
    poolSize: e.PGFN_POOL_SIZE ?? e.PGFN_WORKER_CONCURRENCY + 4,
    // A random part: a restarted container keeps its host name and pid 1, and
    // must not look like its dead predecessor.
    daemonId: e.PGFN_WORKER_ID ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`,
    heartbeatIntervalMs: e.PGFN_HEARTBEAT_INTERVAL_MS,
    deadAfterMs: e.PGFN_DEAD_AFTER_MS,
    logLevel: e.PGFN_LOG_LEVEL,
    listener: e.PGFN_LISTENER,
    worker: e.PGFN_WORKER,
    scheduler: e.PGFN_SCHEDULER,
    schedulerIntervalMs: e.PGFN_SCHEDULER_INTERVAL_MS,
  });
}

/** The database URL, or a clear error saying how to provide one. */
export function requireDatabaseUrl(config: Config): string {
  if (!config.databaseUrl) {
    throw new PgfnError(
      "INVALID_REQUEST",
      "DATABASE_URL is not set. Set it to a postgres:// URL, or run `pgfn dev` to use an embedded Postgres.",
    );
  }
  return config.databaseUrl;
}

/**
 * The configuration of pgfn started from code (`run`, `makeUtils`): the
 * PGFN_* settings of `env`, for `connectionString`. DATABASE_URL is not
 * read: an application's own DATABASE_URL may point elsewhere.
 */
export function loadConfigFor(
  connectionString: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): Config {
  if (typeof connectionString !== "string" || !/^postgres(ql)?:\/\//.test(connectionString)) {
    throw new PgfnError(
      "INVALID_REQUEST",
      "connectionString must be a postgres:// or postgresql:// URL.",
    );
  }
  const { DATABASE_URL: _ignored, ...settings } = env;
  const config = loadConfig(settings);
  return Object.freeze({ ...config, databaseUrl: connectionString });
}
