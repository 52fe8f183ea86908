// NOTIFY is only a hint: an event whose notification nobody heard (sent while
// the listener was away, or never sent) is dispatched by the listener's
// reconnect and by the periodic sweep. Each test commits an event without a
// NOTIFY (pgfn.woken set, as pgfn.wake does after a transaction's first
// event) to a daemon whose dispatcher sleeps, so that only the mechanism
// under test can dispatch it.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import { LISTENER_APPLICATION_NAME } from "../src/listener/listener.js";
import {
  createTestDatabase,
  exampleWasm,
  finishedRun,
  startTestDaemon,
  waitFor,
  type TestDatabase,
} from "./helpers.js";

let t: TestDatabase;

beforeAll(async () => {
  t = await createTestDatabase("missed_notify");
  await deployFunction(createDb(t.pool), {
    name: "echo",
    wasm: await readFile(exampleWasm("echo")),
  });
});
afterAll(() => t?.drop());

/**
 * Waits until the daemon's dispatcher sleeps: its awake window (see
 * pgfn.dispatch_awake) is over, so no poll is due, and a last pass found
 * nothing. From then on only a kick (notification, reconnect, sweep) dispatches.
 */
async function dispatcherAsleep(daemon: Daemon): Promise<void> {
  await waitFor(
    async () =>
      (
        await t.pool.query(
          `select awake_until is null or awake_until < now() - interval '1 second' as asleep from pgfn.listener_state`,
        )
      ).rows[0]?.asleep,
    { message: "the dispatcher to sleep" },
  );
  await daemon.dispatcher!.kick();
}

/** Commits a manual event for echo without waking anyone; returns its id. */
async function insertSilently(payload: unknown): Promise<string> {
  const client = await t.pool.connect();
  try {
    await client.query("begin");
    await client.query("set local pgfn.woken = 'on'");
    const { rows } = await client.query<{ id: string }>(
      `insert into pgfn.events (function_name, source, payload) values ('echo', 'manual', $1) returning id`,
      [JSON.stringify(payload)],
    );
    await client.query("commit");
    return rows[0]!.id;
  } finally {
    client.release();
  }
}

const listenerBackends = async () =>
  (
    await t.pool.query<{ pid: number }>(
      `select pid from pg_stat_activity where application_name = $1 and datname = current_database()`,
      [LISTENER_APPLICATION_NAME],
    )
  ).rows.map((r) => r.pid);

it("the listener's reconnect dispatches an event whose NOTIFY it never heard", async () => {
  // No sweep: of what could dispatch the event, only the reconnect is left.
  const daemon = await startTestDaemon(t.url, { sweepIntervalMs: 600_000 });
  try {
    await dispatcherAsleep(daemon);
    const id = await insertSilently({ case: "reconnect" });
    const [pid] = await listenerBackends();
    expect(pid).toBeDefined();
    await t.pool.query(`select pg_terminate_backend($1)`, [pid]);
    await waitFor(
      async () => {
        const pids = await listenerBackends();
        return daemon.listener?.connected && pids.length === 1 && pids[0] !== pid;
      },
      { message: "the listener to reconnect" },
    );
    const run = await finishedRun(t.pool, id);
    expect(run).toMatchObject({ status: "succeeded", result: { payload: { case: "reconnect" } } });
  } finally {
    await daemon.stop();
  }
});

it("the periodic sweep dispatches an event whose NOTIFY never came", async () => {
  const daemon = await startTestDaemon(t.url, { sweepIntervalMs: 300 });
  try {
    await dispatcherAsleep(daemon);
    const id = await insertSilently({ case: "sweep" });
    const run = await finishedRun(t.pool, id);
    expect(run).toMatchObject({ status: "succeeded", result: { payload: { case: "sweep" } } });
  } finally {
    await daemon.stop();
  }
});
