// db_query from a real handler: it runs as the function's db_role, never as
// the daemon's role, and a denied query is a HOST_FUNCTION_ERROR run.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import pg from "pg";
import { pino } from "pino";
import {
  adminUrl,
  createTestDatabase,
  startTestDaemon,
  enqueueManual,
  exampleWasm,
  finishedRun,
  type TestDatabase,
} from "./helpers.js";

let t: TestDatabase;
let daemon: Daemon;
const role = `pgfn_handler_${process.pid}_${Date.now() % 100000}`;

beforeAll(async () => {
  t = await createTestDatabase("privileges");
  await t.pool.query(`
    create role ${role} nologin;
    create table public.notes (id int primary key, body text);
    insert into public.notes values (1, 'hello'), (2, 'world');
    grant select, insert on public.notes to ${role};
    create table public.precious (id int);
  `);
  const wasm = await readFile(exampleWasm("query"));
  const db = createDb(t.pool);
  await deployFunction(db, { name: "query", wasm, dbRole: role });
  await deployFunction(db, { name: "noroles", wasm });
  daemon = await startTestDaemon(t.url);
});
afterAll(async () => {
  await daemon?.stop();
  await t?.drop();
  // Roles outlive databases: drop ours (the database that granted to it is gone).
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  await admin.query(`drop role if exists ${role}`);
  await admin.end();
});

const run = async (fn: string, sql: string, params: unknown[] = []) =>
  finishedRun(t.pool, await enqueueManual(t.pool, fn, { sql, params }));

it("runs as the function's db_role", async () => {
  const r = await run("query", "select current_user as who, count(*)::int as n from public.notes");
  expect(r.status).toBe("succeeded");
  expect(r.result).toEqual({
    ok: true,
    value: { rows: [{ who: role, n: 2 }], rowCount: 1, fields: ["who", "n"] },
  });
});

it("commits each call on its own, with bound parameters", async () => {
  const r = await run("query", "insert into public.notes values ($1, $2)", [
    3,
    "it's; drop table x",
  ]);
  expect(r.status).toBe("succeeded");
  const { rows } = await t.pool.query(`select body from public.notes where id = 3`);
  expect(rows).toEqual([{ body: "it's; drop table x" }]);
});

it("is denied what the role may not do: HOST_FUNCTION_ERROR / 500", async () => {
  const read = await run("query", "select name, env from pgfn.functions");
  expect(read).toMatchObject({
    status: "failed",
    error_code: "HOST_FUNCTION_ERROR",
    http_status: 500,
  });
  expect(read.error_message).toMatch(/^db_query failed: .*permission denied for schema pgfn/);
  // Said once, not "db_query failed: db_query failed: ...".
  expect(read.error_message).not.toMatch(/db_query failed: db_query failed/);

  const drop = await run("query", "drop table public.precious");
  expect(drop).toMatchObject({ status: "failed", error_code: "HOST_FUNCTION_ERROR" });
  expect(drop.error_message).toMatch(/must be owner of table precious/);
  expect(
    (await t.pool.query(`select to_regclass('public.precious') is not null as exists`)).rows[0]
      .exists,
  ).toBe(true);

  const escape = await run("query", "set role postgres");
  expect(escape.error_code).toBe("HOST_FUNCTION_ERROR");
});

it("warns at start when db_query would connect as a superuser", async () => {
  const lines: string[] = [];
  const logger = pino({ level: "warn" }, { write: (line: string) => void lines.push(line) });
  const d = await startTestDaemon(t.url, { listener: false, worker: false }, logger);
  await d.stop();
  const warning = lines.map((l) => JSON.parse(l)).find((l) => l.db_query_role);
  expect(warning).toMatchObject({ level: 40, operation: "start" });
  expect(warning.msg).toMatch(/^db_query connects as superuser ".+": set PGFN_DB_QUERY_URL/);
});

it("refuses db_query for a function without a db_role", async () => {
  const r = await run("noroles", "select 1");
  expect(r).toMatchObject({ status: "failed", error_code: "HOST_FUNCTION_ERROR" });
  expect(r.error_message).toMatch(/db_role/);
});
