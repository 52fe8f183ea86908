// Waking the listener costs a NOTIFY, and NOTIFY costs every writing
// transaction a server-wide lock at commit. While a listener is awake
// (polling because it keeps finding work) writers skip it; the listener
// sleeps again only when a poll after its awake window finds nothing.
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("wake");

beforeAll(async () => {
  await t.deploy("echo");
  await t.pool.query(
    `create table public.orders (id serial primary key, note text); select pgfn.attach('public.orders', 'echo', array['INSERT'])`,
  );
  // A role with no rights on pgfn tables (only pgfn_writer, which every
  // writer of an attached table needs): the commit-time check must still work for it.
  await t.pool.query(`
    drop role if exists pgfn_wake_writer;
    create role pgfn_wake_writer;
    grant pgfn_writer to pgfn_wake_writer;
    grant usage on schema public to pgfn_wake_writer;
    grant insert on public.orders to pgfn_wake_writer;
    grant usage on sequence public.orders_id_seq to pgfn_wake_writer;`);
});
afterAll(async () => {
  await t?.pool.query(`drop owned by pgfn_wake_writer; drop role if exists pgfn_wake_writer`);
});

/**
 * The notifications on pgfn_events that `write` sends, writing as a plain
 * role on a connection of its own; ended by a sentinel.
 */
async function notificationsOf(write: (writer: pg.Client) => Promise<void>): Promise<string[]> {
  const listener = new pg.Client({ connectionString: t.url });
  const writer = new pg.Client({ connectionString: t.url });
  await Promise.all([listener.connect(), writer.connect()]);
  const received: string[] = [];
  listener.on("notification", (n) => received.push(n.payload ?? ""));
  try {
    await listener.query("listen pgfn_events");
    await writer.query("set role pgfn_wake_writer");
    await write(writer);
    // Notifications arrive in commit order: once the sentinel is here, the
    // writes' NOTIFYs, had there been any, are here too.
    await writer.query(`select pg_notify('pgfn_events', 'sentinel')`);
    await waitFor(async () => received.includes("sentinel"), { message: "the sentinel" });
    return received.filter((p) => p !== "sentinel");
  } finally {
    await Promise.all([listener.end(), writer.end()]);
  }
}

/** The notifications that one insert by a plain role sends. */
function notificationsOfInsert(): Promise<string[]> {
  return notificationsOf(async (writer) => {
    await writer.query("begin");
    await writer.query(`insert into public.orders (note) values ('a'), ('b')`);
    await writer.query("commit");
  });
}

/**
 * Runs `use` while a daemon is registered in pgfn.daemons, as every daemon
 * is before its listener LISTENs: writers notify only then.
 */
async function withDaemonRegistered<T>(use: () => Promise<T>): Promise<T> {
  await t.pool.query(`insert into pgfn.daemons (id) values ('wake-test-listener')`);
  try {
    return await use();
  } finally {
    await t.pool.query(`delete from pgfn.daemons where id = 'wake-test-listener'`);
  }
}

it("wakes a sleeping listener with one empty notification per transaction", async () => {
  await t.pool.query(`update pgfn.listener_state set awake_until = null`);
  expect(await withDaemonRegistered(notificationsOfInsert)).toEqual([""]);
});

it("sends no NOTIFY while no daemon is registered: nobody could hear it", async () => {
  await t.pool.query(`update pgfn.listener_state set awake_until = null`);
  expect(await notificationsOfInsert()).toEqual([]);
});

it("queues the wake-up check once per transaction, again in the next one and after a savepoint took back the first", async () => {
  // The check is queued with a transaction's first event only (events_wake's
  // WHEN notes it in a transaction-local setting). Two transactions of one
  // session, the second's first event rolled back to a savepoint: each must
  // still send its notification.
  await t.pool.query(`update pgfn.listener_state set awake_until = null`);
  const notifications = await withDaemonRegistered(() =>
    notificationsOf(async (writer) => {
      await writer.query(`insert into public.orders (note) values ('first')`);
      await writer.query("begin");
      await writer.query("savepoint s");
      await writer.query(`insert into public.orders (note) values ('taken back')`);
      await writer.query("rollback to savepoint s");
      await writer.query(`insert into public.orders (note) values ('second')`);
      await writer.query("commit");
    }),
  );
  expect(notifications).toEqual(["", ""]);
});

it("skips the NOTIFY while a listener is awake", async () => {
  await t.pool.query(`update pgfn.listener_state set awake_until = now() + interval '1 hour'`);
  expect(await notificationsOfInsert()).toEqual([]);
  await t.pool.query(`update pgfn.listener_state set awake_until = null`);
});

it("runs a stream of inserts without the sweep, then sleeps and is woken again", async () => {
  // The rows of the tests above were never run: not part of this count.
  await t.pool.query(`delete from pgfn.events`);
  // No sweep: only notifications and the awake polling dispatch.
  const daemon = await t.startDaemon({ sweepIntervalMs: 600_000 });
  try {
    const succeeded = async () =>
      (
        await t.pool.query<{ n: number }>(
          `select count(*)::int as n from pgfn.function_runs r join pgfn.events e on e.id = r.event_id
           where r.status = 'succeeded' and e.table_name = 'orders'`,
        )
      ).rows[0]!.n;
    const before = await succeeded();
    for (let i = 0; i < 200; i++)
      await t.pool.query(`insert into public.orders (note) values ($1)`, [`n${i}`]);
    await waitFor(async () => (await succeeded()) === before + 200, {
      timeoutMs: 20_000,
      message: "all 200 streamed rows to run",
    });
    // The stream kept the listener awake, so most transactions skipped NOTIFY;
    // now it goes back to sleep...
    await waitFor(
      async () =>
        (
          await t.pool.query(
            `select awake_until is null or awake_until < now() - interval '1 second' as asleep from pgfn.listener_state`,
          )
        ).rows[0].asleep,
      { message: "the listener to go back to sleep" },
    );
    // ...and one more row wakes it with a NOTIFY.
    await t.pool.query(`insert into public.orders (note) values ('late')`);
    await waitFor(async () => (await succeeded()) === before + 201, {
      message: "the row inserted after the listener slept to run",
    });
  } finally {
    await daemon.stop();
  }
}, 40_000);
