// The job contract has one owner per rule (sql/000015_job_contract.sql):
// the jobs pgfn makes (task and keys), abandoning an attempt, and the dead
// letter. The daemon (TypeScript) calls those functions; these tests check
// that the writers and readers of each rule agree, and that nobody writes
// one of the rules again on the side.
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { getFunction } from "../src/db/functions.js";
import type { ErrorHandlerEvent } from "../src/interfaces.js";
import { handlerInput } from "../src/worker/eventInput.js";
import { recordOutcome } from "../src/worker/outcome.js";
import { RUN_TASK } from "../src/worker/tasks.js";
import { useTestDatabase } from "./fixture.js";

const SRC = fileURLToPath(new URL("../src/", import.meta.url));

const t = useTestDatabase("contract");

beforeAll(async () => {
  await t.deploy("echo", { maxAttempts: 3 });
  await t.deploy("solo", { example: "echo", maxAttempts: 1 });
  await t.deploy("watched", { example: "echo", maxAttempts: 1, onError: "echo" });
});

/** A new event of `fn`; `dispatched`: as if a job had been made for it. */
async function newEvent(fn: string, options: { dispatched?: boolean; ageDays?: number } = {}) {
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.events (function_name, source, payload, created_at, dispatched_at)
     values ($1, 'manual', '{}', now() - make_interval(days => $2),
             case when $3 then now() end) returning id`,
    [fn, options.ageDays ?? 0, options.dispatched ?? true],
  );
  return rows[0]!.id;
}

/** A run row of `eventId` as a daemon leaves it. */
async function newRun(
  eventId: string,
  fields: { attempt?: number; status?: string; worker?: string; jobId?: string; error?: string },
) {
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, worker_id, job_id,
                                     error_code, error_message, finished_at)
     select e.id, e.function_name, $2, $3, $4, $5::bigint, $6, $7,
            case when $3 <> 'running' then now() end
     from pgfn.events e where e.id = $1 returning id`,
    [
      eventId,
      fields.attempt ?? 1,
      fields.status ?? "running",
      fields.worker ?? null,
      fields.jobId ?? null,
      fields.error ?? null,
      fields.error ? `${fields.error} (test)` : null,
    ],
  );
  return rows[0]!.id;
}

const jobsOf = async (eventIds: string[]) =>
  (
    await t.pool.query<{ key: string; task: string }>(
      `select key, task_identifier as task from graphile_worker.jobs
       where key ~ ('^pgfn:[a-z]+:(' || array_to_string($1::text[], '|') || ')(:|$)') order by key`,
      [eventIds],
    )
  ).rows;

const runOf = async (runId: string) =>
  (await t.pool.query(`select * from pgfn.function_runs where id = $1`, [runId])).rows[0];

/** The error handlers' events that report `eventId`'s failure (replays of them aside). */
const handlerEventsOf = async (eventId: string) =>
  (
    await t.pool.query(
      `select * from pgfn.events
       where source = 'error_handler' and payload -> 'event' ->> 'id' = $1 and replay_of is null`,
      [eventId],
    )
  ).rows;

const openDeadLetters = async (eventId: string) =>
  (
    await t.pool.query(
      `select * from pgfn.dead_letters where event_id = $1 and resolved_at is null`,
      [eventId],
    )
  ).rows;

/** The id a job had before graphile-worker completed it. */
const goneJob = async () =>
  (
    await t.pool.query<{ id: string }>(
      `select id from graphile_worker.complete_jobs(
         array[(graphile_worker.add_job('not_pgfn', '{}')).id])`,
    )
  ).rows[0]!.id;

/** `eventId`'s jobs, with their max_attempts and whether they are due. */
const jobsWithMax = async (eventId: string) =>
  (
    await t.pool.query<{ key: string; max_attempts: number; due: boolean }>(
      `select key, max_attempts, run_at <= now() as due from graphile_worker.jobs
       where key ~ ('^pgfn:[a-z]+:' || $1 || '(:|$)') order by key`,
      [eventId],
    )
  ).rows;

describe("jobs", () => {
  it("every job pgfn makes is for the task the daemon runs, under the key its readers know", async () => {
    const single = await newEvent("echo", { dispatched: false });
    await t.pool.query(`select pgfn.dispatch(100, 50)`);
    const batch = [await newEvent("echo", { dispatched: false })];
    batch.push(await newEvent("echo", { dispatched: false }));
    await t.pool.query(`select pgfn.dispatch(100, 50)`);
    const retried = await newEvent("echo");
    await t.pool.query(`select pgfn.add_retry_job($1, 2, now() + interval '1 hour')`, [retried]);
    const waiting = await newEvent("echo");
    await t.pool.query(`select pgfn.add_wait_job($1, 3600000)`, [waiting]);

    expect(await jobsOf([single, batch[0]!, retried, waiting])).toEqual(
      [
        { key: `pgfn:event:${single}`, task: RUN_TASK },
        { key: `pgfn:batch:${batch[0]}`, task: RUN_TASK },
        { key: `pgfn:retry:${retried}:2`, task: RUN_TASK },
        { key: `pgfn:wait:${waiting}`, task: RUN_TASK },
      ].sort((a, b) => (a.key < b.key ? -1 : 1)),
    );

    // The wait job's key is what pgfn.begin_run looks for: another job
    // leaves the event to it.
    const { rows } = await t.pool.query(`select refused from pgfn.begin_run($1, 'w', 1)`, [
      waiting,
    ]);
    expect(rows[0].refused).toBe("DEFERRED");
  });

  it("prune spares an event while any of its jobs is still to run, whatever kind", async () => {
    const old = { ageDays: 30 };
    const ids = {
      event: await newEvent("solo", old),
      batch: [await newEvent("solo", old), await newEvent("solo", old)],
      retry: await newEvent("solo", old),
      wait: await newEvent("solo", old),
    };
    const all = [ids.event, ...ids.batch, ids.retry, ids.wait];
    for (const id of all) await newRun(id, { status: "failed", error: "FUNCTION_ERROR" });
    await t.pool.query(
      `select graphile_worker.add_job($1, json_build_object('event_id', $2::bigint),
         run_at => now() + interval '1 hour', job_key => 'pgfn:event:' || $2)`,
      [RUN_TASK, ids.event],
    );
    await t.pool.query(
      `select graphile_worker.add_job($1, json_build_object('event_ids', $2::bigint[]),
         run_at => now() + interval '1 hour', job_key => 'pgfn:batch:' || ($2::bigint[])[1])`,
      [RUN_TASK, ids.batch],
    );
    await t.pool.query(`select pgfn.add_retry_job($1, 2, now() + interval '1 hour')`, [ids.retry]);
    await t.pool.query(`select pgfn.add_wait_job($1, 3600000)`, [ids.wait]);

    await t.pool.query(`select pgfn.prune(interval '1 day')`);
    const left = await t.pool.query(`select id from pgfn.events where id = any($1::bigint[])`, [
      all,
    ]);
    expect(left.rows.map((r) => String(r.id)).sort()).toEqual([...all].sort());

    await t.pool.query(`delete from graphile_worker._private_jobs where key like 'pgfn:%'`);
    await t.pool.query(`select pgfn.prune(interval '1 day')`);
    const gone = await t.pool.query(`select id from pgfn.events where id = any($1::bigint[])`, [
      all,
    ]);
    expect(gone.rows).toEqual([]);
  });
});

describe("abandoning an attempt", () => {
  it("ends only a running attempt: an outcome recorded meanwhile stands", async () => {
    const event = await newEvent("echo");
    const done = await newRun(event, { status: "failed", error: "FUNCTION_ERROR" });
    const { rows } = await t.pool.query(
      `select pgfn.abandon_run($1, 'INTERNAL', 'lost', true) as abandoned`,
      [done],
    );
    expect(rows[0].abandoned).toBe(false);
    expect(await runOf(done)).toMatchObject({ status: "failed", error_code: "FUNCTION_ERROR" });

    const running = await newRun(event, { attempt: 2 });
    await t.pool.query(`select pgfn.abandon_run($1, 'TIMEOUT', 'daemon gone', true)`, [running]);
    const run = await runOf(running);
    expect(run).toMatchObject({
      status: "abandoned",
      error_code: "TIMEOUT",
      http_status: 504,
      error_message: "daemon gone",
      will_retry: true,
    });
    expect(run.finished_at).not.toBeNull();
    expect(run.next_attempt_at).not.toBeNull();
    await expect(
      t.pool.query(`select pgfn.abandon_run($1, 'FUNCTION_ERROR', 'x', false)`, [running]),
    ).rejects.toThrow(/TIMEOUT or INTERNAL/);
  });

  it("a later attempt ends the ones its daemon left running before it, and no other daemon's", async () => {
    const event = await newEvent("echo");
    const mine = await newRun(event, { worker: "d1", jobId: "501" });
    const theirs = await newRun(event, { worker: "d2", jobId: "502" });
    const next = await newRun(event, { attempt: 2, worker: "d1", jobId: "501" });
    const { rows } = await t.pool.query(`select pgfn.abandon_earlier_runs($1) as n`, [next]);
    expect(rows[0].n).toBe(1);
    expect(await runOf(mine)).toMatchObject({
      status: "abandoned",
      error_code: "INTERNAL",
      http_status: 500,
      will_retry: true,
    });
    expect((await runOf(theirs)).status).toBe("running");
    expect((await runOf(next)).status).toBe("running");
  });
});

describe("an orphaned attempt (pgfn.abandon_orphaned_runs)", () => {
  /** The heartbeat's sweep for `daemon`, with no live runner and no minimum age. */
  const sweep = async (daemon: string) =>
    (
      await t.pool.query<{ n: number }>(
        `select pgfn.abandon_orphaned_runs($1, '{}', interval '0') as n`,
        [daemon],
      )
    ).rows[0]!.n;

  it("whose job is still there: abandoned, and that job runs its event again", async () => {
    // One job under its key; one whose key graphile-worker cleared (a job
    // added or removed under its key while it was locked), found by its id.
    const [keyed, keyless] = [await newEvent("echo"), await newEvent("echo")];
    const { rows } = await t.pool.query<{ keyed: string; keyless: string }>(
      `select (graphile_worker.add_job('pgfn_run', json_build_object('event_id', $1::bigint),
                 run_at => now() + interval '1 hour', job_key => 'pgfn:event:' || $1)).id as keyed,
              (graphile_worker.add_job('pgfn_run', json_build_object('event_id', $2::bigint),
                 run_at => now() + interval '1 hour')).id as keyless`,
      [keyed, keyless],
    );
    const runs = [
      await newRun(keyed, { worker: "orphan-a", jobId: rows[0]!.keyed }),
      await newRun(keyless, { worker: "orphan-a", jobId: rows[0]!.keyless }),
    ];
    expect(await sweep("orphan-a")).toBe(2);
    for (const run of runs) {
      expect(await runOf(run)).toMatchObject({
        status: "abandoned",
        error_code: "INTERNAL",
        will_retry: true,
        error_message: expect.stringMatching(/it was abandoned and its event runs again\.$/),
      });
    }
    expect(await jobsOf([keyed, keyless])).toEqual([
      { key: `pgfn:event:${keyed}`, task: RUN_TASK },
    ]);
    for (const id of [keyed, keyless]) expect(await openDeadLetters(id)).toEqual([]);
    await t.pool.query(`delete from graphile_worker._private_jobs where id = $1`, [
      rows[0]!.keyless,
    ]);
  });

  it("whose job is gone, with attempts left: a retry job starts the next attempt now", async () => {
    const event = await newEvent("echo");
    await newRun(event, { status: "failed", error: "TIMEOUT" });
    const run = await newRun(event, { attempt: 2, worker: "orphan-b", jobId: await goneJob() });
    expect(await sweep("orphan-b")).toBe(1);
    const abandoned = await runOf(run);
    expect(abandoned).toMatchObject({
      status: "abandoned",
      error_code: "INTERNAL",
      will_retry: true,
      error_message: expect.stringMatching(
        /no job was left to run its event, attempt 3 runs it again/,
      ),
    });
    expect(abandoned.next_attempt_at).not.toBeNull();
    // Attempt 3 of 3: its try, and the one that only records a dead letter (000009).
    expect(await jobsWithMax(event)).toEqual([
      { key: `pgfn:retry:${event}:3`, max_attempts: 2, due: true },
    ]);
    expect(await openDeadLetters(event)).toEqual([]);
    expect(await sweep("orphan-b")).toBe(0);
    expect(await jobsOf([event])).toHaveLength(1);

    // That job starts it, as attempt 3.
    const { rows } = await t.pool.query(
      `select b.attempt, b.refused from graphile_worker.jobs j,
         pgfn.begin_run($1, 'orphan-b2', j.id) b where j.key = $2`,
      [event, `pgfn:retry:${event}:3`],
    );
    expect(rows).toEqual([{ attempt: 3, refused: null }]);
  });

  it("whose job is gone, with no attempt left: a dead letter, reported to on_error once", async () => {
    const event = await newEvent("watched");
    const run = await newRun(event, { worker: "orphan-c", jobId: await goneJob() });
    expect(await sweep("orphan-c")).toBe(1);
    const abandoned = await runOf(run);
    expect(abandoned).toMatchObject({
      status: "abandoned",
      error_code: "INTERNAL",
      will_retry: false,
      next_attempt_at: null,
      error_message: expect.stringMatching(
        /last attempt its function allows \(max_attempts 1\) and no job was left to run its event, the event is a dead letter/,
      ),
    });
    expect(await openDeadLetters(event)).toEqual([
      expect.objectContaining({
        last_run_id: run,
        error_code: "INTERNAL",
        error_message: abandoned.error_message,
      }),
    ]);
    expect(await jobsOf([event])).toEqual([]);
    expect(await sweep("orphan-c")).toBe(0);
    const reported = await handlerEventsOf(event);
    expect(reported).toHaveLength(1);
    expect(reported[0]).toMatchObject({ function_name: "echo" });
  });

  it("whose job is gone while another job runs its event, or a later attempt did: nothing added", async () => {
    const waiting = await newEvent("echo");
    const inBatch = [await newEvent("echo"), await newEvent("echo")];
    const later = await newEvent("echo");
    const runs = {
      waiting: await newRun(waiting, { worker: "orphan-d", jobId: await goneJob() }),
      inBatch: await newRun(inBatch[1]!, { worker: "orphan-d", jobId: await goneJob() }),
      later: await newRun(later, { worker: "orphan-d", jobId: await goneJob() }),
    };
    // The job that found it refused left it a wait job (an ordered
    // function's turn, max_concurrency), and completed.
    await t.pool.query(`select pgfn.add_wait_job($1, 3600000)`, [waiting]);
    await t.pool.query(
      `select graphile_worker.add_job($1, json_build_object('event_ids', $2::bigint[]),
         run_at => now() + interval '1 hour', job_key => 'pgfn:batch:' || ($2::bigint[])[1])`,
      [RUN_TASK, inBatch],
    );
    await newRun(later, { attempt: 2, status: "succeeded", worker: "orphan-d2" });

    expect(await sweep("orphan-d")).toBe(3);
    for (const run of [runs.waiting, runs.inBatch]) {
      expect(await runOf(run)).toMatchObject({
        status: "abandoned",
        will_retry: true,
        error_message: expect.stringMatching(/its event runs again\.$/),
      });
    }
    expect(await runOf(runs.later)).toMatchObject({
      status: "abandoned",
      will_retry: true,
      error_message: expect.stringMatching(/its event ran again as attempt 2\.$/),
    });
    expect(await jobsOf([waiting, ...inBatch, later])).toEqual([
      { key: `pgfn:batch:${inBatch[0]}`, task: RUN_TASK },
      { key: `pgfn:wait:${waiting}`, task: RUN_TASK },
    ]);
    for (const id of [waiting, ...inBatch, later]) expect(await openDeadLetters(id)).toEqual([]);
  });

  it("whose job is out of tries and held by nobody counts as gone", async () => {
    const event = await newEvent("solo");
    const { rows } = await t.pool.query<{ id: string }>(
      `select (graphile_worker.add_job('pgfn_run', json_build_object('event_id', $1::bigint),
         max_attempts => 2, job_key => 'pgfn:event:' || $1)).id`,
      [event],
    );
    const job = rows[0]!.id;
    await t.pool.query(`update graphile_worker._private_jobs set attempts = 2 where id = $1`, [
      job,
    ]);
    const run = await newRun(event, { worker: "orphan-e", jobId: job });
    expect(await sweep("orphan-e")).toBe(1);
    expect(await runOf(run)).toMatchObject({ status: "abandoned", will_retry: false });
    expect(await openDeadLetters(event)).toHaveLength(1);
    await t.pool.query(`delete from graphile_worker._private_jobs where id = $1`, [job]);
  });
});

describe("a dead daemon's attempt (pgfn.reap_dead_daemons)", () => {
  /** A daemon silent for an hour: dead by any measure. */
  const deadDaemon = (id: string, workerIds: string[] = []) =>
    t.pool.query(
      `insert into pgfn.daemons (id, heartbeat_at, graphile_worker_ids)
       values ($1, now() - interval '1 hour', $2)`,
      [id, workerIds],
    );
  /** A live daemon's reaping, as its heartbeat does it. */
  const reap = async () =>
    (
      await t.pool.query<{ n: number }>(
        `select pgfn.reap_dead_daemons(interval '60 seconds', interval '2 seconds') as n`,
      )
    ).rows[0]!.n;

  it("whose job is gone, with attempts left: a retry job starts the next attempt now", async () => {
    await deadDaemon("reaped-a");
    const event = await newEvent("echo");
    await newRun(event, { status: "failed", error: "TIMEOUT" });
    const run = await newRun(event, { attempt: 2, worker: "reaped-a", jobId: await goneJob() });
    // A job out of tries that nobody holds is never fetched again: gone too.
    const spent = await newEvent("echo");
    const { rows: spentJob } = await t.pool.query<{ id: string }>(
      `select (graphile_worker.add_job('pgfn_run', json_build_object('event_id', $1::bigint),
         max_attempts => 2, job_key => 'pgfn:event:' || $1)).id`,
      [spent],
    );
    await t.pool.query(`update graphile_worker._private_jobs set attempts = 2 where id = $1`, [
      spentJob[0]!.id,
    ]);
    const spentRun = await newRun(spent, { worker: "reaped-a", jobId: spentJob[0]!.id });

    expect(await reap()).toBe(1);
    for (const [id, next] of [
      [run, 3],
      [spentRun, 2],
    ] as const) {
      const abandoned = await runOf(id);
      expect(abandoned).toMatchObject({
        status: "abandoned",
        error_code: "TIMEOUT",
        will_retry: true,
        error_message: expect.stringMatching(
          new RegExp(
            `^The daemon reaped-a running this attempt stopped heartbeating; it was abandoned, and as no job was left to run its event, attempt ${next} runs it again\\.$`,
          ),
        ),
      });
      expect(abandoned.next_attempt_at).not.toBeNull();
    }
    // Attempt 3 of 3: its try, and the one that only records a dead letter (000009).
    expect(await jobsWithMax(event)).toEqual([
      { key: `pgfn:retry:${event}:3`, max_attempts: 2, due: true },
    ]);
    expect(await jobsWithMax(spent)).toEqual([
      { key: `pgfn:event:${spent}`, max_attempts: 2, due: true },
      { key: `pgfn:retry:${spent}:2`, max_attempts: 3, due: true },
    ]);
    for (const id of [event, spent]) expect(await openDeadLetters(id)).toEqual([]);

    // That job starts it, as attempt 3.
    const { rows } = await t.pool.query(
      `select b.attempt, b.refused from graphile_worker.jobs j,
         pgfn.begin_run($1, 'reaped-a2', j.id) b where j.key = $2`,
      [event, `pgfn:retry:${event}:3`],
    );
    expect(rows).toEqual([{ attempt: 3, refused: null }]);
    await t.pool.query(`select graphile_worker.remove_job(k) from unnest($1::text[]) k`, [
      [`pgfn:retry:${event}:3`, `pgfn:event:${spent}`, `pgfn:retry:${spent}:2`],
    ]);
  });

  it("whose job is gone, on its last attempt or a synchronous invoke: one dead letter each, reported to on_error once", async () => {
    await deadDaemon("reaped-b");
    const [last, sync] = [await newEvent("watched"), await newEvent("watched")];
    const runs = {
      last: await newRun(last, { worker: "reaped-b", jobId: await goneJob() }),
      sync: await newRun(sync, { worker: "reaped-b" }),
    };
    expect(await reap()).toBe(1);
    const messages = {
      last: /stopped heartbeating; it was abandoned, and as it was the last attempt its function allows \(max_attempts 1\), the event is a dead letter\.$/,
      sync: /stopped heartbeating; it was abandoned, and as a synchronous invoke is not run again, the event is a dead letter\.$/,
    };
    for (const [name, event] of [
      ["last", last],
      ["sync", sync],
    ] as const) {
      const abandoned = await runOf(runs[name]);
      expect(abandoned).toMatchObject({
        status: "abandoned",
        error_code: "TIMEOUT",
        will_retry: false,
        next_attempt_at: null,
        error_message: expect.stringMatching(messages[name]),
      });
      expect(await openDeadLetters(event)).toEqual([
        expect.objectContaining({
          last_run_id: runs[name],
          error_code: "TIMEOUT",
          error_message: abandoned.error_message,
        }),
      ]);
      expect(await jobsOf([event])).toEqual([]);
      const reported = await handlerEventsOf(event);
      expect(reported).toHaveLength(1);
      expect(reported[0]).toMatchObject({ function_name: "echo" });
    }
  });

  it("whose job is there, or a later attempt ran its event: released and unlocked, nothing added", async () => {
    await deadDaemon("reaped-c", ["reaped-c-worker"]);
    const [held, later] = [await newEvent("echo"), await newEvent("echo")];
    // Fetched (one try counted) and locked by the daemon's runner when it died.
    const { rows } = await t.pool.query<{ id: string }>(
      `select (graphile_worker.add_job('pgfn_run', json_build_object('event_id', $1::bigint),
         max_attempts => 4, job_key => 'pgfn:event:' || $1)).id`,
      [held],
    );
    const job = rows[0]!.id;
    await t.pool.query(
      `update graphile_worker._private_jobs
       set locked_by = 'reaped-c-worker', locked_at = now(), attempts = 1 where id = $1`,
      [job],
    );
    const runs = {
      held: await newRun(held, { worker: "reaped-c", jobId: job }),
      later: await newRun(later, { worker: "reaped-c", jobId: await goneJob() }),
    };
    await newRun(later, { attempt: 2, status: "succeeded", worker: "reaped-c2" });

    expect(await reap()).toBe(1);
    expect(await runOf(runs.held)).toMatchObject({
      status: "abandoned",
      error_code: "TIMEOUT",
      will_retry: true,
      error_message: expect.stringMatching(
        /^The daemon reaped-c running this attempt stopped heartbeating; it was abandoned and its event runs again\.$/,
      ),
    });
    expect(await runOf(runs.later)).toMatchObject({
      status: "abandoned",
      will_retry: true,
      error_message: expect.stringMatching(
        /; it was abandoned; its event ran again as attempt 2\.$/,
      ),
    });
    // The try its fetch counted given back, and free for any daemon now.
    const { rows: jobs } = await t.pool.query(
      `select key, locked_by, attempts from graphile_worker.jobs where id = $1`,
      [job],
    );
    expect(jobs).toEqual([{ key: `pgfn:event:${held}`, locked_by: null, attempts: 0 }]);
    expect(await jobsOf([held, later])).toEqual([{ key: `pgfn:event:${held}`, task: RUN_TASK }]);
    for (const id of [held, later]) expect(await openDeadLetters(id)).toEqual([]);
    await t.pool.query(`select graphile_worker.remove_job($1)`, [`pgfn:event:${held}`]);
  });

  it("releases the dead daemon's runners only, not a live daemon's that took its attempt's job since", async () => {
    await deadDaemon("reaped-d", ["reaped-d-worker"]);
    await t.pool.query(
      `insert into pgfn.daemons (id, heartbeat_at, graphile_worker_ids) values ('alive-d', now(), '{alive-d-worker}')`,
    );
    const [taken, busy] = [await newEvent("echo"), await newEvent("echo")];
    const jobIds: string[] = [];
    for (const event of [taken, busy]) {
      const { rows } = await t.pool.query<{ id: string }>(
        `select (graphile_worker.add_job('pgfn_run', json_build_object('event_id', $1::bigint),
           max_attempts => 4, job_key => 'pgfn:event:' || $1)).id`,
        [event],
      );
      jobIds.push(rows[0]!.id);
    }
    // Both jobs held by the live daemon's runner: one the dead daemon's
    // attempt still points at, one of the live daemon's own work.
    await t.pool.query(
      `update graphile_worker._private_jobs
       set locked_by = 'alive-d-worker', locked_at = now(), attempts = 1 where id = any ($1::bigint[])`,
      [jobIds],
    );
    await newRun(taken, { worker: "reaped-d", jobId: jobIds[0]! });

    expect(await reap()).toBe(1);
    const { rows } = await t.pool.query(
      `select key, locked_by from graphile_worker.jobs where id = any ($1::bigint[]) order by id`,
      [jobIds],
    );
    expect(rows).toEqual([
      { key: `pgfn:event:${taken}`, locked_by: "alive-d-worker" },
      { key: `pgfn:event:${busy}`, locked_by: "alive-d-worker" },
    ]);
    await t.pool.query(`delete from pgfn.daemons where id = 'alive-d'`);
    await t.pool.query(`select graphile_worker.remove_job(k) from unnest($1::text[]) k`, [
      [`pgfn:event:${taken}`, `pgfn:event:${busy}`],
    ]);
  });
});

describe("dead letters", () => {
  it("an event has one open dead letter, which follows its latest run", async () => {
    const event = await newEvent("echo");
    const first = await newRun(event, { status: "failed", error: "TIMEOUT" });
    const second = await newRun(event, { attempt: 2, status: "failed", error: "FUNCTION_ERROR" });

    await t.pool.query(`select pgfn.dead_letter($1)`, [first]);
    const [created] = await openDeadLetters(event);
    expect(created).toMatchObject({ last_run_id: first, error_code: "TIMEOUT" });

    // A later run replaces it: the dead letter says what its run says.
    await t.pool.query(`select pgfn.dead_letter($1)`, [second]);
    let letters = await openDeadLetters(event);
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({
      id: created.id,
      last_run_id: second,
      error_code: "FUNCTION_ERROR",
      error_message: "FUNCTION_ERROR (test)",
      // Since when the event is a dead letter.
      created_at: created.created_at,
    });

    // A late word about an earlier run changes nothing.
    await t.pool.query(`select pgfn.dead_letter($1)`, [first]);
    letters = await openDeadLetters(event);
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({ last_run_id: second, error_code: "FUNCTION_ERROR" });
  });

  it("a stalled daemon's real outcome replaces the reaper's dead letter for the same run, and on_error hears once", async () => {
    // The reaper takes the daemon for dead: its last attempt is abandoned
    // and the event dead-lettered as TIMEOUT (the reaper at max_attempts).
    await t.pool.query(
      `insert into pgfn.daemons (id, heartbeat_at) values ('stalled', now() - interval '1 hour')`,
    );
    const event = await newEvent("watched");
    const run = await newRun(event, { worker: "stalled", jobId: "601" });
    await t.pool.query(
      `select pgfn.reap_dead_daemons(interval '60 seconds', interval '2 seconds')`,
    );
    expect(await runOf(run)).toMatchObject({ status: "abandoned", error_code: "TIMEOUT" });
    const [reaped] = await openDeadLetters(event);
    expect(reaped).toMatchObject({ last_run_id: run, error_code: "TIMEOUT" });
    // The reaper's dead letter goes to on_error like any other.
    const reported = await handlerEventsOf(event);
    expect(reported).toEqual([
      expect.objectContaining({ function_name: "echo", dispatched_at: null }),
    ]);

    // Then the daemon wakes up and records what the handler did.
    const eventRow = await t.db
      .selectFrom("pgfn.events")
      .selectAll()
      .where("id", "=", event)
      .executeTakeFirstOrThrow();
    const recorded = await recordOutcome(
      t.db,
      { event: eventRow, fn: await getFunction(t.db, "watched"), attempt: 1, sync: false },
      {
        runId: run,
        functionName: "watched",
        status: "failed",
        errorCode: "FUNCTION_ERROR",
        httpStatus: 500,
        errorMessage: "the handler threw",
        logs: [],
        durationMs: 5,
      },
      { code: "FUNCTION_ERROR" },
    );
    expect(recorded).toMatchObject({ id: run, status: "failed", error_code: "FUNCTION_ERROR" });
    const letters = await openDeadLetters(event);
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({
      id: reaped.id,
      last_run_id: run,
      error_code: "FUNCTION_ERROR",
      error_message: "the handler threw",
    });
    // One dead letter, one report: a second word about it is not a second failure.
    expect((await handlerEventsOf(event)).map((e) => e.id)).toEqual([reported[0].id]);
  });

  it("a new dead letter adds one event for the function's on_error, naming the event and holding the run", async () => {
    const event = await newEvent("watched");
    const run = await newRun(event, { status: "failed", error: "MEMORY_EXCEEDED" });
    await t.pool.query(
      `update pgfn.function_runs set http_status = 507, duration_ms = 12.5 where id = $1`,
      [run],
    );
    await t.pool.query(`select pgfn.dead_letter($1)`, [run]);
    const reported = await handlerEventsOf(event);
    expect(reported).toEqual([
      expect.objectContaining({
        function_name: "echo",
        source: "error_handler",
        payload: {
          event: { id: Number(event) },
          run: {
            id: Number(run),
            attempt: 1,
            status: "failed",
            error_code: "MEMORY_EXCEEDED",
            http_status: 507,
            error_message: "MEMORY_EXCEEDED (test)",
            duration_ms: 12.5,
          },
          error: { code: "MEMORY_EXCEEDED", message: "MEMORY_EXCEEDED (test)" },
        },
      }),
    ]);
    // The same letter again (an outcome recorded twice) reports nothing more.
    await t.pool.query(`select pgfn.dead_letter($1)`, [run]);
    expect(await handlerEventsOf(event)).toHaveLength(1);

    // The error handler's own failure goes no further, nor does its replay's,
    // even for a handler that handles itself.
    const handlerEvent = reported[0].id as string;
    await t.pool.query(`update pgfn.functions set on_error = 'echo' where name = 'echo'`);
    try {
      const handlerRun = await newRun(handlerEvent, { status: "failed", error: "FUNCTION_ERROR" });
      await t.pool.query(`select pgfn.dead_letter($1)`, [handlerRun]);
      expect(await openDeadLetters(handlerEvent)).toHaveLength(1);
      const { rows } = await t.pool.query<{ id: string }>(`select pgfn.replay($1) as id`, [
        handlerEvent,
      ]);
      const replayRun = await newRun(rows[0]!.id, { status: "failed", error: "FUNCTION_ERROR" });
      await t.pool.query(`select pgfn.dead_letter($1)`, [replayRun]);
      expect(await handlerEventsOf(handlerEvent)).toEqual([]);
      expect(await handlerEventsOf(rows[0]!.id)).toEqual([]);
    } finally {
      await t.pool.query(`update pgfn.functions set on_error = null where name = 'echo'`);
    }

    // A dead letter of the event after the first was dealt with is a new failure.
    await t.pool.query(`update pgfn.dead_letters set resolved_at = now() where event_id = $1`, [
      event,
    ]);
    await t.pool.query(`select pgfn.dead_letter($1)`, [run]);
    expect(await handlerEventsOf(event)).toHaveLength(2);
  });

  it("an error handler is given the event that failed whole; a payload written whole is given as it is", async () => {
    const event = await newEvent("watched");
    const run = await newRun(event, { status: "failed", error: "FUNCTION_ERROR" });
    await t.pool.query(`select pgfn.dead_letter($1)`, [run]);
    const [reported] = await handlerEventsOf(event);
    const rowOf = (id: string) =>
      t.db.selectFrom("pgfn.events").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
    const given = (await handlerInput(t.db, await rowOf(reported.id), 1)) as ErrorHandlerEvent;
    expect(given).toMatchObject({
      trigger: "error_handler",
      payload: {
        event: { id: Number(event), attempt: 1, trigger: "manual", function: "watched" },
        run: { id: Number(run), error_code: "FUNCTION_ERROR" },
      },
    });
    // As a daemon wrote it before sql/000023.
    const whole = await rowOf(reported.id);
    const legacy = { ...whole, payload: given.payload };
    expect(await handlerInput(t.db, legacy, 1)).toEqual(given);
    // The event gone (deleted by hand): the handler is not run on half a report.
    await t.pool.query(`delete from pgfn.events where id = $1`, [event]);
    await expect(handlerInput(t.db, await rowOf(reported.id), 1)).rejects.toMatchObject({
      code: "INVALID_REQUEST",
      message: expect.stringMatching(/reports event \d+, which is no longer in pgfn\.events/),
    });
  });

  it("prune keeps an event while an error handler's event names it", async () => {
    const event = await newEvent("watched", { ageDays: 30 });
    const run = await newRun(event, { status: "failed", error: "FUNCTION_ERROR" });
    await t.pool.query(`select pgfn.dead_letter($1)`, [run]);
    await t.pool.query(`update pgfn.dead_letters set resolved_at = now() where event_id = $1`, [
      event,
    ]);
    const [reported] = await handlerEventsOf(event);
    // The report ran long ago: both are old enough to go.
    await t.pool.query(
      `update pgfn.events set created_at = now() - interval '20 days', dispatched_at = now() where id = $1`,
      [reported.id],
    );
    await newRun(reported.id, { status: "succeeded" });
    const exists = async (id: string) =>
      (await t.pool.query(`select 1 from pgfn.events where id = $1`, [id])).rowCount === 1;
    await t.pool.query(`select pgfn.prune('10 days')`);
    expect([await exists(reported.id), await exists(event)]).toEqual([false, true]);
    await t.pool.query(`select pgfn.prune('10 days')`);
    expect(await exists(event)).toBe(false);
  });
});

describe("one owner", () => {
  /** The pgfn functions whose current body matches `pattern`. */
  const functionsMatching = async (pattern: string) =>
    (
      await t.pool.query<{ name: string }>(
        `select p.proname as name from pg_proc p
         where p.pronamespace = 'pgfn'::regnamespace and p.prosrc ~* $1 order by 1`,
        [pattern],
      )
    ).rows.map((r) => r.name);

  it("in SQL, one function writes a dead letter and its error handler's event, and one abandons an attempt", async () => {
    expect(await functionsMatching(`insert\\s+into\\s+pgfn\\.dead_letters`)).toEqual([
      "dead_letter",
    ]);
    expect(await functionsMatching(`insert\\s+into\\s+pgfn\\.events[^;]*'error_handler'`)).toEqual([
      "dead_letter",
    ]);
    expect(await functionsMatching(`status\\s*=\\s*'abandoned'\\s*,`)).toEqual(["abandon_run"]);
  });

  it("in SQL, one function decides what becomes of the event of an attempt nothing runs any more", async () => {
    // The orphan sweep and the reaper both call pgfn.abandon_lost_run.
    expect(await functionsMatching(`add_retry_job\\s*\\(`)).toEqual(["abandon_lost_run"]);
    expect(await functionsMatching(`abandon_lost_run\\s*\\(`)).toEqual([
      "abandon_orphaned_runs",
      "reap_dead_daemons",
    ]);
  });

  it("the daemon's TypeScript only calls them: no job key, job insert, dead letter or abandon of its own", async () => {
    const files = (await readdir(SRC, { recursive: true }))
      .filter((f) => f.endsWith(".ts"))
      .map((f) => path.join(SRC, f));
    const offenders: string[] = [];
    const rules: [string, RegExp][] = [
      ["a job key", /pgfn:(event|batch|retry|wait):/],
      ["a job insert", /graphile_worker\.add_jobs?\b/],
      ["a dead letter", /into\s+pgfn\.dead_letters/i],
      ["an error handler's event", /source:\s*"error_handler"/],
      ["an abandon", /status:\s*"abandoned"|status\s*=\s*'abandoned'/],
    ];
    for (const file of files) {
      // Code only: a comment may name a key.
      const text = (await readFile(file, "utf8"))
        .replace(/\/\*[\s\S]*?\*\//g, "")
        .replace(/^\s*\/\/.*$/gm, "");
      for (const [what, pattern] of rules) {
        if (pattern.test(text)) offenders.push(`${path.relative(SRC, file)}: ${what}`);
      }
    }
    expect(offenders).toEqual([]);
  });
});
