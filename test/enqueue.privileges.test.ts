// The write path's privilege boundary: a row becomes JSON with the rights of
// the role writing it, never pgfn's owner's; only members of pgfn_writer may
// record events; nothing else in pgfn opens up to them.
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("enqueue_privileges");
const roles: string[] = [];

/** SQLSTATE insufficient_privilege. */
const INSUFFICIENT_PRIVILEGE = "42501";

afterAll(async () => {
  for (const role of roles) {
    await t?.pool.query(`drop owned by ${role} cascade; drop role if exists ${role}`);
  }
});

/** A plain (non-superuser) role with a cluster-wide unique name, dropped in afterAll. */
async function createRole(label: string): Promise<string> {
  const role = `pgfn_t_${label}_${process.pid}_${roles.length + 1}`;
  roles.push(role);
  await t.pool.query(`create role ${role} nologin`);
  return role;
}

/** Runs `use` on a fresh session whose current_user is `role`. */
async function asRole<T>(role: string, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: t.url });
  client.on("error", () => undefined);
  await client.connect();
  try {
    await client.query(`set role ${role}`);
    return await use(client);
  } finally {
    await client.end();
  }
}

/** The error `promise` rejects with (fails the test if it resolves). */
async function failure(promise: Promise<unknown>): Promise<pg.DatabaseError> {
  try {
    await promise;
  } catch (error) {
    return error as pg.DatabaseError;
  }
  throw new Error("expected the statement to fail, and it succeeded");
}

async function eventsOf(fn: string) {
  const { rows } = await t.pool.query(
    `select source, table_schema, table_name, operation, old, new from pgfn.events where function_name = $1 order by id`,
    [fn],
  );
  return rows;
}

/**
 * SQL that `owner` runs to make type `${owner}.mood` with a cast to json
 * that grants `owner` superuser when it runs with a superuser's rights,
 * and turns into "escalated as ROLE" or "refused as ROLE".
 */
function escalatingCast(owner: string): string {
  return `
    create type ${owner}.mood as enum ('a');
    create function ${owner}.mood_to_json(${owner}.mood) returns json language plpgsql as $f$
    begin
      begin
        alter role ${owner} superuser;
        return to_json('escalated as ' || current_user);
      exception when insufficient_privilege then
        return to_json('refused as ' || current_user);
      end;
    end $f$;
    create cast (${owner}.mood as json) with function ${owner}.mood_to_json(${owner}.mood);`;
}

async function isSuperuser(role: string): Promise<boolean> {
  const { rows } = await t.pool.query(`select rolsuper from pg_roles where rolname = $1`, [role]);
  return rows[0].rolsuper;
}

describe("writing an attached table", () => {
  it("runs the table's casts as the writer: a table owner cannot become superuser through pgfn.enqueue()", async () => {
    const owner = await createRole("owner");
    await t.pool.query(`
      grant pgfn_writer to ${owner};
      create schema ${owner} authorization ${owner};`);
    await asRole(owner, (c) => c.query(`create table ${owner}.notes (id int primary key)`));
    // An administrator attaches the user's table, as pgfn.attach is meant to be used.
    await t.pool.query(`select pgfn.attach('${owner}.notes', 'on_note', array['INSERT'])`);

    // The attack: a cast to json that grants its author superuser when it
    // runs with a superuser's rights, and says what happened either way.
    await asRole(owner, (c) =>
      c.query(`
        ${escalatingCast(owner)}
        alter table ${owner}.notes add column mood ${owner}.mood;
        insert into ${owner}.notes values (1, 'a');`),
    );

    expect(await isSuperuser(owner)).toBe(false);
    // The cast did run, as the role writing the row, and the event was recorded.
    expect(await eventsOf("on_note")).toEqual([
      {
        source: "database",
        table_schema: owner,
        table_name: "notes",
        operation: "INSERT",
        old: null,
        new: { id: 1, mood: `refused as ${owner}` },
      },
    ]);
  });

  it("refuses a writer without pgfn_writer with an error naming the fix, and keeps none of its rows", async () => {
    const writer = await createRole("nowriter");
    await t.pool.query(`
      create table public.plain_orders (id int primary key, note text);
      select pgfn.attach('public.plain_orders', 'on_plain_order', array['INSERT']);
      grant usage on schema public to ${writer};
      grant insert, select on public.plain_orders to ${writer};`);

    const error = await asRole(writer, (c) =>
      failure(c.query(`insert into public.plain_orders values (1, 'a'), (2, 'b')`)),
    );
    expect(error.code).toBe(INSUFFICIENT_PRIVILEGE);
    expect(error.message).toBe(
      `role ${writer} may not record pgfn events for trigger pgfn_on_plain_order on public.plain_orders: grant pgfn_writer to ${writer}`,
    );
    const { rows } = await t.pool.query(`select count(*)::int as n from public.plain_orders`);
    expect(rows[0].n).toBe(0);
    expect(await eventsOf("on_plain_order")).toEqual([]);
  });

  it("records the right old and new for a plain writer granted pgfn_writer", async () => {
    const writer = await createRole("writer");
    await t.pool.query(`
      create table public.accounts (id int primary key, email text, tags text[], meta jsonb, closed_at timestamptz);
      select pgfn.attach('public.accounts', 'on_account');
      grant usage on schema public to ${writer};
      grant select, insert, update, delete on public.accounts to ${writer};
      grant pgfn_writer to ${writer};`);

    await asRole(writer, async (c) => {
      await c.query(
        `insert into public.accounts values (1, 'a@x.test', '{x,y}', '{"n": 1}', '2026-01-02T03:04:05Z')`,
      );
      await c.query(`update public.accounts set email = 'b@x.test', meta = null where id = 1`);
      await c.query(`delete from public.accounts where id = 1`);
    });

    const first = {
      id: 1,
      email: "a@x.test",
      tags: ["x", "y"],
      meta: { n: 1 },
      closed_at: "2026-01-02T03:04:05+00:00",
    };
    const second = { ...first, email: "b@x.test", meta: null };
    expect(await eventsOf("on_account")).toEqual([
      {
        source: "database",
        table_schema: "public",
        table_name: "accounts",
        operation: "INSERT",
        old: null,
        new: first,
      },
      { ...commonOf("accounts"), operation: "UPDATE", old: first, new: second },
      { ...commonOf("accounts"), operation: "DELETE", old: second, new: null },
    ]);
  });
});

function commonOf(table: string) {
  return { source: "database", table_schema: "public", table_name: table };
}

describe("the role boundary around pgfn", () => {
  it("lets no role outside pgfn_writer call pgfn.record_row_event, even one that may use schema pgfn", async () => {
    const outsider = await createRole("outsider");
    // USAGE on the schema isolates the function's own EXECUTE privilege.
    await t.pool.query(`grant usage on schema pgfn to ${outsider}`);
    const error = await asRole(outsider, (c) =>
      failure(
        c.query(
          `select pgfn.record_row_event('victim', 'public', 'x', 'INSERT', null, '{"forged": true}')`,
        ),
      ),
    );
    expect(error.code).toBe(INSUFFICIENT_PRIVILEGE);
    expect(error.message).toBe("permission denied for function record_row_event");
    expect(await eventsOf("victim")).toEqual([]);
  });

  it("lets a member of pgfn_writer record events only from a trigger, and reach nothing else in pgfn", async () => {
    const writer = await createRole("member");
    await t.pool.query(`
      grant pgfn_writer to ${writer};
      insert into pgfn.functions (name, wasm, wasm_sha256, env)
      values ('secretive', '\\x0061736d01000000', repeat('0', 64), '{"API_KEY": "s3cret"}');`);

    const direct = await asRole(writer, (c) =>
      failure(
        c.query(
          `select pgfn.record_row_event('victim', 'public', 'x', 'INSERT', null, '{"forged": true}')`,
        ),
      ),
    );
    expect(direct.code).toBe(INSUFFICIENT_PRIVILEGE);
    expect(direct.message).toMatch(/called only by the trigger function pgfn\.enqueue\(\)/);

    const attempts = [
      `select env from pgfn.functions`,
      `select * from pgfn.events`,
      `select * from pgfn.function_info`,
      `insert into pgfn.events (function_name, source, payload) values ('victim', 'manual', '{}')`,
      `update pgfn.functions set enabled = false`,
      `select pgfn.invoke_async('victim', '{}')`,
      `select pgfn.retry(1)`,
      `select pgfn.replay(1)`,
      `select pgfn.disable('secretive')`,
      `select pgfn.prune('0 seconds')`,
      `select pgfn.dispatch(10)`,
      `select pgfn.schedule('secretive', '* * * * *')`,
      `select * from pgfn.listener_state`,
    ];
    for (const sql of attempts) {
      const error = await asRole(writer, (c) => failure(c.query(sql)));
      expect({ sql, code: error.code }).toEqual({ sql, code: INSUFFICIENT_PRIVILEGE });
    }
    expect(await eventsOf("victim")).toEqual([]);
  });

  it("names, when attaching, the roles that may write the table but lack pgfn_writer", async () => {
    const inserter = await createRole("inserter");
    const member = await createRole("granted");
    const reader = await createRole("reader");
    await t.pool.query(`
      create table public.tickets (id int primary key, title text);
      grant insert on public.tickets to ${inserter};
      grant update (title) on public.tickets to ${member};
      grant pgfn_writer to ${member};
      grant select on public.tickets to ${reader};
      grant delete on public.tickets to public;`);
    const notices: string[] = [];
    const client = new pg.Client({ connectionString: t.url });
    client.on("notice", (n) => notices.push(n.message ?? ""));
    await client.connect();
    try {
      await client.query(`select pgfn.attach('public.tickets', 'on_ticket')`);
    } finally {
      await client.end();
    }
    expect(notices).toEqual([
      `pgfn: roles that may write public.tickets lack pgfn_writer, so their writes will fail: grant pgfn_writer to ${inserter}`,
      `pgfn: PUBLIC may write public.tickets: every role that writes it needs "grant pgfn_writer to <role>"`,
    ]);
  });
});

describe("the statement-level path (pgfn.record_row_events)", () => {
  const forged = `select pgfn.record_row_events('victim', 'public', 'x', 'INSERT', array['{"forged": true}'::jsonb])`;

  it("runs the table's casts as the writer when a DELETE statement's old rows become JSON", async () => {
    const owner = await createRole("delowner");
    await t.pool.query(`
      grant pgfn_writer to ${owner};
      create schema ${owner} authorization ${owner};`);
    await asRole(owner, (c) =>
      c.query(`
        ${escalatingCast(owner)}
        create table ${owner}.moods (id int primary key, mood ${owner}.mood);
        insert into ${owner}.moods values (1, 'a'), (2, 'a');`),
    );
    await t.pool.query(`select pgfn.attach('${owner}.moods', 'on_mood', array['DELETE'])`);
    const level = await t.pool.query(
      `select tgtype & 1 as row from pg_trigger where tgrelid = '${owner}.moods'::regclass`,
    );
    expect(level.rows).toEqual([{ row: 0 }]); // the statement-level trigger is what runs

    await asRole(owner, (c) => c.query(`delete from ${owner}.moods`));

    expect(await isSuperuser(owner)).toBe(false);
    expect((await eventsOf("on_mood")).map((e) => [e.operation, e.old, e.new])).toEqual([
      ["DELETE", { id: 1, mood: `refused as ${owner}` }, null],
      ["DELETE", { id: 2, mood: `refused as ${owner}` }, null],
    ]);
  });

  it("lets no role outside pgfn_writer call it", async () => {
    const outsider = await createRole("stmtout");
    await t.pool.query(`grant usage on schema pgfn to ${outsider}`);
    const error = await asRole(outsider, (c) => failure(c.query(forged)));
    expect(error.code).toBe(INSUFFICIENT_PRIVILEGE);
    expect(error.message).toBe("permission denied for function record_row_events");
    expect(await eventsOf("victim")).toEqual([]);
  });

  it("refuses a member of pgfn_writer outside a trigger: directly, or from a function of its own", async () => {
    const writer = await createRole("stmtmember");
    await t.pool.query(`
      grant pgfn_writer to ${writer};
      create schema ${writer} authorization ${writer};`);
    const direct = await asRole(writer, (c) => failure(c.query(forged)));
    expect(direct.code).toBe(INSUFFICIENT_PRIVILEGE);
    expect(direct.message).toMatch(/called only by the trigger function pgfn\.enqueue\(\)/);

    const wrapped = await asRole(writer, async (c) => {
      await c.query(
        `create function ${writer}.forge() returns void language sql as $f$ ${forged} $f$`,
      );
      return failure(c.query(`select ${writer}.forge()`));
    });
    expect(wrapped.code).toBe(INSUFFICIENT_PRIVILEGE);
    expect(await eventsOf("victim")).toEqual([]);
  });

  it("records, from a member's own trigger, only what a row trigger could: no UPDATE without its pairs", async () => {
    const writer = await createRole("stmtforger");
    await t.pool.query(`
      grant pgfn_writer to ${writer};
      create schema ${writer} authorization ${writer};`);
    const error = await asRole(writer, async (c) => {
      await c.query(`
        create table ${writer}.bait (id int);
        create function ${writer}.forge() returns trigger language plpgsql as $f$
        begin
          perform pgfn.record_row_events('victim', 'public', 'x', 'UPDATE', array['{"forged": true}'::jsonb]);
          return null;
        end $f$;
        create trigger forge after insert on ${writer}.bait for each statement execute function ${writer}.forge();`);
      return failure(c.query(`insert into ${writer}.bait values (1)`));
    });
    expect(error.message).toBe("pgfn.record_row_events records INSERT or DELETE rows, not UPDATE");
    expect(await eventsOf("victim")).toEqual([]);
  });
});

describe("trigger names", () => {
  // 64 characters each, the longest names pgfn allows; the same first 58.
  const prefix = "n".repeat(58);
  const first = `${prefix}_first`;
  const second = `${prefix}_other`;

  it("gives two long names sharing their first 58 characters two triggers, and detaches only one", async () => {
    expect(first).toHaveLength(64);
    await t.pool.query(`create table public.long_names (id int primary key)`);
    const names = await t.pool.query<{ a: string; b: string }>(
      `select pgfn.attach('public.long_names', $1) as a, pgfn.attach('public.long_names', $2) as b`,
      [first, second],
    );
    const { a, b } = names.rows[0]!;
    expect(a).not.toBe(b);
    expect(Buffer.byteLength(a)).toBeLessThanOrEqual(63);

    await t.pool.query(`insert into public.long_names values (1)`);
    expect(await eventsOf(first)).toHaveLength(1);
    expect(await eventsOf(second)).toHaveLength(1);

    const detached = await t.pool.query(`select pgfn.detach('public.long_names', $1) as ok`, [
      first,
    ]);
    expect(detached.rows[0].ok).toBe(true);
    await t.pool.query(`insert into public.long_names values (2)`);
    expect(await eventsOf(first)).toHaveLength(1);
    expect(await eventsOf(second)).toHaveLength(2);
  });

  it("keeps the name of a trigger whose name fits", async () => {
    await t.pool.query(`create table public.short_names (id int primary key)`);
    const fits = "f".repeat(58);
    const { rows } = await t.pool.query(
      `select pgfn.attach('public.short_names', 'short') as a, pgfn.attach('public.short_names', $1) as b`,
      [fits],
    );
    expect(rows[0]).toEqual({ a: "pgfn_short", b: `pgfn_${fits}` });
  });

  it("neither replaces nor drops a trigger of that name that sends elsewhere", async () => {
    await t.pool.query(`
      create table public.taken (id int primary key);
      create trigger pgfn_mine after insert on public.taken
        for each row execute function pgfn.enqueue('someone_else');`);
    const error = await failure(t.pool.query(`select pgfn.attach('public.taken', 'mine')`));
    expect(error.message).toBe(
      `trigger pgfn_mine on public.taken already exists and does not send rows to pgfn function mine; pgfn.attach leaves it alone: drop or rename it, or declare your own trigger with pgfn.enqueue('mine')`,
    );
    const detached = await t.pool.query(`select pgfn.detach('public.taken', 'mine') as ok`);
    expect(detached.rows[0].ok).toBe(false);
    await t.pool.query(`insert into public.taken values (1)`);
    expect(await eventsOf("someone_else")).toHaveLength(1);
  });
});
