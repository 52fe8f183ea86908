/**
 * The bench's run: a Postgres (DATABASE_URL's server or an embedded one), a
 * scratch database, the sections asked for, their tables, the targets, and
 * a JSON copy of everything in bench/results/. Whatever happens (a failure,
 * Ctrl-C) the consumers are stopped and the scratch database is dropped.
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { examplePath } from "../examples/build.js";
import { createDb } from "../src/db/database.js";
import { createPool } from "../src/db/pool.js";
import { deployFunction } from "../src/deploy.js";
import { startEmbeddedPostgres } from "../src/embedded.js";
import { formatTable, redactUrl } from "../src/format.js";
import { silentLogger } from "../src/logger.js";
import { migrate } from "../src/migrate.js";
import { killAll } from "./lib/children.js";
import type { Context } from "./lib/context.js";
import type { BenchOptions } from "./lib/options.js";
import { evaluateTargets, type TargetRow } from "./lib/targets.js";
import { OBSERVER_APPLICATION, PER_RUN_LEGEND } from "./lib/usage.js";
import { runSandboxBench, SANDBOX_HEADERS } from "./sandbox.js";
import { backlogTable, runBacklog, type BacklogRow } from "./sections/backlog.js";
import { latencyTable, runLatency, type LatencyRow } from "./sections/latency.js";
import { recoveryTable, runRecovery, type RecoveryRow } from "./sections/recovery.js";
import { runThroughput, throughputTable, type ThroughputRow } from "./sections/throughput.js";
import { runWritePath, writePathTable, type WritePathRow } from "./sections/writepath.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const RESULTS_DIR = path.join(HERE, "results");
/** The SQL that sets up the load tables and the baselines, in order. */
const SETUP_SQL = ["schema.sql", "direct.sql", "poll.sql"].map((f) =>
  path.join(HERE, "baselines", f),
);
/** A cleanup step that hangs (a server already gone) must not hold up the rest. */
const CLEANUP_STEP_TIMEOUT_MS = 20_000;

interface Results {
  latency?: LatencyRow[];
  throughput?: ThroughputRow[];
  writepath?: WritePathRow[];
  recovery?: RecoveryRow[];
  backlog?: BacklogRow[];
  sandbox?: string[][];
  targets?: TargetRow[];
}

export async function runBench(options: BenchOptions): Promise<number> {
  const began = performance.now();
  const progress = (message: string) => {
    const s = Math.round((performance.now() - began) / 1000);
    process.stderr.write(
      `[${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}] ${message}\n`,
    );
  };

  const cleanups: { name: string; run: () => Promise<unknown> }[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    (cleaning ??= (async () => {
      for (const step of cleanups.reverse()) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          step.run(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error("timed out")), CLEANUP_STEP_TIMEOUT_MS);
          }),
        ])
          .catch((error: Error) => progress(`cleanup: ${step.name}: ${error.message}`))
          .finally(() => clearTimeout(timer));
      }
    })());
  // `on`, not `once`: tsx passes the terminal's SIGINT on to us, so a Ctrl-C
  // arrives twice, and the second must not kill the process mid-cleanup.
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    progress(`${signal}: stopping the consumers and dropping the scratch database`);
    void cleanup().finally(() => process.exit(signal === "SIGINT" ? 130 : 143));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  let failed = false;
  const logDir = await mkdtemp(path.join(os.tmpdir(), "pgfn-bench-logs-"));
  try {
    // ---- the server and the scratch database
    let adminUrl = process.env.DATABASE_URL;
    let serverKind: string;
    if (adminUrl) {
      serverKind = `DATABASE_URL server (${redactUrl(adminUrl)})`;
    } else {
      progress("DATABASE_URL is not set: starting an embedded Postgres 15 (fsync on)");
      const dataDir = await mkdtemp(path.join(os.tmpdir(), "pgfn-bench-"));
      cleanups.push({
        name: "remove the data directory",
        run: () => rm(dataDir, { recursive: true, force: true }),
      });
      const server = await startEmbeddedPostgres({ dataDir: path.join(dataDir, "data") });
      cleanups.push({ name: "stop the embedded Postgres", run: () => server.stop() });
      adminUrl = server.connectionString;
      serverKind = "embedded Postgres (fsync on)";
    }
    const database = `pgfn_bench_${process.pid}_${Date.now().toString(36)}`;
    const admin = new pg.Client({ connectionString: adminUrl, application_name: "pgfn-bench" });
    admin.on("error", () => undefined);
    await admin.connect();
    cleanups.push({ name: "close the admin connection", run: () => admin.end() });
    await admin.query(`create database ${pg.escapeIdentifier(database)}`);
    cleanups.push({
      name: `drop database ${database}`,
      run: () =>
        admin.query(`drop database if exists ${pg.escapeIdentifier(database)} with (force)`),
    });
    const url = new URL(adminUrl);
    url.pathname = `/${database}`;
    const pool = createPool(url.toString(), options.clients + 4, silentLogger());
    cleanups.push({ name: "close the load pool", run: () => pool.end() });
    const observer = new pg.Pool({
      connectionString: url.toString(),
      // The progress queries, the meter's, and the session holding its WAL slot.
      max: 3,
      application_name: OBSERVER_APPLICATION,
    });
    observer.on("error", () => undefined);
    cleanups.push({ name: "close the observer pool", run: () => observer.end() });
    // Consumers go first on the way out: they hold connections to the database.
    cleanups.push({ name: "stop the consumers", run: killAll });

    progress(`scratch database ${database} on ${serverKind}: migrating, deploying echo, baselines`);
    await migrate(pool);
    await deployFunction(createDb(pool), {
      name: "echo",
      wasm: await readFile(examplePath("echo")),
    });
    for (const file of SETUP_SQL) await pool.query(await readFile(file, "utf8"));
    // Lets the meter count this database's WAL apart from the rest of the server's.
    await pool
      .query("create extension if not exists pg_walinspect")
      .catch((error: Error) =>
        progress(
          `pg_walinspect unavailable (${error.message}): WAL per event is the whole server's`,
        ),
      );

    const machine = await describeMachine(pool, serverKind);
    console.log(`\npgfn bench, ${new Date().toISOString()}${options.quick ? ", --quick" : ""}`);
    console.log(`${machine.summary}\n`);

    const ctx: Context = {
      options,
      url: url.toString(),
      adminUrl,
      pool,
      observer,
      logDir,
      progress,
    };
    const perEvent = PER_RUN_LEGEND;
    const results: Results = {};
    const show = (title: string, [headers, rows]: [string[], string[][]]) =>
      console.log(`${title}\n\n${formatTable(headers, rows)}\n`);
    const { only, systems } = options;

    if (only.includes("latency")) {
      results.latency = await runLatency(ctx);
      show(
        `Latency: enqueue to handler start, single-row transactions, open loop over ${options.clients} connections, ${options.latencySeconds} s per rate (ms; ">" = lower bound, some events had not started). CPU and WAL from the load's start to the end of the drain.\n${perEvent}`,
        latencyTable(results.latency),
      );
    }
    if (only.includes("throughput")) {
      results.throughput = await runThroughput(ctx);
      show(
        `Sustained throughput: ${options.seconds} s at a fixed offered rate; runs/s = events that got a finished run, per second. CPU and WAL over the same window, the writers' inserts included.\n${perEvent}`,
        throughputTable(results.throughput),
      );
    }
    if (only.includes("writepath")) {
      results.writepath = await runWritePath(ctx);
      show(
        `Write path: single-row INSERT transactions/s, closed loop, mean of 2 runs of ${options.writepathSeconds} s, without and with each system's consumer running`,
        writePathTable(results.writepath, systems),
      );
    }
    if (only.includes("recovery")) {
      results.recovery = await runRecovery(ctx);
      show(
        `Recovery: SIGKILL after ${options.recoverySeconds} s at ${options.recoveryRate} events/s, a new consumer started at once; time until every event has a successful run`,
        recoveryTable(results.recovery, options.recoveryTimeout),
      );
    }
    if (only.includes("backlog")) {
      results.backlog = await runBacklog(ctx);
      show(
        `Backlog: ${options.backlogEvents} events committed with the consumer stopped, then the consumer started; events/s from its start until the last run finished. CPU and WAL of the drain only (the inserts are not in the window).\n${perEvent}`,
        backlogTable(results.backlog, options.backlogTimeout),
      );
    }
    if (only.includes("sandbox")) {
      progress(`sandbox: ${options.sandboxCalls} calls per row`);
      results.sandbox = await runSandboxBench({
        calls: options.sandboxCalls,
        threads: 2,
        url: adminUrl,
      });
      show(
        `Sandbox: one invocation of echo, 1 KB JSON in and out, ${options.sandboxCalls} calls per row, 2 threads`,
        [SANDBOX_HEADERS, results.sandbox],
      );
    }
    results.targets = evaluateTargets(results);
    show(`Targets (pgfn, ${os.cpus().length} cores, fsync ${machine.postgres.fsync})`, [
      ["target", "measured", "met"],
      results.targets.map((t) => [
        t.target,
        t.measured,
        t.met === undefined ? "-" : t.met ? "yes" : "no",
      ]),
    ]);

    await mkdir(RESULTS_DIR, { recursive: true });
    const file = path.join(
      RESULTS_DIR,
      `bench-${new Date().toISOString().replace(/[:.]/g, "-")}.json`,
    );
    machine.loadAverageAfter = os.loadavg();
    await writeFile(file, `${JSON.stringify({ options, machine, results }, null, 2)}\n`);
    progress(
      `done in ${Math.round((performance.now() - began) / 1000)} s; results in ${path.relative(process.cwd(), file)}`,
    );
    return 0;
  } catch (error) {
    failed = true;
    // After a Ctrl-C, the sections fail because their connections were closed.
    if (interrupted) return 130;
    progress(`failed: ${(error as Error).message}`);
    if (process.env.PGFN_BENCH_DEBUG) console.error(error);
    progress(`consumer logs kept in ${logDir}`);
    return 1;
  } finally {
    await cleanup();
    if (!failed) await rm(logDir, { recursive: true, force: true });
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

interface Machine {
  summary: string;
  cpus: number;
  cpuModel: string | undefined;
  memoryGb: number;
  node: string;
  commit: string | undefined;
  server: string;
  postgres: Record<string, string>;
  loadAverageBefore: number[];
  loadAverageAfter?: number[];
}

/** What the figures depend on, so a reader can tell two runs' machines apart. */
async function describeMachine(pool: pg.Pool, server: string): Promise<Machine> {
  const { rows } = await pool.query<Record<string, string>>(
    `select current_setting('server_version') as version, current_setting('fsync') as fsync,
            current_setting('synchronous_commit') as synchronous_commit,
            current_setting('shared_buffers') as shared_buffers,
            current_setting('max_connections') as max_connections`,
  );
  const postgres = rows[0]!;
  let commit: string | undefined;
  try {
    commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], {
      cwd: HERE,
      encoding: "utf8",
    }).trim();
  } catch {
    commit = undefined;
  }
  const cpus = os.cpus();
  const load = os.loadavg();
  const memoryGb = Math.round(os.totalmem() / 2 ** 30);
  return {
    summary: [
      `${cpus.length} cores (${cpus[0]?.model.trim() ?? "unknown CPU"}), ${memoryGb} GB, Node ${process.version}, commit ${commit ?? "unknown"}`,
      `Postgres ${postgres.version}, fsync ${postgres.fsync}, synchronous_commit ${postgres.synchronous_commit}, ${server}`,
      `load average at start ${load.map((l) => l.toFixed(2)).join(" ")} (other work on the machine makes the figures noisier)`,
    ].join("\n"),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim(),
    memoryGb,
    node: process.version,
    commit,
    server,
    postgres,
    loadAverageBefore: load,
  };
}
