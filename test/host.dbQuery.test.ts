// The db_query host function against a real Postgres: it runs as the
// function's db_role (never the daemon's), within the deadline, one
// statement per transaction, on a bounded pool.
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DB_QUERY_APPLICATION_NAME, DbQueryExecutor } from "../src/sandbox/host/dbQuery.js";
import { HostFunctionError } from "../src/sandbox/host/errors.js";
import { createTestDatabase, type TestDatabase } from "./helpers.js";

let db: TestDatabase;
let executor: DbQueryExecutor;
// Roles are cluster-wide: unique names, dropped in afterAll.
const suffix = randomBytes(4).toString("hex");
const reader = `pgfn_h_${suffix}`;
const rlsRole = `pgfn_h_rls_${suffix}`;

const soon = () => Date.now() + 10_000;

async function failure(promise: Promise<unknown>): Promise<HostFunctionError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(HostFunctionError);
  return error as HostFunctionError;
}

beforeAll(async () => {
  db = await createTestDatabase("host_db_query");
  await db.pool.query(`create role ${reader} nologin`);
  await db.pool.query(`create role ${rlsRole} nologin`);
  await db.pool.query(`
    create table public.notes (id int primary key, body text, at timestamptz, raw bytea, big int8, n numeric, f float8);
    insert into public.notes values
      (1, 'one', '2026-02-06T09:00:00Z', '\\x00ff', 9007199254740993, 1.50, 'Infinity'),
      (2, 'two', null, null, null, null, 2.5);
    create table public.owned_by_admin (id int);
    create table public.todos (id int, owner text, title text);
    insert into public.todos values (1, 'alice', 'a1'), (2, 'bob', 'b1'), (3, 'alice', 'a2');
    alter table public.todos enable row level security;
    create policy own_rows on public.todos
      using (owner = current_setting('request.jwt.claims', true)::jsonb->>'sub');
  `);
  await db.pool.query(`grant usage on schema public to ${reader}, ${rlsRole}`);
  await db.pool.query(`grant select on public.notes to ${reader}`);
  await db.pool.query(`grant usage on schema pgfn to ${reader}`);
  await db.pool.query(`grant select on public.todos to ${rlsRole}`);
  executor = new DbQueryExecutor({ connectionString: db.url });
});

afterAll(async () => {
  await executor?.end();
  await db?.drop();
  // The database is gone, so the roles own nothing and have no grants left.
  const { Client } = (await import("pg")).default;
  const { inject } = await import("vitest");
  const admin = new Client({ connectionString: inject("adminUrl") });
  await admin.connect();
  try {
    await admin.query(`drop role if exists ${reader}`);
    await admin.query(`drop role if exists ${rlsRole}`);
  } finally {
    await admin.end();
  }
});

describe("DbQueryExecutor", () => {
  it("reads a granted table as the role, with JSON-safe values", async () => {
    const result = await executor.query(
      { role: reader, deadline: soon() },
      "select * from public.notes where id >= $1 order by id",
      [1],
    );
    expect(result.rowCount).toBe(2);
    expect(result.fields).toEqual(["id", "body", "at", "raw", "big", "n", "f"]);
    expect(result.rows[0]).toEqual({
      id: 1,
      body: "one",
      at: "2026-02-06T09:00:00.000Z",
      raw: "\\x00ff",
      big: "9007199254740993",
      n: "1.50",
      f: "Infinity",
    });
    expect(JSON.parse(JSON.stringify(result.rows))).toEqual(result.rows);
  });

  it("runs as the role, never as the daemon's user", async () => {
    const { rows } = await executor.query(
      { role: reader, deadline: soon() },
      "select current_user as who",
      [],
    );
    expect(rows).toEqual([{ who: reader }]);
  });

  it("is denied what the role is not granted, non-transient, with the SQLSTATE", async () => {
    const select = await failure(
      executor.query({ role: reader, deadline: soon() }, "select * from pgfn.functions", []),
    );
    expect(select.transient).toBe(false);
    expect(select.message).toBe("db_query failed: permission denied for table functions (42501)");

    const drop = await failure(
      executor.query({ role: reader, deadline: soon() }, "drop table public.owned_by_admin", []),
    );
    expect(drop.transient).toBe(false);
    expect(drop.message).toContain("(42501)");
    const still = await db.pool.query("select to_regclass('public.owned_by_admin') as t");
    expect(still.rows[0].t).toBe("owned_by_admin");
  });

  it("rejects statements that would leave the role", async () => {
    for (const sql of [
      "reset role; select * from pgfn.functions",
      "set role postgres",
      "SET  LOCAL  ROLE postgres",
      "set session authorization postgres",
      "reset session authorization",
      "set/**/role postgres",
      "select set_config('role', 'postgres', true)",
      "select SET_CONFIG ( 'ROLE' , 'postgres', false)",
    ]) {
      const error = await failure(executor.query({ role: reader, deadline: soon() }, sql, []));
      expect(error.transient, sql).toBe(false);
      expect(error.message, sql).toContain("not allowed");
    }
  });

  it("discards the results of a statement that changed the role at run time", async () => {
    // A role name the patterns cannot see, and a query planned after the
    // switch (so it is not checked as the role): caught after the statement.
    const error = await failure(
      executor.query(
        { role: reader, deadline: soon() },
        `select set_config(lower('ROLE'), 'postgres', true) as r,
                query_to_xml('select count(*) from pgfn.functions', false, false, '') as leak`,
        [],
      ),
    );
    expect(error.transient).toBe(false);
    expect(error.message).toContain("changed the role");
    // The next call on the pool is the role again.
    const { rows } = await executor.query(
      { role: reader, deadline: soon() },
      "select current_user as who",
      [],
    );
    expect(rows).toEqual([{ who: reader }]);
  });

  it("refuses more than one statement (extended protocol), with or without params", async () => {
    const plain = await failure(
      executor.query({ role: reader, deadline: soon() }, "select 1; select 2", []),
    );
    expect(plain.transient).toBe(false);
    expect(plain.message).toContain("(42601)");
    const withParams = await failure(
      executor.query({ role: reader, deadline: soon() }, "select $1::int; select 2", [1]),
    );
    expect(withParams.message).toContain("(42601)");
  });

  it("refuses transaction control", async () => {
    const error = await failure(executor.query({ role: reader, deadline: soon() }, "commit", []));
    expect(error.transient).toBe(false);
    expect(error.message).toContain("transaction control");
  });

  it("times out within the deadline, transient", async () => {
    const started = Date.now();
    const error = await failure(
      executor.query({ role: reader, deadline: Date.now() + 300 }, "select pg_sleep(5)", []),
    );
    expect(error.transient).toBe(true);
    expect(error.message).toContain("(57014)");
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("fails transient without running when the deadline has passed", async () => {
    const error = await failure(
      executor.query({ role: reader, deadline: Date.now() - 1 }, "select 1", []),
    );
    expect(error.transient).toBe(true);
    expect(error.message).toContain("no time left");
  });

  it("gives row level security the caller's claims", async () => {
    const alice = await executor.query(
      { role: rlsRole, deadline: soon(), claims: { sub: "alice", role: "authenticated" } },
      "select id, title from public.todos order by id",
      [],
    );
    expect(alice.rows).toEqual([
      { id: 1, title: "a1" },
      { id: 3, title: "a2" },
    ]);
    const anonymous = await executor.query(
      { role: rlsRole, deadline: soon() },
      "select id from public.todos",
      [],
    );
    expect(anonymous.rows).toEqual([]);
  });

  it("refuses a function without db_role, a missing role and a superuser role", async () => {
    const none = await failure(executor.query({ role: null, deadline: soon() }, "select 1", []));
    expect(none.transient).toBe(false);
    expect(none.message).toContain("function has no db_role; set one with --db-role");

    const missing = `pgfn_h_missing_${suffix}`;
    const absent = await failure(
      executor.query({ role: missing, deadline: soon() }, "select 1", []),
    );
    expect(absent.transient).toBe(false);
    expect(absent.message).toContain(`"${missing}"`);

    for (const role of ["postgres", "none"]) {
      const error = await failure(executor.query({ role, deadline: soon() }, "select 1", []));
      expect(error.transient, role).toBe(false);
    }
  });

  it("fails a result over maxRows, non-transient", async () => {
    const small = new DbQueryExecutor({ connectionString: db.url, maxRows: 10, poolSize: 1 });
    try {
      const ok = await small.query(
        { role: reader, deadline: soon() },
        "select generate_series(1, 10) as n",
        [],
      );
      expect(ok.rowCount).toBe(10);
      const error = await failure(
        small.query({ role: reader, deadline: soon() }, "select generate_series(1, 100000)", []),
      );
      expect(error.transient).toBe(false);
      expect(error.message).toContain("more than 10 rows");
    } finally {
      await small.end();
    }
  });

  it("never opens more connections than poolSize", async () => {
    const activity = async () =>
      (
        await db.pool.query<{ pid: number }>(
          "select pid from pg_stat_activity where datname = $1 and application_name = $2",
          [db.name, DB_QUERY_APPLICATION_NAME],
        )
      ).rows.map((r) => r.pid);
    // The shared executor's idle connections carry the same application_name.
    const before = new Set(await activity());
    const bounded = new DbQueryExecutor({ connectionString: db.url, poolSize: 2 });
    const seen = new Set<number>();
    let peak = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const pids = (await activity()).filter((pid) => !before.has(pid));
        pids.forEach((pid) => seen.add(pid));
        peak = Math.max(peak, pids.length);
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    try {
      const results = await Promise.all(
        Array.from({ length: 20 }, () =>
          bounded.query({ role: reader, deadline: soon() }, "select pg_sleep(0.05) is null", []),
        ),
      );
      expect(results).toHaveLength(20);
    } finally {
      sampling = false;
      await sampler;
      await bounded.end();
    }
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(2);
    expect(seen.size).toBeLessThanOrEqual(2);
  });

  it("fails transient when no connection frees up before the deadline", async () => {
    const one = new DbQueryExecutor({ connectionString: db.url, poolSize: 1 });
    try {
      const busy = one.query({ role: reader, deadline: soon() }, "select pg_sleep(1)", []);
      const error = await failure(
        one.query({ role: reader, deadline: Date.now() + 200 }, "select 1", []),
      );
      expect(error.transient).toBe(true);
      expect(error.message).toContain("waiting for a database connection");
      await busy;
    } finally {
      await one.end();
    }
  });
});
