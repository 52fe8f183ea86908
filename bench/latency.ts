// npm run bench: commit-to-handler-start latency and end-to-end throughput of
// one daemon, under an open-loop load (a fixed arrival rate of single-row
// transactions). Prints a table. Not part of npm test.
//
//   npm run bench -- --rate 500 --seconds 10
//
// Uses DATABASE_URL's server (a fresh database, dropped afterwards) or an
// embedded Postgres with default durability (fsync on).
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { examplePath } from "../examples/build.js";
import { loadConfig } from "../src/config.js";
import { startDaemon } from "../src/daemon.js";
import { createPool } from "../src/db/pool.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import { startEmbeddedPostgres } from "../src/embedded.js";
import { formatTable } from "../src/format.js";
import { silentLogger } from "../src/logger.js";
import { migrate } from "../src/migrate.js";

const { values } = parseArgs({
  options: {
    rate: { type: "string", default: "100,500,1000" },
    seconds: { type: "string", default: "5" },
    clients: { type: "string", default: "4" },
  },
});
const rates = values.rate.split(",").map(Number);
const seconds = Number(values.seconds);
const clients = Number(values.clients);
if (rates.some((r) => !(r > 0)) || !(seconds > 0) || !(clients > 0)) {
  console.error(
    "bench: --rate takes positive numbers (comma-separated), --seconds and --clients positive numbers",
  );
  process.exit(1);
}

let stopServer: (() => Promise<void>) | undefined;
let dataDir: string | undefined;
let adminUrl = process.env.DATABASE_URL;
if (!adminUrl) {
  dataDir = await mkdtemp(path.join(tmpdir(), "pgfn-bench-"));
  const server = await startEmbeddedPostgres({ dataDir: path.join(dataDir, "data") });
  adminUrl = server.connectionString;
  stopServer = server.stop;
}
const database = `pgfn_bench_${process.pid}`;
const admin = new pg.Client({ connectionString: adminUrl });
await admin.connect();
await admin.query(`create database "${database}"`);
const url = new URL(adminUrl);
url.pathname = `/${database}`;

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;

const rows: string[][] = [];
const pool = createPool(url.toString(), clients + 2, silentLogger());
try {
  await migrate(pool);
  await deployFunction(createDb(pool), { name: "echo", wasm: await readFile(examplePath("echo")) });
  await pool.query(
    `create table public.load (id bigserial primary key, v text); select pgfn.attach('public.load', 'echo', array['INSERT'])`,
  );
  const daemon = await startDaemon({
    connectionString: url.toString(),
    config: { ...loadConfig({}), databaseUrl: url.toString(), workerConcurrency: 10 },
    logger: silentLogger(),
  });
  try {
    for (const rate of rates) {
      await pool.query("truncate pgfn.events cascade");
      const total = Math.round(rate * seconds);
      const started = performance.now();
      const inserts: Promise<unknown>[] = [];
      // Open loop: each insert is due at started + i/rate, whether or not the
      // previous ones have finished.
      for (let i = 0; i < total; i++) {
        const due = started + (i * 1000) / rate;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        inserts.push(pool.query("insert into public.load (v) values ('x')"));
      }
      await Promise.all(inserts);
      const offered = total / ((performance.now() - started) / 1000);
      const deadline = Date.now() + 120_000;
      for (;;) {
        const { rows: done } = await pool.query(
          `select count(*)::int as n from pgfn.function_runs where status <> 'running'`,
        );
        if (done[0].n >= total || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const { rows: lag } = await pool.query<{ ms: number }>(
        `select extract(epoch from (r.started_at - e.created_at)) * 1000 as ms
         from pgfn.function_runs r join pgfn.events e on e.id = r.event_id order by 1`,
      );
      const { rows: span } = await pool.query(
        `select count(*)::int as n, count(*) filter (where status = 'succeeded')::int as ok,
                extract(epoch from max(r.finished_at) - min(e.created_at)) as s
         from pgfn.function_runs r join pgfn.events e on e.id = r.event_id`,
      );
      const ms = lag.map((r) => Number(r.ms));
      rows.push([
        String(rate),
        offered.toFixed(0),
        `${span[0].ok}/${total}`,
        (span[0].n / Number(span[0].s)).toFixed(0),
        percentile(ms, 50).toFixed(1),
        percentile(ms, 95).toFixed(1),
        percentile(ms, 99).toFixed(1),
        (ms.at(-1) ?? NaN).toFixed(1),
      ]);
    }
  } finally {
    await daemon.stop();
  }
} finally {
  await pool.end();
  await admin.query(`drop database "${database}" with (force)`);
  await admin.end();
  await stopServer?.();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
}

console.log(
  `\ncommit-to-handler-start latency, one daemon (concurrency 10), ${seconds} s per rate, ${clients} inserting clients, ${process.env.DATABASE_URL ? "DATABASE_URL server" : "embedded Postgres, fsync on"}\n`,
);
console.log(
  formatTable(
    ["rate/s", "offered/s", "succeeded", "runs/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
    rows,
  ),
);
