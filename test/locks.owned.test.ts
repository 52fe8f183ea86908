// pgfn takes turns on its own rows, not on advisory locks (sql/000022): any
// role may take any advisory key, a handler's db_role with no privilege on
// pgfn included, and the keys pgfn took were predictable (and shown to all
// in pg_locks). Holding one stopped every admission of a function. Here a
// role with no grants on pgfn holds the old keys and tries pgfn's rows, and
// the runs and replays go on; pgfn's own starts and replays still take
// turns with each other.
import { readFile } from "node:fs/promises";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPool } from "../src/db/pool.js";
import { silentLogger } from "../src/logger.js";
import { migrate } from "../src/migrate.js";
import {
  createTestDatabase,
  createTestRoles,
  enqueueManual,
  finishedRun,
  waitFor,
  type TestRoles,
} from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("owned_locks");
let roles: TestRoles;
let nobody: pg.Client;

/** A session of the database as `user` (a test role: its password is in the pgpass file). */
async function connectAs(user: string, databaseUrl = t.url): Promise<pg.Client> {
  const line = (await readFile(roles.pgpassFile, "utf8"))
    .split("\n")
    .find((l) => l.split(":")[3] === user);
  const url = new URL(databaseUrl);
  url.username = user;
  url.password = line!.split(":")[4]!;
  const client = new pg.Client({ connectionString: url.href });
  await client.connect();
  const { rows } = await client.query("select current_user as who");
  expect(rows[0].who).toBe(user);
  return client;
}

/** Another session as the test's superuser, for what pgfn's own callers do at once. */
async function session(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: t.url });
  await client.connect();
  return client;
}

/** An event nobody dispatches: the test starts it itself. */
async function undispatchedEvent(fn: string): Promise<string> {
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.events (function_name, source, payload, dispatched_at)
     values ($1, 'manual', '{}', now()) returning id`,
    [fn],
  );
  return rows[0]!.id;
}

/** Waits until `client`'s backend waits for a lock (heavyweight: a row's, a table's, an advisory one). */
async function waitsForLock(client: pg.Client): Promise<void> {
  const pid = (client as unknown as { processID: number }).processID;
  await waitFor(
    async () =>
      (
        await t.pool.query(
          `select 1 from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'`,
          [pid],
        )
      ).rowCount,
    { message: `session ${pid} to wait for a lock` },
  );
}

beforeAll(async () => {
  await t.deploy("victim", { example: "echo", maxConcurrency: 2 });
  await t.deploy("victim_ordered", { example: "echo" });
  await t.deploy("one_at_a_time", { example: "echo", maxConcurrency: 1 });
  await t.pool.query(
    `update pgfn.functions set ordering = 'function' where name = 'victim_ordered'`,
  );
  roles = await createTestRoles();
  nobody = await connectAs(await roles.create("nobody"));
});
afterAll(async () => {
  await nobody?.end();
  // It owns nothing and was granted nothing: it goes before its database does.
  await roles?.drop();
});

describe("a role without privileges on pgfn", () => {
  beforeAll(async () => {
    await t.startDaemon({ pollIntervalMs: 100 });
  });

  it.each(["victim", "victim_ordered"])(
    "holding the old admission key of %s holds up none of its runs",
    async (fn) => {
      await nobody.query("begin");
      try {
        await nobody.query(
          `select pg_advisory_xact_lock(hashtextextended('pgfn:concurrency:' || $1, 0))`,
          [fn],
        );
        const run = await finishedRun(t.pool, await enqueueManual(t.pool, fn, { n: 1 }), 15_000);
        expect(run.status).toBe("succeeded");
        // The run finished while the key was still held.
        const { rows } = await nobody.query(
          `select count(*)::int as n from pg_locks
           where locktype = 'advisory' and pid = pg_backend_pid() and granted`,
        );
        expect(rows[0].n).toBe(1);
      } finally {
        await nobody.query("rollback");
      }
    },
  );

  it("holding the old replay key of an event holds up no replay of it", async () => {
    const id = await undispatchedEvent("victim");
    await nobody.query("begin");
    try {
      await nobody.query(
        `select pg_advisory_xact_lock(hashtextextended('pgfn:replay:' || $1, 0))`,
        [id],
      );
      const client = await session();
      try {
        // A deadline, not a measurement: with the old lock it waits for ever.
        await client.query("set lock_timeout = '10s'");
        const { rows } = await client.query(`select pgfn.replay($1) as id`, [id]);
        expect(rows[0].id).not.toBeNull();
      } finally {
        await client.end();
      }
    } finally {
      await nobody.query("rollback");
    }
  });

  it("may not lock the rows and tables pgfn takes turns on", async () => {
    for (const statement of [
      `select 1 from pgfn.functions where name = 'victim' for no key update`,
      `select 1 from pgfn.functions where name = 'victim' for key share`,
      `select 1 from pgfn.events for no key update`,
      `lock table pgfn.functions in access share mode`,
      `lock table pgfn.migrations in access share mode`,
    ]) {
      await nobody.query("begin");
      try {
        await expect(nobody.query(statement), statement).rejects.toMatchObject({ code: "42501" });
      } finally {
        await nobody.query("rollback");
      }
    }
  });
});

describe("pgfn's own callers still take turns", () => {
  it("a start waits for the start before it to commit, and counts it against max_concurrency", async () => {
    const [e1, e2] = [
      await undispatchedEvent("one_at_a_time"),
      await undispatchedEvent("one_at_a_time"),
    ];
    const first = await session();
    const second = await session();
    try {
      await first.query("begin");
      const { rows } = await first.query(`select * from pgfn.begin_run($1, 'test', null)`, [e1]);
      expect(rows[0]).toMatchObject({ refused: null });
      const started = second.query(`select * from pgfn.begin_run($1, 'test', null)`, [e2]);
      await waitsForLock(second);
      await first.query("commit");
      expect((await started).rows[0]).toMatchObject({ run_id: null, refused: "CONCURRENCY_LIMIT" });
    } finally {
      await first.end();
      await second.end();
    }
  });

  it("a replay waits for a replay of the same event to commit, then refuses to run it twice", async () => {
    const id = await undispatchedEvent("victim");
    await secondReplayRefused(id);
  });

  it("replays of an event whose original was pruned take turns on the oldest event left", async () => {
    const original = await undispatchedEvent("victim");
    const { rows } = await t.pool.query<{ id: string }>(`select pgfn.replay($1) as id`, [original]);
    const copy = rows[0]!.id;
    await t.pool.query(`update pgfn.events set dispatched_at = now() where id = $1`, [copy]);
    await t.pool.query(`delete from pgfn.events where id = $1`, [original]);
    await secondReplayRefused(copy);
  });
});

describe("migrate", () => {
  /** migrate, or an error past a deadline (with an advisory lock of old it waited for ever). */
  async function migrateWithin(pool: pg.Pool, ms: number) {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`migrate took over ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([migrate(pool), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  it("is not held up by a role without privileges holding the old migrator key", async () => {
    const fresh = await createTestDatabase("owned_locks_mig", { migrated: false });
    const squatter = await connectAs(await roles.create("squatter"), fresh.url);
    try {
      // "pgfn" in ASCII: the session advisory lock every migrator took.
      await squatter.query("select pg_advisory_lock(x'7067666e'::bigint)");
      const first = await migrateWithin(fresh.pool, 20_000);
      expect(first.applied.length).toBeGreaterThan(0);
      expect(await migrateWithin(fresh.pool, 20_000)).toMatchObject({ applied: [] });
      await expect(
        squatter.query("begin; lock table pgfn.migrations in share update exclusive mode"),
      ).rejects.toMatchObject({ code: "42501" });
    } finally {
      await squatter.end();
      await fresh.drop();
    }
  });

  it("waits while another migrator holds pgfn.migrations", async () => {
    const other = await session();
    try {
      await other.query("begin");
      await other.query("lock table pgfn.migrations in share update exclusive mode");
      let done = false;
      const migrating = migrate(t.pool).finally(() => (done = true));
      await waitFor(
        async () =>
          (
            await t.pool.query(
              `select 1 from pg_locks l join pg_class c on c.oid = l.relation
               where c.relname = 'migrations' and c.relnamespace = 'pgfn'::regnamespace
                 and l.mode = 'ShareUpdateExclusiveLock' and not l.granted`,
            )
          ).rowCount,
        { message: "migrate to wait for the lock on pgfn.migrations" },
      );
      expect(done).toBe(false);
      await other.query("commit");
      expect(await migrating).toMatchObject({ applied: [] });
    } finally {
      await other.end();
    }
  });

  it("upgrading a table from before checksums, queues nothing that holds up the inserts of the migrator under way", async () => {
    const fresh = await createTestDatabase("owned_locks_upgrade", { migrated: false });
    const other = new pg.Client({ connectionString: fresh.url });
    await other.connect();
    try {
      await migrate(fresh.pool);
      await fresh.pool.query("alter table pgfn.migrations drop column checksum");
      // `other` stands for a migrator under way: it holds the lock, and its
      // second connection (here: fresh.pool) will write to the table.
      await other.query("begin");
      await other.query("lock table pgfn.migrations in share update exclusive mode");
      const upgrading = createPool(fresh.url, 2, silentLogger());
      try {
        const migrating = migrate(upgrading);
        await waitFor(
          async () =>
            (
              await fresh.pool.query(
                `select 1 from pg_locks l join pg_class c on c.oid = l.relation
                 where c.relname = 'migrations' and c.relnamespace = 'pgfn'::regnamespace
                   and not l.granted`,
              )
            ).rowCount,
          { message: "the second migrate to wait for pgfn.migrations" },
        );
        // With an ALTER queued for ACCESS EXCLUSIVE, this insert would wait
        // behind it, and the ALTER for `other`, which waits for the insert.
        const writer = await fresh.pool.connect();
        try {
          await writer.query("begin");
          await writer.query("set local lock_timeout = '10s'");
          await writer.query("insert into pgfn.migrations (id, name) values (999999, 'probe')");
          await writer.query("rollback");
        } finally {
          writer.release();
        }
        await other.query("commit");
        expect(await migrating).toMatchObject({ applied: [] });
      } finally {
        await upgrading.end();
      }
    } finally {
      await other.end();
      await fresh.drop();
    }
  });
});

/** Two sessions replay event `id`: the second waits for the first to commit, then is refused. */
async function secondReplayRefused(id: string): Promise<void> {
  const first = await session();
  const second = await session();
  try {
    await first.query("begin");
    await first.query(`select pgfn.replay($1)`, [id]);
    const again = second.query(`select pgfn.replay($1)`, [id]).then(
      () => undefined,
      (error: unknown) => error,
    );
    await waitsForLock(second);
    await first.query("commit");
    expect(await again).toMatchObject({ message: expect.stringMatching(/already replayed/) });
  } finally {
    await first.end();
    await second.end();
  }
}
