// The test harness itself: every file's database is a migrated clone of the
// template, clones are independent, and waitFor fails with its message.
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { listMigrations, migrate } from "../src/migrate.js";
import {
  adminUrl,
  createTestDatabase,
  databaseUrl,
  waitFor,
  type TestDatabase,
} from "./helpers.js";

let a: TestDatabase;
let b: TestDatabase;

beforeAll(async () => {
  [a, b] = await Promise.all([
    createTestDatabase("isolation_a"),
    createTestDatabase("isolation_b"),
  ]);
});
afterAll(async () => {
  await Promise.all([a?.drop(), b?.drop()]);
});

it("clones a database that already has the whole schema, so migrate() applies nothing", async () => {
  const { rows } = await a.pool.query<{ name: string }>(
    `select n.nspname || '.' || c.relname as name
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relkind = 'r' and n.nspname = 'pgfn'`,
  );
  expect(rows.map((r) => r.name)).toEqual(
    expect.arrayContaining(["pgfn.functions", "pgfn.events", "pgfn.function_runs"]),
  );
  const schemas = await a.pool.query(
    "select 1 from pg_namespace where nspname = 'graphile_worker'",
  );
  expect(schemas.rowCount).toBe(1);

  const again = await migrate(a.pool);
  expect(again).toEqual({ applied: [], alreadyApplied: (await listMigrations()).length });
});

it("gives each file a database of its own: a row in one is not in the other", async () => {
  expect(a.name).not.toBe(b.name);
  await a.pool.query("insert into pgfn.events (function_name, source) values ('probe', 'manual')");
  const inA = await a.pool.query("select count(*)::int as n from pgfn.events");
  const inB = await b.pool.query("select count(*)::int as n from pgfn.events");
  expect(inA.rows[0].n).toBe(1);
  expect(inB.rows[0].n).toBe(0);
});

it("builds URLs to other databases on the same server", async () => {
  expect(databaseUrl(a.name)).toBe(a.url);
  const client = new pg.Client({ connectionString: adminUrl() });
  await client.connect();
  try {
    const { rows } = await client.query<{ exists: boolean }>(
      "select exists (select from pg_database where datname = $1)",
      [b.name],
    );
    expect(rows[0]?.exists).toBe(true);
  } finally {
    await client.end();
  }
});

it("drops a database with drop(), idempotently", async () => {
  const c = await createTestDatabase("isolation_c");
  await c.drop();
  await c.drop();
  const { rows } = await a.pool.query<{ n: number }>(
    "select count(*)::int as n from pg_database where datname = $1",
    [c.name],
  );
  expect(rows[0]?.n).toBe(0);
});

it("waitFor returns the first truthy value, and times out naming what it waited for", async () => {
  let polls = 0;
  await expect(waitFor(async () => ++polls >= 3 && polls)).resolves.toBe(3);

  const started = Date.now();
  await expect(
    waitFor(async () => false, { timeoutMs: 100, intervalMs: 10, message: "the probe row" }),
  ).rejects.toThrow("Timed out after 100 ms waiting for the probe row.");
  expect(Date.now() - started).toBeGreaterThanOrEqual(100);

  await expect(
    waitFor(
      async () => {
        throw new Error("relation does not exist");
      },
      { timeoutMs: 50, message: "the table" },
    ),
  ).rejects.toThrow("waiting for the table (last error: relation does not exist).");
});
