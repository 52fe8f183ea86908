// The SQL API as a psql user reads it: every public function takes the
// argument names the README shows, by position and by name (`=>`), with the
// README's defaults, and `\df+ pgfn.*` describes each one. No daemon runs
// here: each call is checked by the rows it leaves.
import { readFile } from "node:fs/promises";
import pg from "pg";
import { Logger as GraphileLogger, runMigrations } from "graphile-worker";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listMigrations } from "../src/migrate.js";
import { createTestDatabase, type TestDatabase } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

/**
 * The public SQL functions and their arguments as `\df` shows them. A new
 * public function goes here (and gets a named-notation test below); the
 * catalog test fails until it does.
 */
const PUBLIC_FUNCTIONS: Readonly<Record<string, string>> = {
  attach: `"table" regclass, function text, operations text[] DEFAULT ARRAY['INSERT'::text, 'UPDATE'::text, 'DELETE'::text]`,
  detach: `"table" regclass, function text`,
  enable: "name text",
  disable: "name text",
  invoke_async: "name text, payload jsonb DEFAULT '{}'::jsonb",
  replay: "event_id bigint, force boolean DEFAULT false",
  retry: "run_id bigint, force boolean DEFAULT false",
  retry_dead_letters:
    "function_name text DEFAULT NULL::text, since timestamp with time zone DEFAULT NULL::timestamp with time zone",
  prune: "older_than interval",
  schedule:
    "name text, cron text, catch_up text DEFAULT 'latest'::text, timezone text DEFAULT 'UTC'::text",
  unschedule: "name text",
  close_circuit: "name text",
};

const t = useTestDatabase("sql_named");

beforeAll(async () => {
  for (const name of ["named", "other"]) await t.deploy(name, { example: "echo" });
});

/** The single value `select <expression> as v` returns. */
async function value<T = unknown>(expression: string, params: unknown[] = []): Promise<T> {
  const { rows } = await t.pool.query<{ v: T }>(`select ${expression} as v`, params);
  return rows[0]!.v;
}

/** A failed attempt of a new event of `fn`, with an open dead letter. */
async function deadLetter(fn: string): Promise<{ eventId: string; runId: string }> {
  const eventId = await value<string>(`pgfn.invoke_async($1)`, [fn]);
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, error_code, finished_at)
     values ($1, $2, 1, 'failed', 'FUNCTION_ERROR', now()) returning id`,
    [eventId, fn],
  );
  const runId = rows[0]!.id;
  await t.pool.query(
    `insert into pgfn.dead_letters (event_id, function_name, last_run_id, error_code)
     values ($1, $2, $3, 'FUNCTION_ERROR')`,
    [eventId, fn, runId],
  );
  return { eventId, runId };
}

/** The public functions as the catalog has them. */
async function catalog() {
  const { rows } = await t.pool.query<{
    name: string;
    args: string;
    argnames: string[];
    comment: string | null;
  }>(
    `select p.proname as name, pg_get_function_arguments(p.oid) as args,
            coalesce(p.proargnames, '{}') as argnames, obj_description(p.oid, 'pg_proc') as comment
     from pg_proc p
     where p.pronamespace = 'pgfn'::regnamespace and p.proname = any ($1)
     order by 1`,
    [Object.keys(PUBLIC_FUNCTIONS)],
  );
  return rows;
}

describe("the catalog", () => {
  it("gives each public function the documented argument names, and no p_ prefix", async () => {
    const rows = await catalog();
    expect(Object.fromEntries(rows.map((r) => [r.name, r.args]))).toEqual(PUBLIC_FUNCTIONS);
    for (const { name, argnames } of rows) {
      expect(
        argnames.filter((a) => a.startsWith("p_")),
        `pgfn.${name}`,
      ).toEqual([]);
    }
  });

  it("describes each public function in \\df+, opening with the call and its defaults", async () => {
    for (const { name, argnames, comment } of await catalog()) {
      const call = argnames.map((a) => `${a}( default [^)]*?)?`).join(", ");
      expect(comment, `comment on pgfn.${name}`).toMatch(
        new RegExp(`^pgfn\\.${name}\\(${call}\\): `),
      );
    }
  });

  it("lists every function whose comment documents a call, and no other", async () => {
    // A function documented for people (its comment opens with "pgfn.name(")
    // is public and must be in PUBLIC_FUNCTIONS, so it is tested here by name.
    const { rows } = await t.pool.query<{ name: string }>(
      `select p.proname as name from pg_proc p
       where p.pronamespace = 'pgfn'::regnamespace
         and obj_description(p.oid, 'pg_proc') like 'pgfn.' || p.proname || '(%'
       order by 1`,
    );
    expect(rows.map((r) => r.name)).toEqual(Object.keys(PUBLIC_FUNCTIONS).sort());
  });

  it("takes the argument names the README shows", async () => {
    const readme = await readFile(new URL("../README.md", import.meta.url), "utf8");
    const argnames = new Map((await catalog()).map((r) => [r.name, r.argnames]));
    // `pgfn.retry(run_id)`, `pgfn.attach(table, function, operations)`, ...:
    // calls written with argument names, not values.
    const documented = [...readme.matchAll(/pgfn\.([a-z_]+)\(([a-z_]+(?:, [a-z_]+)*)\)/g)];
    for (const [call, name, args] of documented) {
      expect(argnames.get(name!)?.slice(0, args!.split(", ").length), call).toEqual(
        args!.split(", "),
      );
    }
    expect(
      [...new Set(documented.map(([, name]) => name))].sort(),
      "public functions the README shows with their arguments",
    ).toEqual(Object.keys(PUBLIC_FUNCTIONS).sort());
  });
});

describe("named and positional calls", () => {
  it("schedule and unschedule", async () => {
    // The call from the issue: positional name and cron, catch_up by name, timezone defaulted.
    expect(await value(`pgfn.schedule('named', '* * * * *', catch_up => 'all')`)).toMatch(
      /^scheduled named: '\* \* \* \* \*' \(UTC\), catch_up all/,
    );
    await value(
      `pgfn.schedule(timezone => 'Europe/Berlin', catch_up => 'none', cron => '30 2 * * *', name => 'other')`,
    );
    const { rows } = await t.pool.query(
      `select function_name, cron, timezone, catch_up from pgfn.schedules order by 1`,
    );
    expect(rows).toEqual([
      { function_name: "named", cron: "* * * * *", timezone: "UTC", catch_up: "all" },
      { function_name: "other", cron: "30 2 * * *", timezone: "Europe/Berlin", catch_up: "none" },
    ]);
    // Positional, all four, and the defaults.
    await value(`pgfn.schedule('other', '@hourly', 'all', 'Asia/Tokyo')`);
    await value(`pgfn.schedule(name => 'named', cron => '@daily')`);
    expect(
      (
        await t.pool.query(
          `select function_name, cron, timezone, catch_up from pgfn.schedules order by 1`,
        )
      ).rows,
    ).toEqual([
      { function_name: "named", cron: "@daily", timezone: "UTC", catch_up: "latest" },
      { function_name: "other", cron: "@hourly", timezone: "Asia/Tokyo", catch_up: "all" },
    ]);
    // Still refused in the user's terms when called by name.
    await expect(
      value(`pgfn.schedule(name => 'named', cron => '* * * * *', catch_up => 'some')`),
    ).rejects.toThrow(/unknown catch_up 'some'/);
    expect(await value(`pgfn.unschedule(name => 'named')`)).toBe(true);
    expect(await value(`pgfn.unschedule('other')`)).toBe(true);
    expect(await value(`pgfn.unschedule(name => 'named')`)).toBe(false);
    expect(await value(`(select count(*)::int from pgfn.schedules)`)).toBe(0);
  });

  it("enable and disable", async () => {
    const enabled = () => value(`(select enabled from pgfn.functions where name = 'named')`);
    expect(await value(`pgfn.disable(name => 'named')`)).toBe(false);
    expect(await enabled()).toBe(false);
    expect(await value(`pgfn.enable(name => 'named')`)).toBe(true);
    expect(await enabled()).toBe(true);
    expect(await value(`pgfn.disable('named')`)).toBe(false);
    expect(await value(`pgfn.enable('named')`)).toBe(true);
    await expect(value(`pgfn.enable(name => 'missing')`)).rejects.toThrow(
      "there is no function 'missing'",
    );
  });

  it("invoke_async", async () => {
    const named = await value<string>(`pgfn.invoke_async(name => 'named', payload => '{"a": 1}')`);
    const defaulted = await value<string>(`pgfn.invoke_async(name => 'named')`);
    const positional = await value<string>(`pgfn.invoke_async('other', '{"b": 2}')`);
    const { rows } = await t.pool.query(
      `select id, function_name, source, payload from pgfn.events where id = any ($1) order by id`,
      [[named, defaulted, positional]],
    );
    expect(rows).toEqual([
      { id: named, function_name: "named", source: "manual", payload: { a: 1 } },
      { id: defaulted, function_name: "named", source: "manual", payload: {} },
      { id: positional, function_name: "other", source: "manual", payload: { b: 2 } },
    ]);
  });

  it("replay and retry", async () => {
    const replayed = await deadLetter("named");
    const byEvent = await value<string>(`pgfn.replay(event_id => $1)`, [replayed.eventId]);
    const retried = await deadLetter("named");
    const byRun = await value<string>(`pgfn.retry(run_id => $1)`, [retried.runId]);
    // A second time is refused unless forced (test/sql.refusals.test.ts).
    const positional = await value<string>(`pgfn.retry($1, true)`, [retried.runId]);
    const again = await value<string>(`pgfn.replay($1, force => true)`, [replayed.eventId]);
    const { rows } = await t.pool.query(
      `select id, replay_of from pgfn.events where id = any ($1) order by id`,
      [[byEvent, byRun, positional, again]],
    );
    expect(rows).toEqual([
      { id: byEvent, replay_of: replayed.eventId },
      { id: byRun, replay_of: retried.eventId },
      { id: positional, replay_of: retried.eventId },
      { id: again, replay_of: replayed.eventId },
    ]);
    // Each replay resolved the original's dead letter (the first one that came).
    const letters = await t.pool.query(
      `select event_id, retried_event_id from pgfn.dead_letters where event_id = any ($1) order by event_id`,
      [[replayed.eventId, retried.eventId]],
    );
    expect(letters.rows).toEqual([
      { event_id: replayed.eventId, retried_event_id: byEvent },
      { event_id: retried.eventId, retried_event_id: byRun },
    ]);
    await expect(value(`pgfn.retry(run_id => 0)`)).rejects.toThrow("pgfn.retry: there is no run 0");
    await expect(value(`pgfn.replay(event_id => 0)`)).rejects.toThrow(
      "pgfn.replay: there is no event 0",
    );
  });

  it("retry_dead_letters", async () => {
    await t.pool.query(
      `update pgfn.dead_letters set resolved_at = now() where resolved_at is null`,
    );
    await deadLetter("named");
    await deadLetter("other");
    await deadLetter("other");
    const open = () =>
      value(`(select count(*)::int from pgfn.dead_letters where resolved_at is null)`);
    // Nothing created since a minute from now, nothing of a function without dead letters.
    expect(await value(`pgfn.retry_dead_letters(since => now() + interval '1 minute')`)).toBe(0);
    expect(await value(`pgfn.retry_dead_letters(function_name => 'missing')`)).toBe(0);
    expect(await open()).toBe(3);
    expect(
      await value(
        `pgfn.retry_dead_letters(function_name => 'other', since => now() - interval '1 minute')`,
      ),
    ).toBe(2);
    expect(
      (await t.pool.query(`select function_name from pgfn.dead_letters where resolved_at is null`))
        .rows,
    ).toEqual([{ function_name: "named" }]);
    await deadLetter("other");
    expect(await value(`pgfn.retry_dead_letters('other', null)`)).toBe(1);
    expect(await value(`pgfn.retry_dead_letters()`)).toBe(1);
    expect(await open()).toBe(0);
  });

  it("prune", async () => {
    // A finished event from two days ago, and one from now.
    const old = await value<string>(`pgfn.invoke_async('named')`);
    const recent = await value<string>(`pgfn.invoke_async('named')`);
    await t.pool.query(
      `update pgfn.events set dispatched_at = now(),
         created_at = case when id = $1 then now() - interval '2 days' else created_at end
       where id = any ($2)`,
      [old, [old, recent]],
    );
    await t.pool.query(
      `insert into pgfn.function_runs (event_id, function_name, attempt, status, finished_at)
       select id, 'named', 1, 'succeeded', now() from unnest($1::bigint[]) id`,
      [[old, recent]],
    );
    const exists = async (id: string) =>
      value<boolean>(`exists (select 1 from pgfn.events where id = $1)`, [id]);
    expect(await value(`pgfn.prune(older_than => interval '3 days')`)).toBe(0);
    expect(await value(`pgfn.prune(older_than => '1 day')`)).toBe(1);
    expect([await exists(old), await exists(recent)]).toEqual([false, true]);
    await expect(value(`pgfn.prune(older_than => '-1 day')`)).rejects.toThrow(/positive interval/);
    expect(await value(`pgfn.prune('1 day')`)).toBe(0);
  });

  it("close_circuit", async () => {
    await t.pool.query(
      `insert into pgfn.circuits (function_name, state, failures, opened_at) values ('named', 'open', 20, now())
       on conflict (function_name) do update set state = 'open', failures = 20, opened_at = now()`,
    );
    expect(await value(`pgfn.close_circuit(name => 'named')`)).toBe("circuit of named is closed");
    expect(
      (
        await t.pool.query(
          `select state, failures, opened_at from pgfn.circuits where function_name = 'named'`,
        )
      ).rows,
    ).toEqual([{ state: "closed", failures: 0, opened_at: null }]);
    // A function whose circuit never opened has nothing to close; one that does not exist is an error.
    expect(await value(`pgfn.close_circuit('other')`)).toBe("circuit of other is closed");
    await expect(value(`pgfn.close_circuit(name => 'missing')`)).rejects.toThrow(
      'pgfn.close_circuit: no function named "missing"',
    );
  });

  it("attach and detach", async () => {
    await t.pool.query(`create table public.named_rows (id int primary key, note text)`);
    const triggers = async () =>
      (
        await t.pool.query<{ tgname: string }>(
          `select tgname from pg_trigger where tgrelid = 'public.named_rows'::regclass order by 1`,
        )
      ).rows.map((r) => r.tgname);
    // TABLE is a reserved word: by name, "table" keeps its quotes.
    expect(
      await value(
        `pgfn.attach("table" => 'public.named_rows', function => 'named', operations => array['INSERT', 'UPDATE'])`,
      ),
    ).toBe("pgfn_named");
    expect(await triggers()).toEqual(["pgfn_named", "pgfn_named:update"]);
    // Mixed notation, and the default operations.
    await value(`pgfn.attach('public.named_rows', 'other', operations => array['DELETE'])`);
    await value(`pgfn.attach('public.named_rows', function => 'named')`);
    expect(await triggers()).toEqual([
      "pgfn_named",
      "pgfn_named:delete",
      "pgfn_named:update",
      "pgfn_other:delete",
    ]);
    await t.pool.query(
      `insert into public.named_rows values (1, 'a'); delete from public.named_rows`,
    );
    expect(
      (
        await t.pool.query(
          `select function_name, operation from pgfn.events where table_name = 'named_rows' order by id`,
        )
      ).rows,
    ).toEqual([
      { function_name: "named", operation: "INSERT" },
      { function_name: "named", operation: "DELETE" },
      { function_name: "other", operation: "DELETE" },
    ]);
    expect(await value(`pgfn.detach("table" => 'public.named_rows', function => 'named')`)).toBe(
      true,
    );
    expect(await value(`pgfn.detach('public.named_rows', 'other')`)).toBe(true);
    expect(await value(`pgfn.detach('public.named_rows', function => 'other')`)).toBe(false);
    expect(await triggers()).toEqual([]);
  });
});

describe("upgrading to named arguments", () => {
  /** The migration that renamed the arguments; before it, "the old installation". */
  const NAMED_API_MIGRATION = 14;
  const grantee = `pgfn_t_named_${process.pid}`;
  const outsider = `pgfn_t_named_out_${process.pid}`;
  let old: TestDatabase;

  beforeAll(async () => {
    old = await createTestDatabase("sql_named_upgrade", { migrated: false });
    await runMigrations({ pgPool: old.pool, logger: new GraphileLogger(() => () => undefined) });
    for (const m of await listMigrations()) {
      if (m.id >= NAMED_API_MIGRATION) break;
      await old.pool.query(await readFile(m.file, "utf8"));
    }
  });
  afterAll(async () => {
    for (const role of [grantee, outsider]) {
      await old?.pool.query(`drop owned by ${role}; drop role ${role}`).catch(() => undefined);
    }
    await old?.drop();
  });

  it("keeps the grants and owner an installation gave the functions, and can run again", async () => {
    const acl = async () =>
      (
        await old.pool.query<{ name: string; acl: string | null; owner: string }>(
          `select p.proname as name, p.proacl::text as acl, p.proowner::regrole::text as owner
           from pg_proc p where p.pronamespace = 'pgfn'::regnamespace and p.proname = any ($1)
           order by 1`,
          [Object.keys(PUBLIC_FUNCTIONS)],
        )
      ).rows;
    // An administrator took pgfn.prune and pgfn.retry from PUBLIC and gave
    // them to one role, and handed pgfn.unschedule to that role.
    await old.pool.query(`
      create role ${grantee} nologin;
      create role ${outsider} nologin;
      grant usage on schema pgfn to ${outsider};
      revoke execute on function pgfn.prune(interval) from public;
      grant execute on function pgfn.prune(interval) to ${grantee} with grant option;
      revoke execute on function pgfn.retry(bigint) from public;
      alter function pgfn.unschedule(text) owner to ${grantee};`);
    const before = await acl();
    expect(before.find((r) => r.name === "prune")?.acl).toContain(`${grantee}=X*/`);

    const named = (await listMigrations()).find((m) => m.id === NAMED_API_MIGRATION)!;
    const text = await readFile(named.file, "utf8");
    await old.pool.query(`begin; ${text}; commit`);
    expect(await acl()).toEqual(before);
    await old.pool.query(`begin; ${text}; commit`);
    expect(await acl()).toEqual(before);
    expect(await old.pool.query(`select pgfn.unschedule(name => 'none')`)).toMatchObject({
      rows: [{ unschedule: false }],
    });
    // Any other role still may not prune.
    const client = new pg.Client({ connectionString: old.url });
    await client.connect();
    try {
      await client.query(`set role ${outsider}`);
      await expect(client.query(`select pgfn.prune('1 day')`)).rejects.toThrow(
        "permission denied for function prune",
      );
    } finally {
      await client.end();
    }
  });
});
