// The Postgres server restarts under a running daemon: it reconnects, and
// rows committed afterwards still run. This file owns a server of its own.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { startDaemon, type Daemon } from "../src/daemon.js";
import { createPool } from "../src/db/pool.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import { startEmbeddedPostgres } from "../src/embedded.js";
import { silentLogger } from "../src/logger.js";
import { migrate } from "../src/migrate.js";
import { exampleWasm, waitFor } from "./helpers.js";

let dir: string;
let server: Awaited<ReturnType<typeof startEmbeddedPostgres>> | undefined;
let daemon: Daemon | undefined;
let pool: pg.Pool | undefined;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "pgfn-restart-"));
  server = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    persistent: true,
    fast: true,
  });
});

afterAll(async () => {
  await daemon?.stop().catch(() => undefined);
  await pool?.end().catch(() => undefined);
  await server?.stop();
  // A server just stopped may still be removing files of its own: retry.
  await rm(dir, { recursive: true, force: true, maxRetries: 5 });
});

async function succeededIds(): Promise<number[]> {
  const { rows } = await pool!.query(
    `select (e.new->>'id')::int as id from pgfn.function_runs r join pgfn.events e on e.id = r.event_id where r.status = 'succeeded' order by 1`,
  );
  return rows.map((r) => r.id);
}

it("reconnects after a server restart and runs rows committed afterwards", async () => {
  const url = server!.connectionString;
  pool = createPool(url, 2, silentLogger()); // survives the restart like the daemon's
  await migrate(pool);
  await deployFunction(createDb(pool), { name: "echo", wasm: await readFile(exampleWasm("echo")) });
  await pool.query(
    `create table public.users (id int primary key); select pgfn.attach('public.users', 'echo')`,
  );

  daemon = await startDaemon({
    connectionString: url,
    config: { ...loadConfig({}), databaseUrl: url, sweepIntervalMs: 200, pollIntervalMs: 200 },
    logger: silentLogger(),
  });
  await pool.query(`insert into public.users values (1)`);
  await waitFor(async () => (await succeededIds()).includes(1), {
    message: "the run before the restart",
  });

  const port = server!.port;
  await server!.stop();
  server = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    persistent: true,
    fast: true,
    port,
  });

  await waitFor(
    async () => {
      try {
        await pool!.query(`insert into public.users values (2) on conflict do nothing`);
        return true;
      } catch {
        return false;
      }
    },
    { timeoutMs: 20000, message: "the restarted server to accept the insert" },
  );
  await pool.query(`insert into public.users values (3)`);
  await waitFor(
    async () => {
      const ids = await succeededIds();
      return ids.includes(2) && ids.includes(3);
    },
    { timeoutMs: 30000, message: "runs for rows committed after the restart" },
  );
  expect(await succeededIds()).toEqual([1, 2, 3]);
  await waitFor(() => Promise.resolve(daemon!.listener?.connected), {
    message: "the listener to be connected again",
  });
  // Its waits add up to 70 s, plus a server stop and start: the default 30 s
  // failed it on a loaded machine before any of them had timed out.
}, 180_000);
