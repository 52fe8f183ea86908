// Test helpers: a database of one's own, conditions with deadlines, URLs on
// the test server, example modules.
import { randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { inject } from "vitest";
import { examplePath } from "../examples/build.js";
import { createPool } from "../src/db/pool.js";
import { loadConfig, type Config } from "../src/config.js";
import { startDaemon, type Daemon, type DaemonOptions } from "../src/daemon.js";
import { silentLogger, type Logger } from "../src/logger.js";
import { withClient, withDatabase } from "./connections.js";
import { currentFile, failuresSoFar, KEPT_DATABASE_COMMENT, openedBy, trackOpen } from "./leaks.js";

export interface TestDatabase {
  readonly name: string;
  readonly url: string;
  /** A small pool on the database; closed by drop(). */
  readonly pool: pg.Pool;
  /**
   * Closes the pool and drops the database (closing any other session on
   * it), unless a test failed while it existed: then it is kept for
   * inspection, its name printed (see KEPT_DATABASE_COMMENT).
   */
  drop(): Promise<void>;
}

/** SQLSTATE object_in_use: "source database ... is being accessed by other users". */
const OBJECT_IN_USE = "55006";

/** Labels are cut so that names stay under Postgres' 63-byte identifier limit. */
const MAX_LABEL_LENGTH = 20;

let counter = 0;

/** A superuser URL to the test server's `postgres` database. */
export function adminUrl(): string {
  return inject("adminUrl");
}

/** A URL to database `name` on the test server, as the same superuser. */
export function databaseUrl(name: string): string {
  return withDatabase(adminUrl(), name);
}

/** The compiled example handler `name` (examples/NAME/NAME.wasm). */
export function exampleWasm(name: string): string {
  return examplePath(name);
}

/**
 * A fresh database for one test file: a clone of the migrated template (or,
 * with `migrated: false`, an empty one from template0). Call drop() in
 * afterAll; the run's teardown drops whatever a failed file left.
 */
export async function createTestDatabase(
  label: string,
  options: { migrated?: boolean } = {},
): Promise<TestDatabase> {
  const slug = label
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, "_")
    .slice(0, MAX_LABEL_LENGTH);
  const name = `${inject("runPrefix")}${slug}_${process.pid}_${++counter}`;
  const template = options.migrated === false ? "template0" : inject("templateDatabase");
  await withAdmin(async (admin) => {
    // Cloning fails while anyone is connected to the template. globalSetup
    // forbids connections to it, but a backend may still be exiting; retry briefly.
    for (let attempt = 1; ; attempt++) {
      try {
        await admin.query(
          `create database ${admin.escapeIdentifier(name)} template ${admin.escapeIdentifier(template)}`,
        );
        return;
      } catch (error) {
        if ((error as { code?: string }).code !== OBJECT_IN_USE || attempt >= 50) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50 + Math.random() * 50));
      }
    }
  });
  const url = databaseUrl(name);
  const pool = createPool(url, 5, silentLogger());
  const failuresBefore = failuresSoFar();
  let dropped: Promise<void> | undefined;
  const untrack = trackOpen(
    {
      kind: "database",
      description: `database ${name}, never dropped (call drop() in afterAll)`,
      closed: () => dropped !== undefined,
      close: () => database.drop(),
    },
    pool,
  );
  const database: TestDatabase = {
    name,
    url,
    pool,
    drop() {
      dropped ??= (async () => {
        await pool.end();
        if (failuresSoFar() > failuresBefore) {
          await keepDatabase(name);
        } else {
          await withAdmin((admin) =>
            admin.query(`drop database if exists ${admin.escapeIdentifier(name)} with (force)`),
          );
        }
      })().finally(untrack);
      return dropped;
    },
  };
  return database;
}

/** Marks the database of a failed test as kept (see KEPT_DATABASE_COMMENT) and says so. */
async function keepDatabase(name: string): Promise<void> {
  const file = currentFile()?.name ?? "a test file";
  await withAdmin((admin) =>
    admin.query(
      `comment on database ${admin.escapeIdentifier(name)} is ${admin.escapeLiteral(`${KEPT_DATABASE_COMMENT} a test of ${file} failed`)}`,
    ),
  );
  console.error(
    `A test of ${file} failed: its database ${name} is kept for inspection (psql -d ${name}; drop database ${name} when done).`,
  );
}

/** Runs `use` on a fresh connection to the admin database, then closes it. */
function withAdmin<T>(use: (client: pg.Client) => Promise<T>): Promise<T> {
  return withClient(adminUrl(), use);
}

export interface WaitForOptions {
  /** Give up after this long. (Default: 10000) */
  readonly timeoutMs?: number;
  /** Pause between polls. (Default: 25) */
  readonly intervalMs?: number;
  /** What was awaited, for the timeout error. (Default: "a condition") */
  readonly message?: string;
}

const WAIT_FOR_TIMEOUT_MS = 10_000;
const WAIT_FOR_INTERVAL_MS = 25;

/**
 * Polls `condition` until it returns something truthy, and returns that: the
 * way tests wait, never with fixed sleeps. A throwing condition counts as not
 * yet. Past the deadline, throws an error naming `message` (and the
 * condition's last error, if its last poll threw).
 */
export async function waitFor<T>(
  condition: () => Promise<T | undefined | null | false>,
  options: WaitForOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? WAIT_FOR_TIMEOUT_MS;
  const intervalMs = options.intervalMs ?? WAIT_FOR_INTERVAL_MS;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let lastError: unknown;
    try {
      const value = await condition();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new Error(
        `Timed out after ${timeoutMs} ms waiting for ${options.message ?? "a condition"}` +
          (lastError === undefined
            ? "."
            : ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)}).`),
        { cause: lastError },
      );
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(intervalMs, remaining)));
  }
}

/**
 * Records a manual event for `fn` (as pgfn.invoke_async does; pgfn.wake
 * wakes the listener at commit); returns the event id.
 */
export async function enqueueManual(pool: pg.Pool, fn: string, payload: unknown): Promise<string> {
  const { rows } = await pool.query<{ id: string }>(
    `insert into pgfn.events (function_name, source, payload) values ($1, 'manual', $2) returning id`,
    [fn, JSON.stringify(payload)],
  );
  return rows[0]!.id;
}

/** Records `count` manual events for `fn` with payload {}, in one statement; returns their ids. */
export async function enqueueManyManual(
  pool: pg.Pool,
  fn: string,
  count: number,
): Promise<string[]> {
  const { rows } = await pool.query<{ id: string }>(
    `insert into pgfn.events (function_name, source, payload)
     select $1, 'manual', '{}'::jsonb from generate_series(1, $2) returning id`,
    [fn, count],
  );
  return rows.map((row) => row.id);
}

/** The first finished run of an event, waiting for it. */
export async function finishedRun(pool: pg.Pool, eventId: string, timeoutMs = 10_000) {
  return waitFor(
    async () =>
      (
        await pool.query(
          `select * from pgfn.function_runs where event_id = $1 and status <> 'running' order by attempt limit 1`,
          [eventId],
        )
      ).rows[0],
    { timeoutMs, message: `a finished run of event ${eventId}` },
  );
}

/** A local port nothing listens on: a fetch there is refused. */
export async function closedLocalPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Waits until some run of function `fn` is running. */
export async function waitForRunning(pool: pg.Pool, fn: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(
    async () =>
      (
        await pool.query(
          `select 1 from pgfn.function_runs where function_name = $1 and status = 'running'`,
          [fn],
        )
      ).rowCount,
    { timeoutMs, message: `a run of ${fn} to be running` },
  );
}

/**
 * A daemon on `url` as tests want it: a quick sweep, a few workers and
 * sandbox threads (each thread costs a TypeScript load in tests), silent.
 */
export async function startTestDaemon(
  url: string,
  overrides: Partial<Config> = {},
  logger: Logger = silentLogger(),
  options: Partial<Pick<DaemonOptions, "http" | "clock">> = {},
): Promise<Daemon> {
  const daemon = await startDaemon({
    ...options,
    connectionString: url,
    config: {
      ...loadConfig({}),
      databaseUrl: url,
      dbQueryUrl: url,
      sweepIntervalMs: 200,
      workerConcurrency: 4,
      sandboxThreads: 4,
      ...overrides,
    },
    logger,
  });
  // The leak guard names a daemon nobody stopped.
  let stopped = false;
  const stop = daemon.stop.bind(daemon);
  const untrack = trackOpen({
    kind: "daemon",
    description: `a daemon on database ${new URL(url).pathname.slice(1)}, never stopped${openedBy()}`,
    closed: () => stopped,
    close: () => stop(),
  });
  // Replaced in place, not copied: the daemon keeps its identity and getters.
  daemon.stop = () => {
    stopped = true;
    untrack();
    return stop();
  };
  return daemon;
}

/** Login roles for db_query tests: unique on the cluster, their passwords in a pgpass file. */
export interface TestRoles {
  /** A pgpass file (mode 0600) with every role's password, for PGPASSFILE or `pgpassFile`. */
  readonly pgpassFile: string;
  /**
   * Creates a login role with a password (plus `options`, e.g. "superuser"
   * or "nologin") and returns its name.
   */
  create(label: string, options?: string): Promise<string>;
  /** Drops every role created; call after dropping the databases that granted to them. */
  drop(): Promise<void>;
}

let roleCounter = 0;

/**
 * Roles for a test file. Passwords make them work on a server that asks for
 * one (the embedded Postgres of CI) as well as on one that trusts local
 * connections.
 */
export async function createTestRoles(): Promise<TestRoles> {
  const dir = await mkdtemp(path.join(tmpdir(), "pgfn-roles-"));
  const pgpassFile = path.join(dir, "pgpass");
  await writeFile(pgpassFile, "", { mode: 0o600 });
  const created: string[] = [];
  return {
    pgpassFile,
    async create(label, options = "") {
      const name = `pgfn_r_${process.pid}_${++roleCounter}_${label}`.slice(0, 63);
      const password = randomBytes(12).toString("hex");
      await withAdmin((admin) =>
        admin.query(
          `create role ${admin.escapeIdentifier(name)} ${/\bnologin\b/i.test(options) ? "" : "login"} password ${admin.escapeLiteral(password)} ${options}`,
        ),
      );
      created.push(name);
      await appendFile(pgpassFile, `*:*:*:${name}:${password}\n`);
      return name;
    },
    async drop() {
      await withAdmin(async (admin) => {
        for (const name of created.splice(0)) {
          await admin.query(`drop role if exists ${admin.escapeIdentifier(name)}`);
        }
      });
      await rm(dir, { recursive: true, force: true });
    },
  };
}
