// The trigger side, in SQL only: what pgfn.enqueue records, and what it refuses.
import { beforeAll, describe, expect, it } from "vitest";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("enqueue");

beforeAll(async () => {
  await t.pool.query(`
    create table public.users (id int primary key, email text not null, plan text not null default 'free');
    create trigger welcome after insert on public.users
      for each row execute function pgfn.enqueue('send_welcome_email');
    create trigger upgraded after update of plan on public.users
      for each row when (old.plan is distinct from new.plan) execute function pgfn.enqueue('on_upgrade');
    create trigger goodbye after delete on public.users
      for each row execute function pgfn.enqueue('on_delete');
  `);
});

async function events(fn: string) {
  const { rows } = await t.pool.query(
    `select function_name, source, table_schema, table_name, operation, old, new, payload, dispatched_at
     from pgfn.events where function_name = $1 order by id`,
    [fn],
  );
  return rows;
}

describe("pgfn.enqueue", () => {
  it("records one event per inserted row, multi-row statements included", async () => {
    await t.pool.query(
      `insert into public.users (id, email) values (1, 'a@x.test'), (2, 'b@x.test'), (3, 'c@x.test')`,
    );
    const rows = await events("send_welcome_email");
    expect(rows).toHaveLength(3);
    expect(rows[0]).toEqual({
      function_name: "send_welcome_email",
      source: "database",
      table_schema: "public",
      table_name: "users",
      operation: "INSERT",
      old: null,
      new: { id: 1, email: "a@x.test", plan: "free" },
      payload: null,
      dispatched_at: null,
    });
    expect(rows.map((r) => r.new.id)).toEqual([1, 2, 3]);
  });

  it("records nothing for a rolled-back transaction", async () => {
    const client = await t.pool.connect();
    try {
      await client.query("begin");
      await client.query(`insert into public.users (id, email) values (100, 'gone@x.test')`);
      await client.query("rollback");
    } finally {
      client.release();
    }
    const { rows } = await t.pool.query(
      `select count(*)::int as n from pgfn.events where new->>'id' = '100'`,
    );
    expect(rows[0].n).toBe(0);
  });

  it("records old and new for UPDATE, honouring UPDATE OF and WHEN", async () => {
    await t.pool.query(`update public.users set email = 'a2@x.test' where id = 1`); // not OF plan: no event
    await t.pool.query(`update public.users set plan = 'free' where id = 2`); // WHEN false: no event
    await t.pool.query(`update public.users set plan = 'pro' where id = 3`);
    const rows = await events("on_upgrade");
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      operation: "UPDATE",
      old: { id: 3, plan: "free" },
      new: { id: 3, plan: "pro" },
    });
  });

  it("records old and a null new for DELETE", async () => {
    await t.pool.query(`delete from public.users where id = 2`);
    const rows = await events("on_delete");
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      operation: "DELETE",
      old: { id: 2, email: "b@x.test" },
      new: null,
    });
  });

  it("sends an empty notification on pgfn_events, once per transaction", async () => {
    const listener = await t.pool.connect();
    const received: string[] = [];
    listener.on("notification", (n) => received.push(`${n.channel}:${n.payload}`));
    // Writers notify only while a daemon is registered (sql/000013): this
    // listener stands for one.
    await t.pool.query(`insert into pgfn.daemons (id) values ('enqueue-test-listener')`);
    try {
      await listener.query("listen pgfn_events");
      await t.pool.query(
        `insert into public.users (id, email) select g, g || '@bulk.test' from generate_series(10, 19) g`,
      );
      // A second transaction proves notifications arrive; identical ones within the first collapse.
      await t.pool.query(`insert into public.users (id, email) values (20, 'last@x.test')`);
      const deadline = Date.now() + 5000;
      while (received.length < 2 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 10));
      expect(received).toEqual(["pgfn_events:", "pgfn_events:"]);
    } finally {
      listener.release();
      await t.pool.query(`delete from pgfn.daemons where id = 'enqueue-test-listener'`);
    }
  });

  it("keeps rows wider than NOTIFY's 8000-byte payload limit", async () => {
    const big = "x".repeat(20000);
    await t.pool.query(`insert into public.users (id, email) values (30, $1)`, [big]);
    const { rows } = await t.pool.query(
      `select new->>'email' as email from pgfn.events where new->>'id' = '30'`,
    );
    expect(rows[0].email).toHaveLength(20000);
  });

  it("refuses a BEFORE trigger instead of silently cancelling the row", async () => {
    await t.pool.query(`create table public.wrong (id int);
      create trigger w before insert on public.wrong for each row execute function pgfn.enqueue('f')`);
    await expect(t.pool.query(`insert into public.wrong values (1)`)).rejects.toThrow(
      /must run AFTER \.\.\. FOR EACH ROW; trigger w on public\.wrong is BEFORE/,
    );
  });

  it("refuses a trigger without a valid function name", async () => {
    await t.pool.query(`create table public.noarg (id int);
      create trigger n after insert on public.noarg for each row execute function pgfn.enqueue()`);
    await expect(t.pool.query(`insert into public.noarg values (1)`)).rejects.toThrow(
      /needs one argument, the function name/,
    );
    await t.pool.query(`create table public.badarg (id int);
      create trigger b after insert on public.badarg for each row execute function pgfn.enqueue('Bad Name')`);
    await expect(t.pool.query(`insert into public.badarg values (1)`)).rejects.toThrow(
      /passed Bad Name/,
    );
  });
});

describe("pgfn.attach / pgfn.detach", () => {
  it("creates a working trigger for the given operations, and detach drops it", async () => {
    await t.pool.query(`create table public."Mixed Case" (id int primary key, v text)`);
    const { rows } = await t.pool.query(
      `select pgfn.attach('public."Mixed Case"', 'audit_fn', array['insert', 'DELETE']) as name`,
    );
    expect(rows[0].name).toBe("pgfn_audit_fn");
    await t.pool.query(`insert into public."Mixed Case" values (1, 'a')`);
    await t.pool.query(`update public."Mixed Case" set v = 'b'`); // not attached for UPDATE
    await t.pool.query(`delete from public."Mixed Case"`);
    expect((await events("audit_fn")).map((e) => e.operation)).toEqual(["INSERT", "DELETE"]);
    expect((await events("audit_fn"))[0].table_name).toBe("Mixed Case");

    // Attaching again replaces, never duplicates.
    await t.pool.query(`select pgfn.attach('public."Mixed Case"', 'audit_fn', array['INSERT'])`);
    await t.pool.query(`insert into public."Mixed Case" values (2, 'c')`);
    expect((await events("audit_fn")).filter((e) => e.operation === "INSERT")).toHaveLength(2);

    const detached = await t.pool.query(
      `select pgfn.detach('public."Mixed Case"', 'audit_fn') as d`,
    );
    expect(detached.rows[0].d).toBe(true);
    const again = await t.pool.query(`select pgfn.detach('public."Mixed Case"', 'audit_fn') as d`);
    expect(again.rows[0].d).toBe(false);
    await t.pool.query(`insert into public."Mixed Case" values (3, 'd')`);
    expect(await events("audit_fn")).toHaveLength(3);
  });

  it("refuses bad input with a message naming it", async () => {
    await expect(t.pool.query(`select pgfn.attach('public.users', 'Bad Name')`)).rejects.toThrow(
      /invalid function name 'Bad Name'/,
    );
    await expect(
      t.pool.query(`select pgfn.attach('public.users', 'f', array['TRUNCATE'])`),
    ).rejects.toThrow(/invalid operation 'TRUNCATE'/);
    await expect(
      t.pool.query(`select pgfn.attach('public.users', 'f', array[]::text[])`),
    ).rejects.toThrow(/at least one operation/);
    await expect(t.pool.query(`select pgfn.attach('public.nope', 'f')`)).rejects.toThrow(
      /relation "public.nope" does not exist/,
    );
  });
});
