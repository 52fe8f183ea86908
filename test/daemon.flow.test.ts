// End to end on a real Postgres: committed rows become recorded runs.
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Config } from "../src/config.js";
import type { Daemon } from "../src/daemon.js";
import { LISTENER_APPLICATION_NAME } from "../src/listener/listener.js";
import { waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("daemon_flow");
let daemon: Daemon | undefined;

async function start(overrides: Partial<Config> = {}): Promise<Daemon> {
  daemon = await t.startDaemon({ daemonId: "test-daemon", ...overrides });
  return daemon;
}

async function runsOf(fn: string) {
  const { rows } = await t.pool.query(
    `select r.*, e.new as event_new from pgfn.function_runs r join pgfn.events e on e.id = r.event_id
     where r.function_name = $1 order by r.event_id, r.attempt`,
    [fn],
  );
  return rows;
}

async function waitForRuns(fn: string, n: number, timeoutMs = 15000) {
  return waitFor(
    async () => {
      const rows = await runsOf(fn);
      return rows.filter((r) => r.status !== "running").length >= n ? rows : undefined;
    },
    { timeoutMs, message: `${n} finished runs of ${fn}` },
  );
}

beforeAll(async () => {
  await t.deploy("echo");
  await t.deploy("fail");
  await t.pool.query(`
    create table public.users (id int primary key, email text not null);
    select pgfn.attach('public.users', 'echo');
  `);
});
afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
});

describe("a committed row becomes a recorded run", () => {
  it("runs events committed while no daemon ran, once each, with the event shape of docs/design.md", async () => {
    await t.pool.query(`insert into public.users values (1, 'a@x.test'), (2, 'b@x.test')`);
    await t.pool.query(`update public.users set email = 'a2@x.test' where id = 1`);
    await t.pool.query(`delete from public.users where id = 2`);
    await start();
    const runs = await waitForRuns("echo", 4);
    expect(runs).toHaveLength(4);
    for (const run of runs) {
      expect(run).toMatchObject({
        status: "succeeded",
        attempt: 1,
        http_status: 200,
        error_code: null,
        worker_id: "test-daemon",
      });
      expect(run.duration_ms).toBeGreaterThan(0);
      expect(run.finished_at.getTime()).toBeGreaterThanOrEqual(run.started_at.getTime());
    }
    // The echo handler returns its input: the result is exactly what the handler saw.
    const [insert1, insert2, update, del] = runs.map((r) => r.result);
    expect(insert1).toEqual({
      id: Number(runs[0].event_id),
      attempt: 1,
      idempotency_key: Number(runs[0].event_id),
      trigger: "database",
      function: "echo",
      schema: "public",
      table: "users",
      operation: "INSERT",
      old: null,
      new: { id: 1, email: "a@x.test" },
      timestamp: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
    });
    expect(insert2).toMatchObject({ operation: "INSERT", new: { id: 2 } });
    expect(update).toMatchObject({
      operation: "UPDATE",
      old: { id: 1, email: "a@x.test" },
      new: { id: 1, email: "a2@x.test" },
    });
    expect(del).toMatchObject({ operation: "DELETE", old: { id: 2 }, new: null });

    const fn = await t.pool.query(
      `select last_status, last_run_at from pgfn.functions where name = 'echo'`,
    );
    expect(fn.rows[0].last_status).toBe("succeeded");
    expect(fn.rows[0].last_run_at).toBeInstanceOf(Date);
    const undispatched = await t.pool.query(
      `select count(*)::int as n from pgfn.events where dispatched_at is null`,
    );
    expect(undispatched.rows[0].n).toBe(0);
  });

  it("gives every row of a burst exactly one succeeded run, and a rolled-back transaction none", async () => {
    // Two transactions: the delete's events have a wake-up check pending
    // until commit (pgfn.wake), and TRUNCATE refuses to run under it.
    await t.pool.query(`delete from public.users`);
    await t.pool.query(`truncate pgfn.events cascade`);
    await start();
    const client = await t.pool.connect();
    try {
      await client.query("begin");
      await client.query(
        `insert into public.users select g, 'rolled@back' from generate_series(5000, 5009) g`,
      );
      await client.query("rollback");
    } finally {
      client.release();
    }
    // 50 single-row transactions and one 150-row statement.
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        t.pool.query(`insert into public.users values ($1, 'burst')`, [100 + i]),
      ),
    );
    await t.pool.query(
      `insert into public.users select g, 'multi' from generate_series(1000, 1149) g`,
    );
    const runs = await waitForRuns("echo", 200);
    expect(runs).toHaveLength(200);
    expect(runs.every((r) => r.status === "succeeded" && r.attempt === 1)).toBe(true);
    const perEvent = await t.pool.query(
      `select e.id, count(r.id)::int as n from pgfn.events e left join pgfn.function_runs r on r.event_id = e.id group by e.id having count(r.id) <> 1`,
    );
    expect(perEvent.rows).toEqual([]);
    const ids = runs.map((r) => r.result.new.id).sort((a: number, b: number) => a - b);
    expect(new Set(ids).size).toBe(200);
    expect(ids.some((id: number) => id >= 5000)).toBe(false);
  });

  it("records a failing handler as FUNCTION_ERROR / 500 with its message, and keeps serving others", async () => {
    await t.pool.query(
      `create table public.orders (id int primary key); select pgfn.attach('public.orders', 'fail', array['INSERT'])`,
    );
    await start();
    await t.pool.query(`insert into public.orders values (1)`);
    await t.pool.query(`insert into public.users values (9001, 'after-failure')`);
    const [failed] = await waitForRuns("fail", 1);
    expect(failed).toMatchObject({
      status: "failed",
      error_code: "FUNCTION_ERROR",
      http_status: 500,
      attempt: 1,
    });
    expect(failed.error_message).toContain("demo failure");
    await waitFor(
      async () =>
        (await runsOf("echo")).find((r) => r.event_new?.id === 9001 && r.status === "succeeded"),
      {
        message: "the echo run after the failure",
      },
    );
    // The row that triggered the failing handler stays committed.
    expect((await t.pool.query(`select count(*)::int as n from public.orders`)).rows[0].n).toBe(1);
  });

  it("records an event for a function that is not deployed as FUNCTION_NOT_FOUND / 404", async () => {
    await t.pool.query(
      `create table public.later (id int); select pgfn.attach('public.later', 'not_yet', array['INSERT'])`,
    );
    await start();
    await t.pool.query(`insert into public.later values (1)`);
    const [run] = await waitForRuns("not_yet", 1);
    expect(run).toMatchObject({
      status: "failed",
      error_code: "FUNCTION_NOT_FOUND",
      http_status: 404,
    });
    expect(run.error_message).toBe(
      'Function "not_yet" is not deployed. Deploy it and retry the run.',
    );
  });

  it("runs events committed while the listener's backend was killed (reconnect dispatches them)", async () => {
    // No sweep: only notifications and the reconnect can dispatch.
    const d = await start({ sweepIntervalMs: 600_000 });
    await t.pool.query(`insert into public.users values (7000, 'before-kill')`);
    await waitFor(async () =>
      (await runsOf("echo")).find((r) => r.event_new?.id === 7000 && r.status === "succeeded"),
    );

    const killed = await t.pool.query(
      `select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = $1 and datname = current_database()`,
      [LISTENER_APPLICATION_NAME],
    );
    expect(killed.rows).toEqual([{ ok: true }]);
    // Committed while the listener is down: no one hears these notifications.
    await t.pool.query(
      `insert into public.users select g, 'during-outage' from generate_series(7001, 7010) g`,
    );
    await waitFor(
      async () =>
        d.listener?.connected &&
        (
          await t.pool.query(
            `select 1 from pg_stat_activity where application_name = $1 and datname = current_database()`,
            [LISTENER_APPLICATION_NAME],
          )
        ).rowCount === 1,
      { message: "the listener to reconnect" },
    );
    await t.pool.query(`insert into public.users values (7011, 'after-reconnect')`);
    await waitFor(
      async () => {
        const done = (await runsOf("echo")).filter(
          (r) => r.event_new?.id >= 7001 && r.event_new?.id <= 7011 && r.status === "succeeded",
        );
        return done.length === 11 ? done : undefined;
      },
      { message: "the 11 events from during and after the outage" },
    );
  });
});
