// A real daemon runs a schedule end to end: its scheduler fires the slot, the
// listener dispatches it, the worker runs the handler, and the run is in
// pgfn.function_runs like any other, retries and dead letters included. The
// daemon's clock is the test's, moved by assignment.
import { beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("schedules_daemon");
const BASE = Date.parse("2030-01-01T00:00:00Z");
let now = BASE - 30_000;

beforeAll(async () => {
  await t.deploy("tick", { example: "echo" });
  await t.deploy("doomed", {
    // Asks for a retry until its third attempt: with two, it runs out.
    example: "flaky",
    maxAttempts: 2,
    retryBaseMs: 0,
    retryMaxMs: 0,
  });
  await t.startDaemon(
    { pollIntervalMs: 100, workerConcurrency: 2, sandboxThreads: 2, schedulerIntervalMs: 50 },
    undefined,
    { clock: () => new Date(now) },
  );
});

async function scheduleFromBase(fn: string, cron: string): Promise<void> {
  await t.pool.query(`select pgfn.schedule($1, $2)`, [fn, cron]);
  // As if created just before BASE, so that BASE is its first slot.
  await t.pool.query(`update pgfn.schedules set active_since = $2 where function_name = $1`, [
    fn,
    new Date(BASE - 30_000),
  ]);
}

describe("a scheduled function in a running daemon", () => {
  it("runs at its slot; the handler sees trigger 'schedule', the cron and the times", async () => {
    await scheduleFromBase("tick", "* * * * *");
    // The scheduler sees the schedule and sets next_run; nothing is due yet.
    const row = await waitFor(
      async () =>
        (
          await t.pool.query(
            `select next_run from pgfn.schedules where function_name = 'tick' and next_run is not null`,
          )
        ).rows[0],
      { message: "next_run filled in by the daemon's scheduler" },
    );
    expect(row.next_run).toEqual(new Date(BASE));

    now = BASE + 150;
    const run = await waitFor(
      async () =>
        (
          await t.pool.query(
            `select * from pgfn.function_runs where function_name = 'tick' and status <> 'running'`,
          )
        ).rows[0],
      { message: "the scheduled run of tick" },
    );
    expect(run.status).toBe("succeeded");
    // echo returns its input: the event the handler received.
    expect(run.result).toMatchObject({
      id: Number(run.event_id),
      attempt: 1,
      idempotency_key: Number(run.event_id),
      trigger: "schedule",
      function: "tick",
      cron: "* * * * *",
      timezone: "UTC",
      scheduled_time: "2030-01-01T00:00:00.000Z",
      actual_time: "2030-01-01T00:00:00.150Z",
      timestamp: expect.any(String),
    });
    expect(run.result).not.toHaveProperty("payload");
    const schedule = (
      await t.pool.query(`select * from pgfn.schedules where function_name = 'tick'`)
    ).rows[0];
    expect(schedule).toMatchObject({
      last_run: new Date(BASE),
      next_run: new Date(BASE + 60_000),
    });
    await t.pool.query(`select pgfn.unschedule('tick')`);
  });

  it("a failing scheduled run is retried and dead-lettered like any other", async () => {
    await scheduleFromBase("doomed", "*/5 * * * *");
    now = BASE + 5 * 60_000 + 100;
    const dead = await waitFor(
      async () =>
        (
          await t.pool.query(
            `select d.*, e.source from pgfn.dead_letters d join pgfn.events e on e.id = d.event_id
             where d.function_name = 'doomed'`,
          )
        ).rows[0],
      { message: "a dead letter for the scheduled run of doomed", timeoutMs: 15_000 },
    );
    expect(dead).toMatchObject({ source: "schedule", error_message: "Email service down" });
    const runs = (
      await t.pool.query(
        `select attempt, status, will_retry from pgfn.function_runs where event_id = $1 order by attempt`,
        [dead.event_id],
      )
    ).rows;
    expect(runs).toEqual([
      { attempt: 1, status: "failed", will_retry: true },
      { attempt: 2, status: "failed", will_retry: false },
    ]);
  });
});

describe("switching the scheduler off", () => {
  it("PGFN_SCHEDULER=false starts no scheduler; a bad value is refused by name", async () => {
    expect(loadConfig({ PGFN_SCHEDULER: "false" }).scheduler).toBe(false);
    expect(loadConfig({}).scheduler).toBe(true);
    expect(() => loadConfig({ PGFN_SCHEDULER: "maybe" })).toThrow(/PGFN_SCHEDULER/);
    const off = await t.startDaemon({ scheduler: false, listener: false, worker: false });
    try {
      expect(off.scheduler).toBeUndefined();
    } finally {
      await off.stop();
    }
  });
});
