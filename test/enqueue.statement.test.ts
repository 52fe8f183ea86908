// pgfn.attach's statement-level triggers (sql/000013): one call per INSERT or
// DELETE statement records every row of it, and the events are exactly what
// a hand-written per-row trigger records. UPDATE stays per row.
import { beforeAll, describe, expect, it } from "vitest";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("enqueue_statement");

beforeAll(async () => {
  // Twin tables: `attached` through pgfn.attach, `by_row` with the per-row
  // triggers a user writes by hand. Same statements, same events expected.
  await t.pool.query(`
    create table public.attached (id int primary key, email text not null, tags text[], meta jsonb);
    create table public.by_row (like public.attached including all);
    select pgfn.attach('public.attached', 'stmt_fn');
    create trigger by_row after insert or update or delete on public.by_row
      for each row execute function pgfn.enqueue('row_fn');`);
});

/** The events of `fn` in id order, without what differs between the twins by construction. */
async function eventsOf(fn: string) {
  const { rows } = await t.pool.query(
    `select source, table_schema, operation, old, new, payload, dispatched_at
     from pgfn.events where function_name = $1 order by id`,
    [fn],
  );
  return rows;
}

/** Runs each statement against both twin tables (`$t` names the table). */
async function onBoth(...statements: string[]) {
  for (const table of ["attached", "by_row"]) {
    for (const s of statements) await t.pool.query(s.replaceAll("$t", `public.${table}`));
  }
}

async function triggersOf(table: string) {
  const { rows } = await t.pool.query<{ tgname: string; level: string; event: string }>(
    `select tgname,
            case when tgtype & 1 = 1 then 'ROW' else 'STATEMENT' end as level,
            case when tgtype & 4 = 4 then 'INSERT' when tgtype & 8 = 8 then 'DELETE' else 'UPDATE' end as event
     from pg_trigger where tgrelid = $1::regclass and not tgisinternal order by tgname`,
    [table],
  );
  return rows;
}

describe("pgfn.attach on a plain table", () => {
  it("declares statement triggers for INSERT and DELETE and a row trigger for UPDATE", async () => {
    expect(await triggersOf("public.attached")).toEqual([
      { tgname: "pgfn_stmt_fn", level: "STATEMENT", event: "INSERT" },
      { tgname: "pgfn_stmt_fn:delete", level: "STATEMENT", event: "DELETE" },
      { tgname: "pgfn_stmt_fn:update", level: "ROW", event: "UPDATE" },
    ]);
  });

  it("records for INSERT, UPDATE and DELETE exactly the events a per-row trigger records, one per row, in row order", async () => {
    await onBoth(
      `insert into $t values (1, 'a@x.test', '{x,y}', '{"n": 1}')`,
      `insert into $t select g, g || '@bulk.test', null, null from generate_series(10, 19) g`,
      `update $t set email = 'u' || email, meta = '{"n": 2}' where id in (1, 10, 11)`,
      `update $t set id = id + 100 where id between 12 and 14`, // the key changes
      `delete from $t where id in (15, 16, 17, 1)`,
      `insert into $t values (20, 'c@x.test', null, null), (10, 'dup@x.test', null, null)
         on conflict (id) do update set email = excluded.email`,
      `with gone as (delete from $t where id = 18 returning *)
         insert into $t select id + 1000, email, tags, meta from gone`,
      `delete from $t`,
    );
    const attached = await eventsOf("stmt_fn");
    const byRow = await eventsOf("row_fn");
    // Per operation, the same events in the same order. Across operations of
    // one statement the order may differ (an upsert's UPDATE events, per
    // row, come before its INSERT events, per statement): see the README.
    for (const op of ["INSERT", "UPDATE", "DELETE"]) {
      expect(attached.filter((e) => e.operation === op)).toEqual(
        byRow.filter((e) => e.operation === op),
      );
    }
    expect(attached).toHaveLength(byRow.length);
    // Both are what was asked, one event per row written: 13 rows inserted
    // (1 + 10 + 1 by the upsert + 1 by the CTE), 7 updated (3 + 3 + 1 by the
    // upsert), 13 deleted (4 + 1 by the CTE + the 8 left).
    const count = (op: string) => attached.filter((e) => e.operation === op).length;
    expect([count("INSERT"), count("UPDATE"), count("DELETE")]).toEqual([13, 7, 13]);
    expect(attached.slice(1, 11).map((e) => e.new.id)).toEqual([
      10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
    ]);
    expect(attached[0]).toEqual({
      source: "database",
      table_schema: "public",
      operation: "INSERT",
      old: null,
      new: { id: 1, email: "a@x.test", tags: ["x", "y"], meta: { n: 1 } },
      payload: null,
      dispatched_at: null,
    });
    const names = await t.pool.query(
      `select distinct table_name from pgfn.events where function_name = 'stmt_fn'`,
    );
    expect(names.rows).toEqual([{ table_name: "attached" }]);
  });

  it("records nothing for a statement that changed no row", async () => {
    const before = (await eventsOf("stmt_fn")).length;
    await t.pool.query(`insert into public.attached select 1, 'x', null, null where false`);
    await t.pool.query(`delete from public.attached where id = -1`);
    expect(await eventsOf("stmt_fn")).toHaveLength(before);
  });

  it("records nothing for a rolled-back statement, transaction or savepoint, and keeps what committed", async () => {
    const before = (await eventsOf("stmt_fn")).length;
    // The statement fails on its third row, after its trigger's rows were built.
    await expect(
      t.pool.query(
        `insert into public.attached values (500, 'a', null, null), (501, 'b', null, null), (500, 'again', null, null)`,
      ),
    ).rejects.toThrow(/duplicate key/);
    const client = await t.pool.connect();
    try {
      await client.query("begin");
      await client.query(`insert into public.attached values (600, 'gone', null, null)`);
      await client.query("rollback");
      await client.query("begin");
      await client.query("savepoint s");
      await client.query(`insert into public.attached values (700, 'gone', null, null)`);
      await client.query("rollback to savepoint s");
      await client.query(`insert into public.attached values (701, 'kept', null, null)`);
      await client.query("commit");
    } finally {
      client.release();
    }
    const after = await eventsOf("stmt_fn");
    expect(after.slice(before).map((e) => e.new.id)).toEqual([701]);
  });

  it("replaces a trigger that an older pgfn.attach declared per row, and detach drops everything", async () => {
    // What pgfn.attach declared before 000013: one per-row trigger for all operations.
    await t.pool.query(`
      create table public.older (id int primary key);
      create trigger pgfn_old_fn after insert or update or delete on public.older
        for each row execute function pgfn.enqueue('old_fn');
      insert into public.older values (1);`);
    const { rows } = await t.pool.query(
      `select pgfn.attach('public.older', 'old_fn', array['INSERT', 'DELETE']) as name`,
    );
    expect(rows[0].name).toBe("pgfn_old_fn");
    expect(await triggersOf("public.older")).toEqual([
      { tgname: "pgfn_old_fn", level: "STATEMENT", event: "INSERT" },
      { tgname: "pgfn_old_fn:delete", level: "STATEMENT", event: "DELETE" },
    ]);
    await t.pool
      .query(`insert into public.older values (2), (3); update public.older set id = 4 where id = 1;
      delete from public.older where id = 4`);
    expect((await eventsOf("old_fn")).map((e) => e.operation)).toEqual([
      "INSERT",
      "INSERT",
      "INSERT",
      "DELETE",
    ]);
    const detached = await t.pool.query(`select pgfn.detach('public.older', 'old_fn') as ok`);
    expect(detached.rows[0].ok).toBe(true);
    expect(await triggersOf("public.older")).toEqual([]);
  });

  it("gives long function names distinct suffixed names within 63 bytes", async () => {
    const long = `${"s".repeat(58)}_abcde`; // 64 characters
    await t.pool.query(`create table public.long_stmt (id int primary key)`);
    await t.pool.query(`select pgfn.attach('public.long_stmt', $1)`, [long]);
    const names = (await triggersOf("public.long_stmt")).map((r) => r.tgname);
    expect(names).toHaveLength(3);
    for (const name of names) expect(Buffer.byteLength(name)).toBeLessThanOrEqual(63);
    await t.pool.query(`insert into public.long_stmt values (1); delete from public.long_stmt`);
    expect((await eventsOf(long)).map((e) => e.operation)).toEqual(["INSERT", "DELETE"]);
    expect(
      (await t.pool.query(`select pgfn.detach('public.long_stmt', $1) as ok`, [long])).rows,
    ).toEqual([{ ok: true }]);
    expect(await triggersOf("public.long_stmt")).toEqual([]);
  });
});

describe("tables where a statement trigger would miss rows", () => {
  it("keeps per-row triggers on a partitioned table, so rows written into a partition directly count", async () => {
    await t.pool.query(`
      create table public.parted (id int primary key, v text) partition by range (id);
      create table public.parted_low partition of public.parted for values from (0) to (100);
      select pgfn.attach('public.parted', 'parted_fn', array['INSERT', 'DELETE']);`);
    await t.pool.query(`insert into public.parted values (1, 'via parent')`);
    await t.pool.query(`insert into public.parted_low values (2, 'direct')`);
    await t.pool.query(`delete from public.parted_low where id = 1`);
    expect(
      (await eventsOf("parted_fn")).map((e) => `${e.operation} ${(e.new ?? e.old).id}`),
    ).toEqual(["INSERT 1", "INSERT 2", "DELETE 1"]);
    expect((await triggersOf("public.parted")).map((r) => r.level)).toEqual(["ROW", "ROW"]);
  });

  it("keeps per-row triggers on an inheritance parent and child", async () => {
    await t.pool.query(`
      create table public.base (id int, v text);
      create table public.derived () inherits (public.base);
      select pgfn.attach('public.base', 'base_fn', array['INSERT']);
      select pgfn.attach('public.derived', 'derived_fn', array['INSERT']);`);
    expect((await triggersOf("public.base")).map((r) => r.level)).toEqual(["ROW"]);
    expect((await triggersOf("public.derived")).map((r) => r.level)).toEqual(["ROW"]);
  });
});

describe("pgfn.enqueue declared by hand at statement level", () => {
  it("records the rows of a statement trigger declared as pgfn.attach declares it", async () => {
    await t.pool.query(`
      create table public.handmade_stmt (id int primary key);
      create trigger h after insert on public.handmade_stmt referencing new table as pgfn_new
        for each statement execute function pgfn.enqueue('handmade_stmt');
      insert into public.handmade_stmt select generate_series(1, 3);`);
    expect((await eventsOf("handmade_stmt")).map((e) => e.new.id)).toEqual([1, 2, 3]);
  });

  it("refuses an UPDATE statement trigger and a BEFORE one, naming the rule", async () => {
    await t.pool.query(`
      create table public.stmt_update (id int primary key);
      insert into public.stmt_update values (1);
      create trigger u after update on public.stmt_update
        referencing old table as pgfn_old new table as pgfn_new
        for each statement execute function pgfn.enqueue('f');
      create table public.stmt_before (id int primary key);
      create trigger b before insert on public.stmt_before
        for each statement execute function pgfn.enqueue('f');`);
    await expect(t.pool.query(`update public.stmt_update set id = 2`)).rejects.toThrow(
      /must run AFTER \.\.\. FOR EACH ROW; trigger u on public\.stmt_update is AFTER UPDATE \.\.\. FOR EACH STATEMENT/,
    );
    await expect(t.pool.query(`insert into public.stmt_before values (1)`)).rejects.toThrow(
      /must run AFTER \.\.\. FOR EACH ROW; trigger b on public\.stmt_before is BEFORE INSERT/,
    );
  });
});
