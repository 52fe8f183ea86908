// When pgfn itself cannot record an attempt (a database error mid-run), the
// attempt ends as a failure with INTERNAL, not left `running` for ever, and
// the function's failure model takes over: retries while max_attempts
// allows, then a dead letter and on_error. graphile-worker's own retries of
// a throwing job never run the handler more often than that.
import { beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { executeEvent } from "../src/worker/execute.js";
import { enqueueManual, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("internal");
let daemon: Daemon;

beforeAll(async () => {
  await t.deploy("echo");
  // The fault: recording the first attempt's success fails while this
  // trigger exists (only the first: the retry must not race its removal).
  await t.pool.query(`
    create function public.refuse_success() returns trigger language plpgsql as $$
    begin
      if new.function_name = 'echo' and new.status = 'succeeded' and new.attempt = 1 then
        raise exception 'disk full (simulated)';
      end if;
      return new;
    end $$;
    create trigger refuse_success before update on pgfn.function_runs
      for each row execute function public.refuse_success();`);
  daemon = await t.startDaemon({ pollIntervalMs: 100 });
});

it("ends the attempt as failed with INTERNAL, and retries it like any failure once the fault is gone", async () => {
  const eventId = await enqueueManual(t.pool, "echo", { n: 1 });
  const first = await waitFor(
    async () =>
      (
        await t.pool.query(
          `select * from pgfn.function_runs where event_id = $1 and status <> 'running'`,
          [eventId],
        )
      ).rows[0],
    { message: "the first attempt to end" },
  );
  expect(first).toMatchObject({
    status: "failed",
    error_code: "INTERNAL",
    http_status: 500,
    will_retry: true,
  });
  expect(first.error_message).toMatch(
    /pgfn could not finish this attempt: .*disk full \(simulated\)/,
  );
  expect(
    (
      await t.pool.query(
        `select count(*)::int as n from pgfn.function_runs where status = 'running'`,
      )
    ).rows[0].n,
  ).toBe(0);

  await t.pool.query(`drop trigger refuse_success on pgfn.function_runs`);
  // The function's retry (retry_base_ms 1 s, jittered), a job of pgfn's.
  const next = await waitFor(
    async () =>
      (
        await t.pool.query(
          `select * from pgfn.function_runs where event_id = $1 and status = 'succeeded'`,
          [eventId],
        )
      ).rows[0],
    { timeoutMs: 20_000, message: "the event to succeed on its retry" },
  );
  expect(next.attempt).toBe(2);
  expect(next.result).toMatchObject({ payload: { n: 1 } });
}, 30_000);

it("a job that runs again after its failure was recorded does not run the event again", async () => {
  // A daemon killed after recording a failure but before graphile-worker
  // completed the job leaves the job to run again; so does an internal
  // error in a job. The event's failure (and its retry job, if any) stands.
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.events (function_name, source, payload, dispatched_at)
     values ('echo', 'manual', '{}', now()) returning id`,
  );
  const eventId = rows[0]!.id;
  await t.pool.query(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, error_code, job_id, finished_at)
     values ($1, 'echo', 1, 'failed', 'FUNCTION_ERROR', 424242, now())`,
    [eventId],
  );
  const again = await executeEvent(daemon.executor, eventId, "424242");
  expect(again).toBeUndefined();
  // Another job (a retry's) runs it.
  const retried = await executeEvent(daemon.executor, eventId, "424243");
  expect(retried).toMatchObject({ status: "succeeded", attempt: 2 });

  // A dead-lettered event is done too: only a person's retry (a new event) runs it.
  const dead = (
    await t.pool.query<{ id: string }>(
      `insert into pgfn.events (function_name, source, payload, dispatched_at)
       values ('echo', 'manual', '{}', now()) returning id`,
    )
  ).rows[0]!.id;
  const run = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, error_code, finished_at)
     values ($1, 'echo', 1, 'abandoned', 'TIMEOUT', now()) returning id`,
    [dead],
  );
  await t.pool.query(
    `insert into pgfn.dead_letters (event_id, function_name, last_run_id, error_code, error_message)
     values ($1, 'echo', $2, 'TIMEOUT', 'no attempts left')`,
    [dead, run.rows[0]!.id],
  );
  expect(await executeEvent(daemon.executor, dead, "7")).toBeUndefined();
  expect(
    (
      await t.pool.query(`select count(*)::int as n from pgfn.function_runs where event_id = $1`, [
        dead,
      ])
    ).rows[0].n,
  ).toBe(1);
});

it("a job whose failures cannot be recorded runs the handler at most max_attempts times, then dead-letters the event and calls on_error", async () => {
  await t.deploy("stuck", { example: "echo", maxAttempts: 2, onError: "echo" });
  // The database refuses every outcome of the first two attempts, failures
  // included: each time the job's task throws and graphile-worker retries it.
  // (The next attempt may end them: that is how the test sees them end.)
  await t.pool.query(`
    create function public.refuse_stuck() returns trigger language plpgsql as $$
    begin
      if new.function_name = 'stuck' and new.status <> 'running' and new.attempt <= 2
         and coalesce(new.error_message, '') not like '%the next attempt ended it%' then
        raise exception 'disk full (simulated)';
      end if;
      return new;
    end $$;
    create trigger refuse_stuck before update on pgfn.function_runs
      for each row execute function public.refuse_stuck();`);
  try {
    const eventId = await enqueueManual(t.pool, "stuck", { n: 2 });
    // graphile-worker may try the job as often as the event has attempts,
    // plus one that only records the dead letter: never its default 25.
    const job = await waitFor(
      async () =>
        (
          await t.pool.query(
            `select max_attempts from graphile_worker.jobs where key = 'pgfn:event:' || $1`,
            [eventId],
          )
        ).rows[0],
      { message: "the event's job" },
    );
    expect(job.max_attempts).toBe(3);

    const dead = await waitFor(
      async () =>
        (await t.pool.query(`select * from pgfn.dead_letters where event_id = $1`, [eventId]))
          .rows[0],
      // graphile-worker's backoff between the tries: e^1 + e^2 s.
      { timeoutMs: 40_000, message: "the event's dead letter" },
    );
    const runs = (
      await t.pool.query(
        `select attempt, status, error_code, error_message from pgfn.function_runs
         where event_id = $1 order by attempt`,
        [eventId],
      )
    ).rows;
    expect(runs.map((r) => [r.attempt, r.status, r.error_code])).toEqual([
      [1, "abandoned", "INTERNAL"],
      [2, "abandoned", "INTERNAL"],
      [3, "failed", "INTERNAL"],
    ]);
    expect(runs[2].error_message).toMatch(/allows 2 \(max_attempts\), so the handler was not run/);
    expect(dead.error_code).toBe("INTERNAL");
    // on_error gets the event that could not be finished.
    const handled = await t.pool.query(
      `select payload from pgfn.events where source = 'error_handler' and function_name = 'echo'
         and (payload -> 'event' ->> 'id')::bigint = $1`,
      [eventId],
    );
    expect(handled.rows).toHaveLength(1);
    // Nothing left for graphile-worker to try again.
    await waitFor(
      async () =>
        (
          await t.pool.query(
            `select count(*)::int as n from graphile_worker.jobs where key like 'pgfn:%:' || $1 || '%'`,
            [eventId],
          )
        ).rows[0].n === 0,
      { message: "the event's jobs to be gone" },
    );
  } finally {
    await t.pool.query(`drop trigger refuse_stuck on pgfn.function_runs`);
  }
}, 60_000);

it("retry and wait jobs may be tried by graphile-worker only as often as the event has attempts left, plus one", async () => {
  await t.deploy("capped", {
    example: "spin",
    timeoutMs: 1000,
    maxAttempts: 4,
    // A retry due within the hour: its job waits while the test reads it.
    retryBaseMs: 3_600_000,
    retryMaxMs: 3_600_000,
  });
  const newEvent = async () =>
    (
      await t.pool.query<{ id: string }>(
        `insert into pgfn.events (function_name, source, payload, dispatched_at)
         values ('capped', 'manual', '{}', now()) returning id`,
      )
    ).rows[0]!.id;
  const maxAttemptsOf = async (key: string) =>
    (await t.pool.query(`select max_attempts from graphile_worker.jobs where key = $1`, [key]))
      .rows[0]?.max_attempts;

  // Attempt 1 times out; attempts 2 to 4 are left: 3, plus one.
  const retried = await newEvent();
  const run = await executeEvent(daemon.executor, retried, "990001");
  expect(run).toMatchObject({ attempt: 1, error_code: "TIMEOUT", will_retry: true });
  expect(await maxAttemptsOf(`pgfn:retry:${retried}:2`)).toBe(4);

  // Deferred by an open circuit before its first attempt: 4, plus one.
  await t.pool.query(
    `insert into pgfn.circuits (function_name, state, opened_at) values ('capped', 'open', now())
     on conflict (function_name) do update set state = 'open', opened_at = now()`,
  );
  const deferred = await newEvent();
  expect(await executeEvent(daemon.executor, deferred, "990002")).toBeUndefined();
  expect(await maxAttemptsOf(`pgfn:wait:${deferred}`)).toBe(5);
}, 30_000);
