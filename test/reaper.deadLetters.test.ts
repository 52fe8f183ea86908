// A daemon that died mid-run is reaped by a live one: its running attempts
// are abandoned, and retried while the function's max_attempts allows, by
// their jobs or, when a job is gone, by a retry job the reaper adds. The
// attempt that was the event's last becomes a dead letter, not a loss.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import {
  createTestDatabase,
  enqueueManual,
  exampleWasm,
  startTestDaemon,
  type TestDatabase,
  waitFor,
} from "./helpers.js";

let t: TestDatabase;

beforeAll(async () => {
  t = await createTestDatabase("reaper_dead_letters");
  await deployFunction(createDb(t.pool), {
    name: "busy",
    wasm: await readFile(exampleWasm("busy")),
    maxAttempts: 2,
  });
});
afterAll(() => t?.drop());

/**
 * An attempt the dead daemon `daemonId` was running, as its job left it:
 * the event dispatched, its job (due later, so nothing runs it here) and a
 * `running` run of that job.
 */
async function runningAttempt(daemonId: string, attempt: number) {
  const eventId = await enqueueManual(t.pool, "busy", { attempt });
  await t.pool.query(`update pgfn.events set dispatched_at = now() where id = $1`, [eventId]);
  const job = await t.pool.query<{ id: string }>(
    `select id from graphile_worker.add_job('pgfn_run', json_build_object('event_id', $1::bigint),
       run_at => now() + interval '1 hour', job_key => $2)`,
    [eventId, `pgfn:retry:${eventId}:${attempt}`],
  );
  const jobId = job.rows[0]!.id;
  const run = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, worker_id, job_id)
     values ($1, 'busy', $2, 'running', $3, $4) returning id`,
    [eventId, attempt, daemonId, jobId],
  );
  return { eventId, jobId, runId: run.rows[0]!.id };
}

it("dead-letters the abandoned attempt that was the event's last, and retries the one that was not", async () => {
  // Silent for an hour, no liveness lock: dead by any measure.
  await t.pool.query(
    `insert into pgfn.daemons (id, heartbeat_at, holds_lock) values ('gone', now() - interval '1 hour', false)`,
  );
  const last = await runningAttempt("gone", 2);
  const first = await runningAttempt("gone", 1);

  // A daemon reaps at start whatever died while none ran.
  const daemon = await startTestDaemon(t.url, {
    listener: false,
    worker: false,
    scheduler: false,
    sandboxThreads: 1,
  });
  await daemon.stop();

  const runs = await t.pool.query(
    `select id, status, error_code, will_retry, error_message from pgfn.function_runs where id = any($1::bigint[]) order by attempt desc`,
    [[last.runId, first.runId]],
  );
  expect(runs.rows).toEqual([
    expect.objectContaining({
      id: last.runId,
      status: "abandoned",
      error_code: "TIMEOUT",
      will_retry: false,
    }),
    expect.objectContaining({
      id: first.runId,
      status: "abandoned",
      error_code: "TIMEOUT",
      will_retry: true,
    }),
  ]);
  expect(runs.rows[0].error_message).toMatch(/daemon gone .*stopped heartbeating/);

  const dead = await t.pool.query(
    `select event_id, last_run_id, error_code, resolved_at from pgfn.dead_letters order by event_id`,
  );
  expect(dead.rows).toEqual([
    { event_id: last.eventId, last_run_id: last.runId, error_code: "TIMEOUT", resolved_at: null },
  ]);
  // The last attempt's job is done with; the other's stays for its retry.
  const jobs = await t.pool.query<{ id: string }>(
    `select id from graphile_worker.jobs where id = any($1::bigint[])`,
    [[last.jobId, first.jobId]],
  );
  expect(jobs.rows.map((r) => r.id)).toEqual([first.jobId]);
  expect((await t.pool.query(`select id from pgfn.daemons`)).rows).toEqual([]);
});

it("runs again, as its next attempt, the event of a dead daemon's attempt whose job is gone", async () => {
  await t.pool.query(
    `insert into pgfn.daemons (id, heartbeat_at, holds_lock) values ('vanished', now() - interval '1 hour', false)`,
  );
  // Its job completed without it, or was removed by hand: nothing left to
  // release, so only a job the reaper adds runs the event again.
  const eventId = await enqueueManual(t.pool, "busy", { millions: 0 });
  const { rows } = await t.pool.query<{ id: string }>(
    `with gone as (
       select id from graphile_worker.complete_jobs(
         array[(graphile_worker.add_job('not_pgfn', '{}')).id])
     ), _ as (update pgfn.events set dispatched_at = now() where id = $1)
     insert into pgfn.function_runs (event_id, function_name, attempt, status, worker_id, job_id)
     select $1, 'busy', 1, 'running', 'vanished', gone.id from gone returning id`,
    [eventId],
  );
  const runId = rows[0]!.id;

  const daemon = await startTestDaemon(t.url, {
    listener: false,
    scheduler: false,
    sandboxThreads: 1,
  });
  try {
    const next = await waitFor(
      async () =>
        (
          await t.pool.query(
            `select attempt, status from pgfn.function_runs
             where event_id = $1 and attempt = 2 and status <> 'running'`,
            [eventId],
          )
        ).rows[0],
      { timeoutMs: 30_000, message: "the event's second attempt to finish" },
    );
    expect(next).toEqual({ attempt: 2, status: "succeeded" });
  } finally {
    await daemon.stop();
  }
  const first = await t.pool.query(
    `select status, error_code, will_retry, error_message from pgfn.function_runs where id = $1`,
    [runId],
  );
  expect(first.rows).toEqual([
    {
      status: "abandoned",
      error_code: "TIMEOUT",
      will_retry: true,
      error_message:
        "The daemon vanished running this attempt stopped heartbeating; it was abandoned, and as no job was left to run its event, attempt 2 runs it again.",
    },
  ]);
  expect(
    (await t.pool.query(`select 1 from pgfn.dead_letters where event_id = $1`, [eventId])).rows,
  ).toEqual([]);
});
