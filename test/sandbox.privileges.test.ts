// db_query from a real handler: it logs in as the function's db_role, never
// as the daemon's role; a denied query is a HOST_FUNCTION_ERROR run; and no
// reply, however big, takes the daemon down.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import {
  createTestRoles,
  enqueueManual,
  exampleWasm,
  finishedRun,
  type TestRoles,
} from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("privileges");
let daemon: Daemon;
let roles: TestRoles;
let role: string;
let superRole: string;

beforeAll(async () => {
  roles = await createTestRoles();
  // The daemon reads the db_roles' passwords where libpq would.
  process.env.PGPASSFILE = roles.pgpassFile;
  role = await roles.create("handler");
  superRole = await roles.create("super", "superuser");
  await t.pool.query(`
    create table public.notes (id int primary key, body text);
    insert into public.notes values (1, 'hello'), (2, 'world');
    grant select, insert on public.notes to ${role};
    create table public.precious (id int);
  `);
  const wasm = await readFile(exampleWasm("query"));
  const db = createDb(t.pool);
  await deployFunction(db, { name: "query", wasm, dbRole: role });
  await deployFunction(db, { name: "noroles", wasm });
  // Deploy refuses a superuser db_role; one set in SQL (or a role made a
  // superuser later) is refused by db_query itself.
  await deployFunction(db, { name: "assuper", wasm });
  await t.pool.query(`update pgfn.functions set db_role = $1 where name = 'assuper'`, [superRole]);
  daemon = await t.startDaemon();
});
afterAll(async () => {
  await daemon?.stop();
  await t.drop();
  // Roles outlive databases: drop ours (the database that granted to them is gone).
  await roles?.drop();
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

  // The module's reply carries the SQLSTATE as error.code (the example
  // fails with the reply in its message).
  const divide = await run("query", "select 1 / 0");
  expect(divide.error_message).toContain('"transient":false,"code":"22012"');

  const escape = await run("query", "set role postgres");
  expect(escape.error_code).toBe("HOST_FUNCTION_ERROR");
  expect(escape.error_message).toContain("permission denied to set role");
});

it("refuses db_query as a superuser db_role, naming the fix; the daemon goes on", async () => {
  const r = await run("assuper", "select 1");
  expect(r).toMatchObject({ status: "failed", error_code: "HOST_FUNCTION_ERROR" });
  expect(r.error_message).toContain(`db_role "${superRole}" is a superuser`);
  expect(r.error_message).toContain("nosuperuser");
  expect((await run("query", "select 1 as one")).status).toBe("succeeded");
});

it("fails a 100 MB reply with a clear HOST_FUNCTION_ERROR, and the daemon survives", async () => {
  const r = await run("query", "select repeat('x', 1000000) as x from generate_series(1, 100)");
  expect(r).toMatchObject({ status: "failed", error_code: "HOST_FUNCTION_ERROR" });
  expect(r.error_message).toContain("PGFN_DB_QUERY_MAX_BYTES");
  const after = await run("query", "select current_user as who");
  expect(after.status).toBe("succeeded");
});

it("refuses db_query for a function without a db_role", async () => {
  const r = await run("noroles", "select 1");
  expect(r).toMatchObject({ status: "failed", error_code: "HOST_FUNCTION_ERROR" });
  expect(r.error_message).toMatch(/db_role/);
});
