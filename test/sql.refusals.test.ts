// Calls a psql user makes by mistake, refused with what happened and what to
// do instead (sql/000016_second_thoughts.sql): pgfn.attach over a trigger of
// one's own that already sends the rows, and a second pgfn.retry /
// pgfn.replay of the same event. No daemon runs here: each call is checked
// by the rows it leaves.
import { readFile } from "node:fs/promises";
import pg from "pg";
import { Logger as GraphileLogger, runMigrations } from "graphile-worker";
import { beforeAll, describe, expect, it } from "vitest";
import { SQLSTATE } from "../src/errors.js";
import { listMigrations } from "../src/migrate.js";
import { createTestDatabase, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("sql_refusals");

beforeAll(async () => {
  for (const name of ["greet", "other"]) await t.deploy(name, { example: "echo" });
});

/** The single value `select <expression> as v` returns. */
async function value<T = unknown>(expression: string, params: unknown[] = []): Promise<T> {
  const { rows } = await t.pool.query<{ v: T }>(`select ${expression} as v`, params);
  return rows[0]!.v;
}

/** The error `select <expression>` fails with. */
async function refusal(expression: string, params: unknown[] = []): Promise<pg.DatabaseError> {
  return value(expression, params).then(
    (v) => {
      throw new Error(`${expression} was accepted: ${String(v)}`);
    },
    (error: pg.DatabaseError) => error,
  );
}

/** A failed attempt of a new event of `fn`, with an open dead letter. */
async function deadLetter(fn: string): Promise<{ eventId: string; runId: string }> {
  const eventId = await value<string>(`pgfn.invoke_async($1)`, [fn]);
  const runId = await failedRun(eventId, fn);
  await t.pool.query(
    `insert into pgfn.dead_letters (event_id, function_name, last_run_id, error_code)
     values ($1, $2, $3, 'FUNCTION_ERROR')`,
    [eventId, fn, runId],
  );
  return { eventId, runId };
}

async function failedRun(eventId: string, fn: string): Promise<string> {
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, error_code, finished_at)
     values ($1, $2, 1, 'failed', 'FUNCTION_ERROR', now()) returning id`,
    [eventId, fn],
  );
  return rows[0]!.id;
}

async function events(ids: string[]) {
  return (
    await t.pool.query(
      `select id, replay_of, original_id from pgfn.events where id = any ($1) order by id`,
      [ids],
    )
  ).rows;
}

describe("pgfn.attach over a trigger of one's own", () => {
  const table = "public.users";
  const triggers = async () =>
    (
      await t.pool.query<{ tgname: string }>(
        `select tgname from pg_trigger where tgrelid = $1::regclass order by 1`,
        [table],
      )
    ).rows.map((r) => r.tgname);

  beforeAll(async () => {
    await t.pool.query(`create table users (id serial primary key, name text, email text)`);
  });

  it("refuses when that trigger sends the same operation's rows to the same function, naming it and both ways out", async () => {
    // The README's tour, as it was.
    await t.pool.query(`create trigger welcome after insert on users
      for each row execute function pgfn.enqueue('greet')`);
    for (const call of [
      `pgfn.attach('${table}', 'greet', array['INSERT'])`,
      `pgfn.attach("table" => '${table}', function => 'greet')`,
      `pgfn.attach('${table}', 'greet', array['insert', 'DELETE'])`,
    ]) {
      const error = await refusal(call);
      expect(error.code, call).toBe("42710"); // duplicate_object
      expect(error.message).toBe(
        "trigger welcome on public.users already sends its INSERT rows to pgfn function greet (it calls pgfn.enqueue('greet')); " +
          "attaching as well would record each of those rows twice. " +
          "Keep that trigger and do not attach, or drop it (drop trigger welcome on public.users) and attach again",
      );
    }
    expect(await triggers()).toEqual(["welcome"]);
    await t.pool.query(`insert into users (name) values ('Ada')`);
    expect(await value(`(select count(*)::int from pgfn.events where table_name = 'users')`)).toBe(
      1,
    );
  });

  it("names every operation both would send", async () => {
    await t.pool.query(`create trigger audit after insert or update on users
      for each row when (true) execute function pgfn.enqueue('other')`);
    const error = await refusal(`pgfn.attach('${table}', 'other')`);
    await t.pool.query(`drop trigger audit on users`);
    expect(error.message).toMatch(
      /^trigger audit on public.users already sends its INSERT and UPDATE rows to pgfn function other /,
    );
  });

  it("attaches what the trigger does not send: other operations, other functions", async () => {
    expect(await value(`pgfn.attach('${table}', 'greet', array['UPDATE', 'DELETE'])`)).toBe(
      "pgfn_greet",
    );
    expect(await value(`pgfn.attach('${table}', 'other', array['INSERT'])`)).toBe("pgfn_other");
    expect(await triggers()).toEqual([
      "pgfn_greet:delete",
      "pgfn_greet:update",
      "pgfn_other",
      "welcome",
    ]);
    // Attaching again replaces pgfn.attach's own triggers: they are no trigger of one's own.
    expect(await value(`pgfn.attach('${table}', 'greet', array['UPDATE'])`)).toBe("pgfn_greet");
    expect(await value(`pgfn.detach('${table}', 'greet')`)).toBe(true);
    expect(await value(`pgfn.detach('${table}', 'other')`)).toBe(true);
  });

  it("attaches once the trigger is dropped: one event per row", async () => {
    await t.pool.query(`drop trigger welcome on users; delete from pgfn.events`);
    expect(await value(`pgfn.attach('${table}', 'greet', array['INSERT'])`)).toBe("pgfn_greet");
    await t.pool.query(`insert into users (name) values ('Grace'), ('Linus')`);
    expect(
      (
        await t.pool.query(
          `select function_name, new ->> 'name' as name from pgfn.events order by id`,
        )
      ).rows,
    ).toEqual([
      { function_name: "greet", name: "Grace" },
      { function_name: "greet", name: "Linus" },
    ]);
    expect(await value(`pgfn.detach('${table}', 'greet')`)).toBe(true);
  });
});

describe("a second retry or replay of the same event", () => {
  it("is refused, saying as which event it ran again and when, and how to force it", async () => {
    const { eventId, runId } = await deadLetter("greet");
    const first = await value<string>(`pgfn.retry($1)`, [runId]);
    const { created_at } = (
      await t.pool.query(
        `select to_char(created_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as created_at from pgfn.events where id = $1`,
        [first],
      )
    ).rows[0];

    const byRun = await refusal(`pgfn.retry(run_id => $1)`, [runId]);
    expect(byRun.code).toBe(SQLSTATE.OBJECT_NOT_IN_PREREQUISITE_STATE);
    expect(byRun.message).toBe(
      `run ${runId} was already retried: its event ${eventId} was run again as event ${first}, created ${created_at} UTC`,
    );
    expect(byRun.hint).toBe(
      `Retrying it again runs its handler once more (with the same idempotency_key). To do so anyway: select pgfn.retry(${runId}, force => true);`,
    );
    const byEvent = await refusal(`pgfn.replay($1)`, [eventId]);
    expect(byEvent.code).toBe(SQLSTATE.OBJECT_NOT_IN_PREREQUISITE_STATE);
    expect(byEvent.message).toBe(
      `event ${eventId} was already replayed: it was run again as event ${first}, created ${created_at} UTC`,
    );
    expect(byEvent.hint).toMatch(/select pgfn\.replay\(\d+, force => true\);$/);
    expect(await events([eventId, first])).toEqual([
      { id: eventId, replay_of: null, original_id: null },
      { id: first, replay_of: eventId, original_id: eventId },
    ]);

    // Forced: one more copy of the same original.
    const forced = await value<string>(`pgfn.retry($1, force => true)`, [runId]);
    const forcedByEvent = await value<string>(`pgfn.replay($1, true)`, [eventId]);
    expect(await events([forced, forcedByEvent])).toEqual([
      { id: forced, replay_of: eventId, original_id: eventId },
      { id: forcedByEvent, replay_of: eventId, original_id: eventId },
    ]);
    // A failed replay is retried like any event; an older copy than the latest is not.
    const latestRun = await failedRun(forcedByEvent, "greet");
    const third = await value<string>(`pgfn.retry($1)`, [latestRun]);
    expect(await events([third])).toEqual([
      { id: third, replay_of: forcedByEvent, original_id: eventId },
    ]);
    expect((await refusal(`pgfn.replay($1)`, [first])).message).toMatch(
      new RegExp(`^event ${first} was already replayed: it was run again as event ${third},`),
    );
  });

  it("waits for a concurrent retry of the same event, then is refused", async () => {
    const { runId } = await deadLetter("greet");
    const a = await t.pool.connect();
    const b = await t.pool.connect();
    try {
      await a.query("begin");
      const { rows } = await a.query<{ id: string }>(`select pgfn.retry($1) as id`, [runId]);
      const second = b.query(`select pgfn.retry($1) as id`, [runId]).then(
        () => "accepted",
        (error: pg.DatabaseError) => error.message,
      );
      // b waits for a's lock on the event's replays (a row of the event's, sql/000022) until a commits.
      await waitFor(
        async () =>
          (
            await t.pool.query(
              `select 1 from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'`,
              [(b as unknown as { processID: number }).processID],
            )
          ).rowCount,
        { message: "the second retry to wait for the first" },
      );
      await a.query("commit");
      expect(await second).toMatch(
        new RegExp(
          `^run ${runId} was already retried: its event \\d+ was run again as event ${rows[0]!.id},`,
        ),
      );
    } finally {
      a.release();
      b.release();
    }
  });

  it("counts a replay made before the upgrade: events.original_id is filled in", async () => {
    const old = await createTestDatabase("sql_refusals_upgrade", { migrated: false });
    try {
      await runMigrations({ pgPool: old.pool, logger: new GraphileLogger(() => () => undefined) });
      const migrations = await listMigrations();
      const ours = migrations.find((m) => m.name.includes("second_thoughts"))!;
      for (const m of migrations) {
        if (m.id >= ours.id) break;
        await old.pool.query(await readFile(m.file, "utf8"));
      }
      // O, its replay R1, R1's replay R2, and an event of its own; and a
      // replay whose original was deleted.
      const one = async (expression: string, params: unknown[] = []) =>
        (await old.pool.query<{ v: string }>(`select ${expression} as v`, params)).rows[0]!.v;
      const o = await one(`pgfn.invoke_async('x')`);
      const r1 = await one(`pgfn.replay($1)`, [o]);
      const r2 = await one(`pgfn.replay($1)`, [r1]);
      const x = await one(`pgfn.invoke_async('x')`);
      const orphan = await one(`pgfn.invoke_async('x')`);
      const orphanReplay = await one(`pgfn.replay($1)`, [orphan]);
      await old.pool.query(`delete from pgfn.events where id = $1`, [orphan]);
      // An administrator gave pgfn.retry to one role only.
      const role = `pgfn_t_refusals_${process.pid}`;
      await old.pool.query(`create role ${role} nologin;
        revoke execute on function pgfn.retry(bigint) from public;
        grant execute on function pgfn.retry(bigint) to ${role}`);
      try {
        const text = await readFile(ours.file, "utf8");
        const acl = (signature: string) =>
          one(`(select proacl::text from pg_proc where oid = $1::regprocedure)`, [signature]);
        const before = await acl("pgfn.retry(bigint)");
        expect(before).toContain(`${role}=X/`);
        await old.pool.query(`begin; ${text}; commit`);
        expect(await acl("pgfn.retry(bigint, boolean)")).toBe(before);
        // It may run again.
        await old.pool.query(`begin; ${text}; commit`);
        expect(
          (
            await old.pool.query(
              `select id, original_id from pgfn.events where id = any ($1) order by id`,
              [[o, r1, r2, x, orphanReplay]],
            )
          ).rows,
        ).toEqual([
          { id: o, original_id: null },
          { id: r1, original_id: o },
          { id: r2, original_id: o },
          { id: x, original_id: null },
          // Its original is gone; the replay keeps its id as key.
          { id: orphanReplay, original_id: orphan },
        ]);
        await expect(one(`pgfn.replay($1)`, [o])).rejects.toThrow(
          new RegExp(`^event ${o} was already replayed: it was run again as event ${r2},`),
        );
        expect(await acl("pgfn.retry(bigint, boolean)")).toBe(before);
      } finally {
        await old.pool.query(`drop owned by ${role}; drop role ${role}`).catch(() => undefined);
      }
    } finally {
      await old.drop();
    }
  });
});

describe("pgfn.retry_dead_letters", () => {
  it("does not run an event twice: a letter of an event replayed already is resolved, pointing at that replay", async () => {
    await t.pool.query(
      `update pgfn.dead_letters set resolved_at = now() where resolved_at is null`,
    );
    const replayed = await deadLetter("other");
    const fresh = await deadLetter("other");
    const replay = await value<string>(`pgfn.replay($1)`, [replayed.eventId]);
    // A late outcome of the replayed event dead-letters it again (pgfn.dead_letter).
    const late = await failedRun(replayed.eventId, "other");
    await value(`pgfn.dead_letter($1)`, [late]);

    const notices: string[] = [];
    const client = await t.pool.connect();
    const onNotice = (n: { message?: string }) => notices.push(n.message ?? "");
    client.on("notice", onNotice);
    try {
      const { rows } = await client.query<{ v: number }>(
        `select pgfn.retry_dead_letters('other') as v`,
      );
      expect(rows[0]!.v).toBe(1);
    } finally {
      client.off("notice", onNotice);
      client.release();
    }
    expect(notices).toEqual([
      "pgfn.retry_dead_letters: 1 dead letter(s) were of events already run again by pgfn.retry or pgfn.replay; resolved, pointing at that replay (retried_event_id), not run twice. pgfn.replay(event_id, force => true) runs one once more.",
    ]);
    const letters = await t.pool.query(
      `select event_id, last_run_id, resolved_at is not null as resolved, retried_event_id
       from pgfn.dead_letters where event_id = any ($1) order by id`,
      [[replayed.eventId, fresh.eventId]],
    );
    const freshReplay = await value<string>(`(select id from pgfn.events where replay_of = $1)`, [
      fresh.eventId,
    ]);
    expect(letters.rows).toEqual([
      {
        event_id: replayed.eventId,
        last_run_id: replayed.runId,
        resolved: true,
        retried_event_id: replay,
      },
      {
        event_id: fresh.eventId,
        last_run_id: fresh.runId,
        resolved: true,
        retried_event_id: freshReplay,
      },
      { event_id: replayed.eventId, last_run_id: late, resolved: true, retried_event_id: replay },
    ]);
    expect(
      await value(`(select count(*)::int from pgfn.events where replay_of = $1)`, [
        replayed.eventId,
      ]),
    ).toBe(1);
  });
});
