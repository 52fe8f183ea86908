// The watchdog's own case: a handler whose daemon dies under it (SIGKILL
// here) on the event's last attempt. The reaper, not the daemon, makes the
// dead letter, and the function's on_error still hears of it, once, with
// the event that caused it (sql/000023_on_error.sql).
import type { ChildProcess } from "node:child_process";
import { beforeAll, expect, it } from "vitest";
import { enqueueManual, finishedRun, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { killChild, PGFN_MAIN, startTs } from "./processes.js";

const t = useTestDatabase("onerror_reaped");

beforeAll(async () => {
  await t.deploy("watchdog", { example: "echo" });
  // Long enough that the run is killed, not timed out.
  await t.deploy("busy", { maxAttempts: 1, timeoutMs: 120_000, onError: "watchdog" });
});

it("a daemon killed on an event's last attempt: on_error runs once with the event, the TIMEOUT run and the error", async () => {
  let child: ChildProcess | undefined = startTs(PGFN_MAIN, ["start"], {
    env: {
      DATABASE_URL: t.url,
      PGFN_WORKER_ID: "doomed",
      PGFN_HEARTBEAT_INTERVAL_MS: "500",
      PGFN_DEAD_AFTER_MS: "600000",
      PGFN_SANDBOX_THREADS: "1",
      PGFN_WORKER_CONCURRENCY: "1",
      PGFN_LOG_LEVEL: "error",
      PGFN_HTTP_PORT: "0",
    },
  });
  try {
    const event = await enqueueManual(t.pool, "busy", { millions: 100000 });
    const runId = await waitFor(
      async () =>
        (
          await t.pool.query<{ id: string }>(
            `select id from pgfn.function_runs where event_id = $1 and worker_id = 'doomed' and status = 'running'`,
            [event],
          )
        ).rows[0]?.id,
      { timeoutMs: 120_000, message: "the doomed daemon to start the run" },
    );
    child.kill("SIGKILL");
    child = undefined;
    // Reaps the killed daemon by its free lock, and runs the watchdog.
    await t.startDaemon({ daemonId: "survivor", heartbeatIntervalMs: 500, deadAfterMs: 600_000 });

    const handlerEvent = await waitFor(
      async () =>
        (
          await t.pool.query<{ id: string }>(
            `select id from pgfn.events where source = 'error_handler' and function_name = 'watchdog'`,
          )
        ).rows[0]?.id,
      { timeoutMs: 60_000, message: "the error handler's event" },
    );
    const handled = await finishedRun(t.pool, handlerEvent, 30_000);
    expect(handled.status).toBe("succeeded");
    // The watchdog (an echo) got the event as busy's handler did, the
    // abandoned run and its error.
    expect(handled.result).toMatchObject({
      trigger: "error_handler",
      function: "watchdog",
      payload: {
        event: {
          id: Number(event),
          attempt: 1,
          idempotency_key: Number(event),
          trigger: "manual",
          function: "busy",
          payload: { millions: 100000 },
        },
        run: {
          id: Number(runId),
          attempt: 1,
          status: "abandoned",
          error_code: "TIMEOUT",
          http_status: 504,
        },
        error: {
          code: "TIMEOUT",
          message: expect.stringMatching(/daemon doomed .*stopped heartbeating/),
        },
      },
    });
    const dead = await t.pool.query(`select error_code, last_run_id from pgfn.dead_letters`);
    expect(dead.rows).toEqual([{ error_code: "TIMEOUT", last_run_id: runId }]);
    // Once: one error handler's event in all, and it ran once.
    const events = await t.pool.query(
      `select e.id, count(r.id)::int as runs from pgfn.events e
       left join pgfn.function_runs r on r.event_id = e.id
       where e.source = 'error_handler' group by e.id`,
    );
    expect(events.rows).toEqual([{ id: handlerEvent, runs: 1 }]);
  } finally {
    if (child) await killChild(child);
  }
}, 300_000);
