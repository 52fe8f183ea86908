// The db_query host function against a real Postgres: it logs in as the
// function's db_role (never the daemon's user), so no SQL text can leave
// that role; it refuses roles that could reach more; it stays within the
// deadline, bounds replies in rows and bytes, refuses COPY with the client,
// leaves no session state behind, and shares its connections fairly.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import {
  DB_QUERY_APPLICATION_NAME,
  DbQueryExecutor,
  type DbQueryExecutorOptions,
} from "../src/sandbox/host/dbQuery.js";
import { pgpassPassword, roleConnectionConfig } from "../src/sandbox/host/dbRole.js";
import { HostFunctionError } from "../src/sandbox/host/errors.js";
import {
  createTestDatabase,
  createTestRoles,
  exampleWasm,
  waitFor,
  type TestDatabase,
  type TestRoles,
} from "./helpers.js";

let db: TestDatabase;
let roles: TestRoles;
let executor: DbQueryExecutor;
/** A handler role: reads public.notes, writes public.inbox. */
let reader: string;
/** Another function's role, with a table only it may read. */
let other: string;
let rlsRole: string;
const SECRET = "sekret-value-of-another-function";

const soon = () => Date.now() + 10_000;
const newExecutor = (options: Partial<DbQueryExecutorOptions> = {}) =>
  new DbQueryExecutor({ connectionString: db.url, pgpassFile: roles.pgpassFile, ...options });

async function failure(promise: Promise<unknown>): Promise<HostFunctionError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(HostFunctionError);
  return error as HostFunctionError;
}

/** Sessions of `role` on the test database, seen from outside. */
async function sessionsOf(role: string): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(
    "select count(*)::int as n from pg_stat_activity where datname = $1 and usename = $2",
    [db.name, role],
  );
  return rows[0]!.n;
}

/**
 * Runs, as `role`, a statement that ignores query cancels, and expects it
 * to fail at its deadline and its backend to end on the server; `marker`
 * tags the statement so that it is found (and ended, whatever happens).
 */
async function expectStubbornStatementStopped(role: string, marker: string): Promise<void> {
  const stubborn = newExecutor();
  try {
    const error = await failure(
      stubborn.query(
        { role, deadline: Date.now() + 500 },
        `do $$ begin loop begin perform pg_sleep(10);
           exception when query_canceled then null; end; end loop; end $$ -- ${marker}`,
        [],
      ),
    );
    expect(error.message).toContain("did not answer before the invocation's deadline");
    await waitFor(
      async () =>
        (
          await db.pool.query(
            "select count(*)::int = 0 as gone from pg_stat_activity where datname = $1 and query like $2 and pid <> pg_backend_pid()",
            [db.name, `%${marker}%`],
          )
        ).rows[0].gone,
      { message: "the stubborn statement's backend to end" },
    );
  } finally {
    await stubborn.end();
    await db.pool.query(
      "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and query like $2 and pid <> pg_backend_pid()",
      [db.name, `%${marker}%`],
    );
  }
}

beforeAll(async () => {
  db = await createTestDatabase("host_db_query");
  roles = await createTestRoles();
  reader = await roles.create("reader");
  other = await roles.create("other");
  rlsRole = await roles.create("rls");
  await db.pool.query(`
    create table public.notes (id int primary key, body text, at timestamptz, raw bytea, big int8, n numeric, f float8);
    insert into public.notes values
      (1, 'one', '2026-02-06T09:00:00Z', '\\x00ff', 9007199254740993, 1.50, 'Infinity'),
      (2, 'two', null, null, null, null, 2.5);
    create table public.inbox (id int, body text);
    create table public.owned_by_admin (id int);
    create table public.others_secrets (secret text);
    insert into public.others_secrets values ('only for the other role');
    create table public.todos (id int, owner text, title text);
    insert into public.todos values (1, 'alice', 'a1'), (2, 'bob', 'b1'), (3, 'alice', 'a2');
    alter table public.todos enable row level security;
    create policy own_rows on public.todos
      using (owner = current_setting('request.jwt.claims', true)::jsonb->>'sub');
  `);
  await db.pool.query(`grant usage on schema public to ${reader}, ${other}, ${rlsRole}`);
  await db.pool.query(`grant select on public.notes to ${reader}`);
  await db.pool.query(`grant select, insert on public.inbox to ${reader}`);
  await db.pool.query(`grant usage on schema pgfn to ${reader}`);
  await db.pool.query(`grant select on public.others_secrets to ${other}`);
  await db.pool.query(`grant select on public.todos to ${rlsRole}`);
  // Another function whose env holds a secret.
  await deployFunction(createDb(db.pool), {
    name: "holds_secret",
    wasm: await readFile(exampleWasm("echo")),
    env: { API_KEY: SECRET },
  });
  executor = newExecutor();
});

afterAll(async () => {
  await executor?.end();
  await db?.drop();
  // The database is gone, so the roles own nothing and have no grants left.
  await roles?.drop();
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

  it("logs in as the role: session_user and current_user are both the db_role", async () => {
    const { rows } = await executor.query(
      { role: reader, deadline: soon() },
      "select current_user as who, session_user as session",
      [],
    );
    expect(rows).toEqual([{ who: reader, session: reader }]);
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
});

describe("the role boundary (issue 10, finding 2)", () => {
  it("cannot become another role, however the SQL builds the switch", async () => {
    for (const sql of [
      `select set_config('ro'||'le', '${other}', true) as r, (select count(*) from public.others_secrets) as n`,
      `select set_config(lower('ROLE'), 'postgres', false)`,
      `do $$ begin execute 'se'||'t role postgres'; end $$`,
      `do $$ begin execute 'se'||'t role ${other}'; end $$`,
      "set role postgres",
      "set session authorization postgres",
    ]) {
      const error = await failure(executor.query({ role: reader, deadline: soon() }, sql, []));
      expect(error.transient, sql).toBe(false);
      expect(error.message, sql).toMatch(/permission denied|\(42501\)/);
    }
    const { rows } = await executor.query(
      { role: reader, deadline: soon() },
      "select current_user as who",
      [],
    );
    expect(rows).toEqual([{ who: reader }]);
  });

  it("cannot read another function's table even when the daemon's own user can", async () => {
    // The old recommended set-up: PGFN_DB_QUERY_URL as a non-superuser that
    // is a member of every handler role. Its user no longer matters.
    const hub = await roles.create("hub");
    await db.pool.query(`grant ${reader}, ${other} to ${hub}`);
    const hubUrl = new URL(db.url);
    hubUrl.username = hub;
    const viaHub = newExecutor({ connectionString: hubUrl.toString() });
    try {
      for (const sql of [
        "select * from public.others_secrets",
        `select set_config('role', '${other}', true), (select secret from public.others_secrets)`,
      ]) {
        const error = await failure(viaHub.query({ role: reader, deadline: soon() }, sql, []));
        expect(error.message, sql).toContain("(42501)");
        expect(error.message, sql).not.toContain("only for the other role");
      }
      // The owner of the table, the daemon's user here, reads it: the data is there.
      const { rows } = await db.pool.query("select secret from public.others_secrets");
      expect(rows).toEqual([{ secret: "only for the other role" }]);
    } finally {
      await viaHub.end();
    }
  });

  it("leaks no other function's env through an error message", async () => {
    for (const sql of [
      "select query_to_xml('select env from pgfn.functions', false, false, '')::text::int",
      `select set_config('role', 'postgres', true), query_to_xml('select env from pgfn.functions', false, false, '')::text::int`,
    ]) {
      const error = await failure(executor.query({ role: reader, deadline: soon() }, sql, []));
      expect(error.message, sql).toContain("permission denied");
      expect(error.message, sql).not.toContain(SECRET);
    }
  });

  it("cannot run programs on the server", async () => {
    const error = await failure(
      executor.query({ role: reader, deadline: soon() }, "copy (select 1) to program 'true'", []),
    );
    expect(error.transient).toBe(false);
    expect(error.message).toContain("(42501)");
  });

  it("refuses a superuser db_role, naming the fix", async () => {
    const boss = await roles.create("boss", "superuser");
    const error = await failure(executor.query({ role: boss, deadline: soon() }, "select 1", []));
    expect(error.transient).toBe(false);
    expect(error.message).toContain(`db_query refused: db_role "${boss}" is a superuser`);
    expect(error.message).toContain(`alter role ${boss} nosuperuser`);
    // The refused connection is destroyed; its backend notices and exits a
    // moment later, so wait for it rather than count at once.
    await waitFor(async () => (await sessionsOf(boss)) === 0, {
      message: "the refused superuser's session to end",
    });
  });

  it("refuses a db_role that is a member of a superuser role, naming the fix", async () => {
    const boss = await roles.create("boss2", "superuser");
    const sneaky = await roles.create("sneaky");
    await db.pool.query(`grant ${boss} to ${sneaky}`);
    const error = await failure(
      executor.query(
        { role: sneaky, deadline: soon() },
        `select set_config('role', '${boss}', false)`,
        [],
      ),
    );
    expect(error.message).toContain(`is a member of superuser role "${boss}"`);
    expect(error.message).toContain(`revoke ${boss} from ${sneaky}`);
  });

  it("checks a role again on a new connection once its old one has lived long enough", async () => {
    const boss = await roles.create("boss3", "superuser");
    const growing = await roles.create("growing");
    const shortLived = newExecutor({ maxLifetimeMs: 0 });
    try {
      await shortLived.query({ role: growing, deadline: soon() }, "select 1", []);
      expect(shortLived.stats.open).toBe(0);
      await db.pool.query(`grant ${boss} to ${growing}`);
      const error = await failure(
        shortLived.query({ role: growing, deadline: soon() }, "select 1", []),
      );
      expect(error.message).toContain(`is a member of superuser role "${boss}"`);
    } finally {
      await shortLived.end();
    }
  });

  it("refuses roles with server file or program access, other sessions' queries, CREATEROLE, or pgfn's secrets", async () => {
    const programs = await roles.create("programs");
    await db.pool.query(`grant pg_execute_server_program to ${programs}`);
    const creator = await roles.create("creator", "createrole");
    const envReader = await roles.create("envreader");
    await db.pool.query(`grant usage on schema pgfn to ${envReader}`);
    await db.pool.query(`grant select on pgfn.functions to ${envReader}`);
    const infoReader = await roles.create("inforeader");
    await db.pool.query(`grant usage on schema pgfn to ${infoReader}`);
    await db.pool.query(`grant select on pgfn.function_info to ${infoReader}`);
    const replicator = await roles.create("replicator", "replication");
    const signaller = await roles.create("signaller");
    await db.pool.query(`grant pg_signal_backend to ${signaller}`);
    const monitor = await roles.create("monitor");
    await db.pool.query(`grant pg_monitor to ${monitor}`);
    const creatorInPgfn = await roles.create("pgfncreate");
    await db.pool.query(`grant usage, create on schema pgfn to ${creatorInPgfn}`);
    const deployer = await roles.create("deployer");
    await db.pool.query(`grant usage on schema pgfn to ${deployer}`);
    await db.pool.query(`grant update (db_role) on pgfn.functions to ${deployer}`);
    const owner = await roles.create("owner", "nologin");
    const ownerMember = await roles.create("ownermember");
    await db.pool.query(`create table pgfn.test_owned (id int)`);
    await db.pool.query(`alter table pgfn.test_owned owner to ${owner}`);
    await db.pool.query(`grant ${owner} to ${ownerMember}`);
    try {
      const cases: [string, string][] = [
        [programs, `revoke pg_execute_server_program from ${programs}`],
        [creator, `alter role ${creator} nocreaterole`],
        [envReader, `revoke select on pgfn.functions from ${envReader}`],
        [infoReader, `revoke select on pgfn.function_info from ${infoReader}`],
        [ownerMember, `"${owner}", which owns pgfn's or graphile-worker's objects`],
        [replicator, `alter role ${replicator} noreplication`],
        [signaller, `revoke pg_signal_backend from ${signaller}`],
        // Reaches pg_read_all_stats: other sessions' query text.
        [monitor, `revoke pg_monitor, pg_read_all_stats from ${monitor}`],
        [creatorInPgfn, `revoke create on schema pgfn from ${creatorInPgfn}`],
        [deployer, `revoke insert, update on pgfn.functions from ${deployer}`],
      ];
      for (const [role, fix] of cases) {
        const error = await failure(executor.query({ role, deadline: soon() }, "select 1", []));
        expect(error.transient, role).toBe(false);
        expect(error.message, role).toMatch(/^db_query refused: db_role /);
        expect(error.message, role).toContain(fix);
      }
    } finally {
      await db.pool.query(`drop table pgfn.test_owned`);
    }
  });

  it("refuses a role that may read any function's env or code: a column, a view of it anywhere, a definer, PUBLIC's grant", async () => {
    const refusedFor = async (role: string) => {
      const error = await failure(executor.query({ role, deadline: soon() }, "select 1", []));
      expect(error.transient, role).toBe(false);
      expect(error.message, role).toMatch(/^db_query refused: db_role /);
      expect(error.message, role).toContain(
        " (every function's env secrets or code), so handler SQL could reach far more than the function needs. Revoke it: ",
      );
      return error.message;
    };
    const codeReader = await roles.create("codereader");
    await db.pool.query(`grant select (name, source) on pgfn.functions to ${codeReader}`);
    // Through a group it inherits: the grant to revoke is the group's.
    const group = await roles.create("wasmgroup", "nologin");
    await db.pool.query(`grant select (wasm) on pgfn.functions to ${group}`);
    const wasmMember = await roles.create("wasmmember");
    await db.pool.query(`grant ${group} to ${wasmMember}`);
    // A view outside pgfn, over a view over pgfn.function_info, using the whole row.
    await db.pool.query(`create schema peek`);
    await db.pool.query(`create view peek.info as select i from pgfn.function_info i`);
    await db.pool.query(`create view peek.rows as select i::text as row from peek.info`);
    const viewReader = await roles.create("viewreader");
    await db.pool.query(`grant usage on schema peek to ${viewReader}`);
    await db.pool.query(`grant select on peek.rows to ${viewReader}`);
    // A definer with an SQL body, outside pgfn, granted to the role alone.
    await db.pool
      .query(`create function peek.envs() returns setof jsonb language sql security definer
                         begin atomic select env from pgfn.functions; end`);
    await db.pool.query(`revoke all on function peek.envs() from public`);
    const definerCaller = await roles.create("definercaller");
    await db.pool.query(`grant usage on schema peek to ${definerCaller}`);
    await db.pool.query(`grant execute on function peek.envs() to ${definerCaller}`);
    try {
      expect(await refusedFor(codeReader)).toContain(
        `may read pgfn.functions.source (every function's env secrets or code), so handler SQL could reach far more than the function needs. Revoke it: revoke select (source) on pgfn.functions from ${codeReader};`,
      );
      const member = await refusedFor(wasmMember);
      expect(member).toContain("may read pgfn.functions.wasm");
      expect(member).toContain(
        `revoke select (wasm) on pgfn.functions from ${group}; (or revoke ${group} from ${wasmMember}`,
      );
      expect(await refusedFor(viewReader)).toContain(
        `may read peek.rows (every function's env secrets or code), so handler SQL could reach far more than the function needs. Revoke it: revoke select on peek.rows from ${viewReader};`,
      );
      expect(await refusedFor(definerCaller)).toContain(
        `may execute peek.envs(), which runs with the rights of an owner who may read them (every function's env secrets or code), so handler SQL could reach far more than the function needs. Revoke it: revoke execute on function peek.envs() from ${definerCaller};`,
      );

      // Everyone's, by default: a new definer in pgfn, and a grant to PUBLIC.
      const anyone = await roles.create("anyone");
      await db.pool
        .query(`create function pgfn.test_leak() returns jsonb language plpgsql security definer
                           as $$ begin return (select jsonb_agg(env) from pgfn.functions); end $$`);
      try {
        expect(await refusedFor(anyone)).toContain(
          "may execute pgfn.test_leak(), which runs with the rights of an owner who may read them (every function's env secrets or code), so handler SQL could reach far more than the function needs. Revoke it: revoke execute on function pgfn.test_leak() from public;",
        );
      } finally {
        await db.pool.query(`drop function pgfn.test_leak()`);
      }
      await db.pool.query(`grant select (env) on pgfn.functions to public`);
      try {
        expect(await refusedFor(anyone)).toContain(
          "may read pgfn.functions.env (every function's env secrets or code), so handler SQL could reach far more than the function needs. Revoke it: revoke select (env) on pgfn.functions from public;",
        );
      } finally {
        await db.pool.query(`revoke select (env) on pgfn.functions from public`);
      }
    } finally {
      await db.pool.query(`drop schema peek cascade`);
      await db.pool.query(`revoke all on pgfn.functions from ${codeReader}, ${group}`);
    }
  });

  it("serves a role with the README's grants, pgfn_writer, and pgfn.functions columns that hold no secret", async () => {
    const plain = await roles.create("plainwriter");
    await db.pool.query(`grant pgfn_writer to ${plain}`);
    await db.pool.query(`grant usage on schema pgfn to ${plain}`);
    await db.pool.query(`grant select (name, enabled, db_role) on pgfn.functions to ${plain}`);
    await db.pool.query(`create view public.function_names as select name from pgfn.functions`);
    try {
      // A view over pgfn.functions counts whatever it selects: Postgres records no more.
      await db.pool.query(`grant select on public.function_names to ${plain}`);
      expect(
        (await failure(executor.query({ role: plain, deadline: soon() }, "select 1", []))).message,
      ).toContain("may read public.function_names");
      await db.pool.query(`revoke select on public.function_names from ${plain}`);
      const shortLived = newExecutor({ maxLifetimeMs: 0 });
      try {
        const r = await shortLived.query(
          { role: plain, deadline: soon() },
          "select count(*)::int as n from pgfn.functions where enabled",
          [],
        );
        expect(r.rows).toEqual([{ n: expect.any(Number) }]);
      } finally {
        await shortLived.end();
      }
    } finally {
      await db.pool.query(`drop view public.function_names`);
      await db.pool.query(`revoke all on pgfn.functions from ${plain}`);
    }
  });

  it("checks with pg_catalog's names, not those of a search_path the role set for itself", async () => {
    const boss = await roles.create("boss4", "superuser");
    const shadow = await roles.create("shadow");
    await db.pool.query(`grant ${boss} to ${shadow}`);
    await db.pool.query(`create schema ${shadow} authorization ${shadow}`);
    await db.pool.query(`
      create function ${shadow}.pg_has_role(oid, oid, text) returns boolean
        language sql as 'select false';
      alter function ${shadow}.pg_has_role(oid, oid, text) owner to ${shadow};
      create view ${shadow}.pg_roles as
        select rolname, oid, false as rolsuper, false as rolcreaterole, false as rolreplication
        from pg_catalog.pg_roles;
      alter view ${shadow}.pg_roles owner to ${shadow};
      alter role ${shadow} in database ${db.name} set search_path = ${shadow}, pg_catalog;
    `);
    const error = await failure(executor.query({ role: shadow, deadline: soon() }, "select 1", []));
    expect(error.message).toContain(`is a member of superuser role "${boss}"`);
  });

  it("refuses a role that could SET ROLE to one holding pgfn's secrets, even without inheriting", async () => {
    // A NOINHERIT member has none of the group's privileges until it runs
    // SET ROLE, which handler SQL can do (in a DO block, say).
    const group = await roles.create("envgroup", "nologin");
    await db.pool.query(`grant usage, create on schema pgfn to ${group}`);
    await db.pool.query(`grant select, update on pgfn.functions to ${group}`);
    const member = await roles.create("noinherit", "noinherit");
    await db.pool.query(`grant ${group} to ${member}`);
    try {
      const error = await failure(
        executor.query(
          { role: member, deadline: soon() },
          `do $$ begin set role ${group};
             raise exception '%', (select string_agg(env::text, ',') from pgfn.functions); end $$`,
          [],
        ),
      );
      expect(error.message).toMatch(/^db_query refused: db_role /);
      expect(error.message).not.toContain(SECRET);
      expect(error.message).toContain(`from ${group}`);
    } finally {
      await db.pool.query(`revoke all on pgfn.functions from ${group}`);
      await db.pool.query(`revoke all on schema pgfn from ${group}`);
    }
  });

  it("checks the role it logged in as, not the role a default of its own switched to", async () => {
    // Handler SQL may set its own role's defaults: while still harmless it
    // makes every later login start as a member role it was given, so that
    // a check of current_user looks at that role instead of its own.
    const boss = await roles.create("boss5", "superuser");
    const planter = await roles.create("planter");
    const decoy = await roles.create("decoy", "nologin");
    await db.pool.query(`grant ${decoy} to ${planter}`);
    const shortLived = newExecutor({ maxLifetimeMs: 0 });
    try {
      await shortLived.query(
        { role: planter, deadline: soon() },
        `alter role ${planter} set role = '${decoy}'`,
        [],
      );
      await db.pool.query(`grant ${boss} to ${planter}`);
      const error = await failure(
        shortLived.query({ role: planter, deadline: soon() }, "select 1", []),
      );
      expect(error.message).toContain(`is a member of superuser role "${boss}"`);
    } finally {
      await shortLived.end();
    }
  });

  it("refuses the daemon's own role", async () => {
    const daemonUser = await roles.create("daemon");
    const own = newExecutor({ daemonRole: daemonUser });
    try {
      const error = await failure(
        own.query({ role: daemonUser, deadline: soon() }, "select 1", []),
      );
      expect(error.message).toContain("the role the daemon connects as");
    } finally {
      await own.end();
    }
  });

  it("refuses the daemon's own role and its members when its name needs quotes", async () => {
    // current_user as the daemon saw it, not an identifier to parse: a
    // mixed-case or dotted name read as one would name another role or none.
    for (const label of ["Daemon", "dae.mon"]) {
      const daemonUser = await roles.create(label);
      const member = await roles.create(`${label}member`);
      await db.pool.query(`grant "${daemonUser}" to "${member}"`);
      const own = newExecutor({ daemonRole: daemonUser });
      try {
        for (const role of [daemonUser, member]) {
          const error = await failure(own.query({ role, deadline: soon() }, "select 1", []));
          expect(error.message, role).toContain("the role the daemon connects as");
        }
      } finally {
        await own.end();
      }
    }
  });

  it("refuses a missing or NOLOGIN role and a function without one, saying what to do", async () => {
    const none = await failure(executor.query({ role: null, deadline: soon() }, "select 1", []));
    expect(none.transient).toBe(false);
    expect(none.message).toContain("function has no db_role; set one with --db-role");

    const missing = `pgfn_r_missing_${process.pid}`;
    const absent = await failure(
      executor.query({ role: missing, deadline: soon() }, "select 1", []),
    );
    expect(absent.transient).toBe(false);
    // A server that asks for passwords asks before it looks the role up.
    expect(absent.message).toMatch(
      new RegExp(`cannot log in as db_role "${missing}"|asks for db_role "${missing}"'s password`),
    );

    const nologin = await roles.create("nologin", "nologin");
    const refused = await failure(
      executor.query({ role: nologin, deadline: soon() }, "select 1", []),
    );
    expect(refused.transient).toBe(false);
    expect(refused.message).toContain(`alter role ${nologin} login`);
    expect(refused.message).toContain("PGPASSFILE");
  });
});

describe("limits", () => {
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
    // Postgres nests block comments: this is a commit, then a prepare.
    for (const sql of ["/* /* */ */ commit", "-- x\n/* a /* b */ c */ prepare transaction 'x'"]) {
      const nested = await failure(executor.query({ role: reader, deadline: soon() }, sql, []));
      expect(nested.message, sql).toContain("transaction control is not allowed");
    }
    // Comments alone before a query are fine.
    const { rows } = await executor.query(
      { role: reader, deadline: soon() },
      "/* /* */ */ -- commit\n select 1 as one",
      [],
    );
    expect(rows).toEqual([{ one: 1 }]);
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

  it("stops a statement that ignores statement_timeout at the deadline, on the server too", async () => {
    const stubborn = newExecutor();
    try {
      const started = Date.now();
      const error = await failure(
        stubborn.query(
          { role: reader, deadline: Date.now() + 500 },
          `do $$ begin loop begin perform pg_sleep(10);
             exception when query_canceled then null; end; end loop; end $$`,
          [],
        ),
      );
      expect(error.transient).toBe(true);
      expect(error.message).toContain("did not answer before the invocation's deadline");
      expect(Date.now() - started).toBeLessThan(5000);
      await waitFor(
        async () =>
          (
            await db.pool.query(
              "select count(*)::int = 0 as gone from pg_stat_activity where datname = $1 and query like '%exception when query_canceled%' and pid <> pg_backend_pid()",
              [db.name],
            )
          ).rows[0].gone,
        { message: "the stubborn statement's backend to end" },
      );
    } finally {
      await stubborn.end();
    }
  });

  it("stops such a statement even when the role's search_path shadows pg_terminate_backend", async () => {
    // The role's own default search_path is in force on the connection that
    // ends the stuck statement; a pg_terminate_backend of its own there
    // would keep its statement running on the server forever.
    const shadow = await roles.create("termshadow");
    await db.pool.query(`create schema ${shadow} authorization ${shadow}`);
    await db.pool.query(`
      create function ${shadow}.pg_terminate_backend(integer) returns boolean
        language sql as 'select false';
      alter function ${shadow}.pg_terminate_backend(integer) owner to ${shadow};
      alter role ${shadow} in database ${db.name} set search_path = ${shadow}, pg_catalog;
    `);
    await expectStubbornStatementStopped(shadow, "stubborn_behind_a_shadow");
  });

  it("stops such a statement even when the role's logins start as another role", async () => {
    // A role may give itself a default role (alter role ... set role); a
    // session running as that one may not terminate the role's own sessions.
    const starter = await roles.create("rolestart");
    const decoy = await roles.create("roledecoy", "nologin");
    await db.pool.query(`grant ${decoy} to ${starter}`);
    await db.pool.query(`alter role ${starter} in database ${db.name} set role = '${decoy}'`);
    await expectStubbornStatementStopped(starter, "stubborn_behind_a_default_role");
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

  it("fails a result over maxRows, non-transient", async () => {
    const small = newExecutor({ maxRows: 10, poolSize: 1 });
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
      expect(
        (await small.query({ role: reader, deadline: soon() }, "select 1 as n", [])).rows,
      ).toEqual([{ n: 1 }]);
    } finally {
      await small.end();
    }
  });

  it("fails a 100 MB reply by bytes as it arrives (finding 3), and the role's next query works", async () => {
    const started = Date.now();
    const error = await failure(
      executor.query(
        { role: reader, deadline: Date.now() + 60_000 },
        "select repeat('x', 1000000) as x from generate_series(1, 100)",
        [],
      ),
    );
    expect(error.transient).toBe(false);
    expect(error.message).toBe(
      "db_query failed: the reply is larger than 4000000 bytes (PGFN_DB_QUERY_MAX_BYTES); select fewer rows or columns, or add a limit",
    );
    // Stopped early, not after reading all 100 MB.
    expect(Date.now() - started).toBeLessThan(10_000);
    const { rows } = await executor.query(
      { role: reader, deadline: soon() },
      "select current_user as who",
      [],
    );
    expect(rows).toEqual([{ who: reader }]);
  });

  it("counts the reply as the handler gets it: JSON, column names on every row", async () => {
    // 5000 small rows: about 75 kB on the wire, about 350 kB as JSON.
    const small = newExecutor({ maxBytes: 100_000 });
    try {
      const name = "c".repeat(60);
      const error = await failure(
        small.query(
          { role: reader, deadline: soon() },
          `select n as ${name} from generate_series(1, 5000) n`,
          [],
        ),
      );
      expect(error.message).toContain("larger than 100000 bytes (PGFN_DB_QUERY_MAX_BYTES)");
    } finally {
      await small.end();
    }
  });

  it("counts every byte the server sends: one huge value, a flood of notices", async () => {
    const small = newExecutor({ maxBytes: 100_000 });
    try {
      for (const sql of [
        "select repeat('x', 20000000) as x",
        `do $$ begin for i in 1..20000 loop raise notice '%', repeat('x', 1000); end loop; end $$`,
      ]) {
        const error = await failure(
          small.query({ role: reader, deadline: Date.now() + 60_000 }, sql, []),
        );
        expect(error.message, sql).toContain("larger than 100000 bytes (PGFN_DB_QUERY_MAX_BYTES)");
      }
      const ok = await small.query(
        { role: reader, deadline: soon() },
        "select repeat('x', 1000) as x",
        [],
      );
      expect(ok.rows[0]).toEqual({ x: "x".repeat(1000) });
    } finally {
      await small.end();
    }
  });

  it("counts the bytes the server sends at commit too: a deferred trigger's notices", async () => {
    // The statement only sets up a trigger deferred to commit; the flood
    // comes while db_query commits, after the statement itself has ended.
    const small = newExecutor({ maxBytes: 100_000 });
    try {
      const error = await failure(
        small.query(
          { role: reader, deadline: Date.now() + 60_000 },
          `do $$ begin
             create temp table flood (x int);
             create function pg_temp.flood() returns trigger language plpgsql as
               'begin for i in 1..20000 loop raise notice ''%'', repeat(''x'', 1000); end loop; return null; end';
             create constraint trigger flood after insert on flood deferrable initially deferred
               for each row execute function pg_temp.flood();
             insert into flood values (1);
           end $$`,
          [],
        ),
      );
      expect(error.message).toContain("larger than 100000 bytes (PGFN_DB_QUERY_MAX_BYTES)");
      const ok = await small.query({ role: reader, deadline: soon() }, "select 1 as one", []);
      expect(ok.rows).toEqual([{ one: 1 }]);
    } finally {
      await small.end();
    }
  });
});

describe("COPY with the client (finding 4)", () => {
  it("refuses COPY FROM STDIN at once; the role's next query works and end() is prompt", async () => {
    const copying = newExecutor({ poolSize: 1 });
    try {
      const started = Date.now();
      const error = await failure(
        copying.query(
          { role: reader, deadline: Date.now() + 30_000 },
          "copy public.inbox from stdin",
          [],
        ),
      );
      expect(error.transient).toBe(false);
      expect(error.message).toMatch(/^db_query refused: COPY \.\.\. FROM STDIN/);
      expect(Date.now() - started).toBeLessThan(3000);
      const { rows } = await copying.query(
        { role: reader, deadline: soon() },
        "insert into public.inbox values (1, 'after copy') returning body",
        [],
      );
      expect(rows).toEqual([{ body: "after copy" }]);
    } finally {
      const ending = Date.now();
      await copying.end();
      expect(Date.now() - ending).toBeLessThan(3000);
    }
  });

  it("refuses COPY TO STDOUT", async () => {
    const error = await failure(
      executor.query({ role: reader, deadline: soon() }, "copy public.notes to stdout", []),
    );
    expect(error.message).toContain("COPY ... TO STDOUT is not supported");
  });

  it("end() waits a bounded time for calls in flight, then closes them", async () => {
    const ending = newExecutor();
    const inFlight = failure(
      ending.query({ role: reader, deadline: Date.now() + 60_000 }, "select pg_sleep(30)", []),
    );
    await waitFor(async () => ending.stats.busy === 1, { message: "the query to start" });
    const started = Date.now();
    await ending.end(300);
    expect(Date.now() - started).toBeLessThan(2000);
    expect((await inFlight).message).toMatch(/^db_query failed/);
  });
});

describe("session state (finding 7)", () => {
  it("releases a session advisory lock taken by a statement that then failed", async () => {
    const key = 424242;
    const error = await failure(
      executor.query(
        { role: reader, deadline: soon() },
        // A division by zero at run time, after the lock (1/0 would fail at plan time).
        "select pg_advisory_lock($1::bigint), 1 / (random() * 0)::int",
        [key],
      ),
    );
    expect(error.message).toContain("division by zero");
    const other = await db.pool.connect();
    try {
      const { rows } = await other.query<{ got: boolean }>(
        "select pg_try_advisory_lock($1::bigint) as got",
        [key],
      );
      expect(rows[0]!.got).toBe(true);
      await other.query("select pg_advisory_unlock($1::bigint)", [key]);
    } finally {
      other.release();
    }
  });
});

describe("connections", () => {
  it("never opens more connections than poolSize, across roles", async () => {
    const activity = async () =>
      (
        await db.pool.query<{ pid: number }>(
          "select pid from pg_stat_activity where datname = $1 and application_name = $2",
          [db.name, DB_QUERY_APPLICATION_NAME],
        )
      ).rows.map((r) => r.pid);
    // The shared executor's idle connections carry the same application_name.
    const before = new Set(await activity());
    const bounded = newExecutor({ poolSize: 2 });
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
        Array.from({ length: 20 }, (_, i) =>
          bounded.query(
            { role: i % 2 ? reader : rlsRole, fn: `f${i % 3}`, deadline: soon() },
            "select pg_sleep(0.05) is null",
            [],
          ),
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
  });

  it("gives one function at most half the connections; another function is not kept waiting", async () => {
    const shared = newExecutor({ poolSize: 4 });
    try {
      const finished: string[] = [];
      const slow = Array.from({ length: 4 }, (_, i) =>
        shared
          .query({ role: reader, fn: "slow", deadline: soon() }, "select pg_sleep(1)", [])
          .then(() => finished.push(`slow${i}`)),
      );
      await waitFor(async () => shared.stats.busy === 2, { message: "slow to hold its share" });
      expect(shared.stats.waiting).toBe(2);
      await shared.query({ role: reader, fn: "quick", deadline: soon() }, "select 1", []);
      finished.push("quick");
      await Promise.all(slow);
      expect(finished[0]).toBe("quick");
    } finally {
      await shared.end();
    }
  });

  it("forgets an idle connection the server closed, so the next call does not fail", async () => {
    const one = newExecutor({ poolSize: 1, idleMs: 60_000 });
    try {
      await one.query({ role: other, deadline: soon() }, "select 1", []);
      expect(one.stats.idle).toBe(1);
      await db.pool.query(
        "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1 and datname = $2",
        [other, db.name],
      );
      await waitFor(async () => one.stats.idle === 0, { message: "the closed connection to go" });
      const { rows } = await one.query({ role: other, deadline: soon() }, "select 1 as n", []);
      expect(rows).toEqual([{ n: 1 }]);
    } finally {
      await one.end();
    }
  });

  it("fails transient when no connection frees up before the deadline", async () => {
    const one = newExecutor({ poolSize: 1 });
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

  it("closes idle connections, and gives an idle one up for another role", async () => {
    const one = newExecutor({ poolSize: 1, idleMs: 200 });
    try {
      await one.query({ role: reader, deadline: soon() }, "select 1", []);
      const { rows } = await one.query(
        { role: rlsRole, deadline: soon() },
        "select current_user as who",
        [],
      );
      expect(rows).toEqual([{ who: rlsRole }]);
      expect(one.stats.open).toBe(1);
      await waitFor(async () => one.stats.open === 0, { message: "the idle connection to close" });
      await waitFor(async () => (await sessionsOf(rlsRole)) === 0, {
        message: "the server session to end",
      });
    } finally {
      await one.end();
    }
  });
});

describe("pgpass", () => {
  it("reads passwords like libpq: wildcards, escapes, first match, mode 0600 only", async () => {
    const { mkdtemp, writeFile, chmod, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const path = await import("node:path");
    const dir = await mkdtemp(path.join(tmpdir(), "pgfn-pgpass-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const file = path.join(dir, "pgpass");
    await writeFile(
      file,
      [
        "# a comment",
        "db.example:5432:app:greeter:first",
        "*:*:*:greeter:second",
        "localhost:5433:*:we\\:ird:pa\\:ss\\\\word",
      ].join("\n"),
      { mode: 0o600 },
    );
    const key = { host: "db.example", port: 5432, database: "app", user: "greeter" };
    expect((await pgpassPassword(key, file)).password).toBe("first");
    expect((await pgpassPassword({ ...key, database: "other" }, file)).password).toBe("second");
    expect(
      (await pgpassPassword({ host: "/tmp", port: 5433, database: "x", user: "we:ird" }, file))
        .password,
    ).toBe("pa:ss\\word");
    expect((await pgpassPassword({ ...key, user: "nobody" }, file)).problem).toContain(
      "has no line for it",
    );
    await chmod(file, 0o644);
    const open = await pgpassPassword(key, file);
    expect(open.password).toBeUndefined();
    expect(open.problem).toContain("chmod 0600");
  });

  it("offers the URL's password only for the URL's own user", async () => {
    const url = new URL(db.url);
    url.username = "daemon_user";
    url.password = "daemons-password";
    const asked = { host: "127.0.0.1", port: 5432, database: "app" };
    const password = (role: string) =>
      (
        roleConnectionConfig(url.toString(), role, {
          applicationName: "test",
          pgpassFile: roles.pgpassFile,
        }).password as (params: typeof asked) => Promise<string>
      )(asked);
    expect(await password("daemon_user")).toBe("daemons-password");
    const readerPassword = await password(reader);
    expect(readerPassword).not.toBe("daemons-password");
    expect(readerPassword).toMatch(/^[0-9a-f]{24}$/);
    await expect(password("nobody_in_pgpass")).rejects.toThrow(/has no line for it/);
  });

  it("never uses the URL's password for another role", async () => {
    // A URL with a wrong password for its own user: if it were sent for the
    // db_role, a server that checks passwords would refuse; where the server
    // trusts local connections the role still logs in as itself.
    const url = new URL(db.url);
    url.password = "not-the-roles-password";
    const viaUrl = newExecutor({ connectionString: url.toString() });
    try {
      const { rows } = await viaUrl.query(
        { role: reader, deadline: soon() },
        "select session_user as who",
        [],
      );
      expect(rows).toEqual([{ who: reader }]);
    } finally {
      await viaUrl.end();
    }
  });
});
