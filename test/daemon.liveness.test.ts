// A daemon killed outright is reaped as soon as its liveness lock is free
// and a couple of its beats are missing, long before its heartbeat is
// PGFN_DEAD_AFTER_MS old (sql/000011_batch_jobs.sql, src/worker/heartbeat.ts).
import type { ChildProcess } from "node:child_process";
import pg from "pg";
import { beforeAll, expect, it } from "vitest";
import { enqueueManual, waitFor, type WaitForOptions } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { killChild, PGFN_MAIN, startTs } from "./processes.js";

const t = useTestDatabase("daemon_liveness");

beforeAll(async () => {
  await t.deploy("busy");
});

/** A daemon row as a daemon that beat `ageS` seconds ago left it, with one running attempt. */
async function fakeDaemon(id: string, ageS: number, holdsLock: boolean): Promise<string> {
  await t.pool.query(
    `insert into pgfn.daemons (id, heartbeat_at, holds_lock) values ($1, now() - make_interval(secs => $2), $3)`,
    [id, ageS, holdsLock],
  );
  const event = await enqueueManual(t.pool, "busy", {});
  await t.pool.query(`update pgfn.events set dispatched_at = now() where id = $1`, [event]);
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, worker_id)
     values ($1, 'busy', 1, 'running', $2) returning id`,
    [event, id],
  );
  return rows[0]!.id;
}

const reap = async () =>
  (
    await t.pool.query<{ n: number }>(
      `select pgfn.reap_dead_daemons(interval '60 seconds', interval '2 seconds') as n`,
    )
  ).rows[0]!.n;

const statusOf = async (runId: string) =>
  (await t.pool.query(`select status from pgfn.function_runs where id = $1`, [runId])).rows[0]
    .status;

/** Waits for daemon "doomed"'s attempt at `event` to be in `status`. */
async function waitForDoomedRun(event: string, status: string, options: WaitForOptions) {
  await waitFor(
    async () =>
      (
        await t.pool.query(
          `select 1 from pgfn.function_runs where event_id = $1 and worker_id = 'doomed' and status = $2`,
          [event, status],
        )
      ).rowCount === 1,
    options,
  );
}

it("reaps a daemon whose lock is free and whose beats are missing, and only such", async () => {
  const gone = await fakeDaemon("gone", 5, true);
  // In the future: however slow this test runs, it stays within 2 s.
  const young = await fakeDaemon("young", -60, true);
  const unlocked = await fakeDaemon("no-lock", 5, false);
  const held = await fakeDaemon("held", 5, true);
  // "held" is alive: a session of its own holds its lock.
  const holder = new pg.Client({ connectionString: t.url });
  await holder.connect();
  try {
    await holder.query(`select pg_advisory_lock(pgfn.daemon_lock_key('held'))`);
    expect(await reap()).toBe(1);
    expect(await statusOf(gone)).toBe("abandoned");
    // Beat recently, never said it holds a lock, or holds it: left alone.
    expect(await statusOf(young)).toBe("running");
    expect(await statusOf(unlocked)).toBe("running");
    expect(await statusOf(held)).toBe("running");
  } finally {
    await holder.end();
  }
  // Its session ended: now it is dead too.
  expect(await reap()).toBe(1);
  expect(await statusOf(held)).toBe("abandoned");
  await t.pool.query(`delete from pgfn.daemons`);
});

it("a running daemon holds its lock; a stopped one leaves nothing", async () => {
  const daemon = await t.startDaemon({ daemonId: "live-one" });
  try {
    const { rows } = await t.pool.query(
      `select holds_lock, not pg_try_advisory_xact_lock(pgfn.daemon_lock_key(id)) as taken
       from pgfn.daemons where id = 'live-one'`,
    );
    expect(rows).toEqual([{ holds_lock: true, taken: true }]);
  } finally {
    await daemon.stop();
  }
  expect((await t.pool.query(`select 1 from pgfn.daemons`)).rowCount).toBe(0);
});

it("a SIGKILLed daemon's attempts are retried by another long before its heartbeat is stale", async () => {
  let child: ChildProcess | undefined;
  // Survives the test's connections: the other daemon must judge it by its lock.
  const env = {
    DATABASE_URL: t.url,
    PGFN_WORKER_ID: "doomed",
    PGFN_HEARTBEAT_INTERVAL_MS: "500",
    PGFN_DEAD_AFTER_MS: "600000",
    PGFN_SANDBOX_THREADS: "1",
    PGFN_WORKER_CONCURRENCY: "1",
    PGFN_LOG_LEVEL: "error",
    PGFN_HTTP_PORT: "0",
  };
  child = startTs(PGFN_MAIN, ["start"], { env });
  try {
    // A run that works long enough to be killed mid-way.
    const event = await enqueueManual(t.pool, "busy", { millions: 100000 });
    await waitForDoomedRun(event, "running", {
      timeoutMs: 120_000,
      message: "the doomed daemon to start the run",
    });
    child.kill("SIGKILL");
    child = undefined;
    const other = await t.startDaemon({
      daemonId: "survivor",
      heartbeatIntervalMs: 500,
      deadAfterMs: 600_000,
    });
    try {
      await waitForDoomedRun(event, "abandoned", {
        timeoutMs: 60_000,
        message: "the killed daemon's attempt to be abandoned",
      });
    } finally {
      await other.stop();
    }
  } finally {
    if (child) await killChild(child);
  }
}, 300_000);
