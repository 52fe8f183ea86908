// graphile-worker stops its whole worker pool when one job completion fails
// (as it does while the database restarts). Here completions are refused by
// a trigger, deterministically: the daemon must replace the stopped runner,
// release the jobs it held, say "restarting" in /readyz meanwhile, and work
// normally once completions go through again.
import { beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { restartDelayMs } from "../src/worker/worker.js";
import { enqueueManual, finishedRun, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("worker_supervisor");
let daemon: Daemon | undefined;

beforeAll(async () => {
  await t.deploy("echo");
  await t.pool.query(`
    create table public.refuse_completion (since timestamptz not null default now());
    create function public.refuse_job_completion() returns trigger language plpgsql as $$
    begin
      if exists (select 1 from public.refuse_completion) then
        raise exception 'job completion refused by the test';
      end if;
      return old;
    end $$;
    create trigger refuse_job_completion before delete on graphile_worker._private_jobs
      for each row execute function public.refuse_job_completion();
  `);
});

async function readyz(d: Daemon) {
  const response = await fetch(`${d.http!.url}/readyz`);
  return {
    status: response.status,
    body: (await response.json()) as { checks: Record<string, string> },
  };
}

/** Waits for every pgfn_run job to be done; says what is left if they are not. */
async function jobsDone(d: Daemon, message: string) {
  try {
    await waitFor(
      async () => {
        const { rows } = await t.pool.query(
          `select count(*)::int as n from graphile_worker.jobs where task_identifier = 'pgfn_run'`,
        );
        return rows[0].n === 0 && d.worker!.state === "running";
      },
      { timeoutMs: 60_000, message },
    );
  } catch (error) {
    throw await withJobs(d, error);
  }
}

/** `error`, saying what the worker and the pgfn_run jobs look like. */
async function withJobs(d: Daemon, error: unknown): Promise<Error> {
  const { rows } = await t.pool.query(
    `select id, key, locked_by, attempts, max_attempts, run_at, last_error
     from graphile_worker.jobs where task_identifier = 'pgfn_run'`,
  );
  return new Error(
    `${(error as Error).message} Worker: ${d.worker!.state}, ${d.worker!.restarts} restarts. Jobs left: ${JSON.stringify(rows)}`,
    { cause: error },
  );
}

describe("the worker supervisor", () => {
  it("backs off 200 ms doubling to 5 s, jittered between half and all of it", () => {
    expect([0, 1, 2, 3, 4, 5, 9].map((n) => restartDelayMs(n, () => 1))).toEqual([
      200, 400, 800, 1600, 3200, 5000, 5000,
    ]);
    expect(restartDelayMs(0, () => 0)).toBe(100);
    expect(restartDelayMs(40, () => 0)).toBe(2500);
  });

  it("replaces a runner that stopped on its own, releases its jobs, and /readyz says so", async () => {
    daemon = await t.startDaemon(
      { daemonId: "supervised", workerConcurrency: 2, sandboxThreads: 1, pollIntervalMs: 200 },
      undefined,
      { http: { port: 0, host: "127.0.0.1" } },
    );
    const d = daemon;
    expect(d.worker!.state).toBe("running");
    expect((await readyz(d)).body.checks.worker).toBe("ok");

    await t.pool.query(`insert into public.refuse_completion default values`);
    const first = await enqueueManual(t.pool, "echo", { n: 1 });
    // The run itself succeeds; reporting its job done is what fails.
    expect(await finishedRun(t.pool, first, 30_000)).toMatchObject({ status: "succeeded" });
    await waitFor(async () => (d.worker!.restarts >= 1 ? true : undefined), {
      timeoutMs: 30_000,
      message: "the stopped runner to be replaced",
    });
    const during = await waitFor(
      async () => {
        const r = await readyz(d);
        return /restarting/.test(r.body.checks.worker ?? "") ? r : undefined;
      },
      { timeoutMs: 30_000, message: "/readyz to say the worker is restarting" },
    );
    expect(during.status).toBe(503);
    expect(during.body.checks.worker).toBe("restarting (its job runner stopped; see the log)");
    // Each replacement released the job: it is unlocked, not held for hours.
    const { rows: held } = await t.pool.query(
      `select locked_by from graphile_worker.jobs
       where task_identifier = 'pgfn_run' and locked_by is not null
         and not (locked_by = any ($1::text[]))`,
      [d.worker!.graphileWorkerIds],
    );
    expect(held).toEqual([]);

    await t.pool.query(`delete from public.refuse_completion`);
    await jobsDone(d, "the job to be completed by a replaced runner");
    expect((await readyz(d)).body.checks.worker).toBe("ok");

    // The replaced runner runs new work, and the event that was re-run after
    // each stop ran once: the later jobs found it done.
    const second = await enqueueManual(t.pool, "echo", { n: 2 });
    expect(await finishedRun(t.pool, second, 30_000)).toMatchObject({
      status: "succeeded",
      worker_id: "supervised",
    });
    const { rows: runs } = await t.pool.query(
      `select status from pgfn.function_runs where event_id = $1`,
      [first],
    );
    expect(runs).toEqual([{ status: "succeeded" }]);
  }, 120_000);

  it("runs a job whose runners stopped more times than the job has attempts", async () => {
    const d = daemon!;
    // Each runner that fetched the job counted an attempt of it; one that
    // stopped before reporting back never gave it back. Past the job's
    // max_attempts (4 here: echo's 3, plus one) graphile-worker would
    // never fetch it again, and its event would never run.
    await t.pool.query(`insert into public.refuse_completion default values`);
    const restartsBefore = d.worker!.restarts;
    const event = await enqueueManual(t.pool, "echo", { n: 3 });
    expect(await finishedRun(t.pool, event, 30_000)).toMatchObject({ status: "succeeded" });
    const { rows: spec } = await t.pool.query<{ max_attempts: number }>(
      `select max_attempts from graphile_worker._private_jobs where key = $1`,
      [`pgfn:event:${event}`],
    );
    const maxAttempts = spec[0]!.max_attempts;
    await waitFor(async () => d.worker!.restarts >= restartsBefore + maxAttempts + 1, {
      timeoutMs: 60_000,
      message: `the runner to stop and be replaced ${maxAttempts + 1} times`,
    }).catch(async (error: unknown) => {
      throw await withJobs(d, error);
    });
    await t.pool.query(`delete from public.refuse_completion`);
    await jobsDone(d, "the job to be completed by a replaced runner");
    const { rows: runs } = await t.pool.query(
      `select status from pgfn.function_runs where event_id = $1`,
      [event],
    );
    expect(runs).toEqual([{ status: "succeeded" }]);
  }, 120_000);

  it("runs a job its running runner's id locked by a fetch whose reply was lost", async () => {
    const d = daemon!;
    // The connection dropped after the database committed a fetch: the job
    // is locked by the live runner, which never received it. Nothing else
    // would release it while this runner runs (4 hours).
    const [event] = (
      await t.pool.query<{ id: string }>(
        `insert into pgfn.events (function_name, source, payload, dispatched_at)
         values ('echo', 'manual', '{"n":4}', now()) returning id`,
      )
    ).rows.map((r) => r.id);
    const client = await t.pool.connect();
    try {
      await client.query("begin");
      const { rows } = await client.query<{ id: string }>(
        `select (graphile_worker.add_job('pgfn_run', json_build_object('event_id', $1::bigint),
           max_attempts => 4, job_key => 'pgfn:event:' || $1)).id`,
        [event],
      );
      await client.query(
        `update graphile_worker._private_jobs set locked_by = $2, locked_at = now(), attempts = 1
         where id = $1`,
        [rows[0]!.id, d.worker!.graphileWorkerIds[0]],
      );
      await client.query("commit");
    } finally {
      client.release();
    }
    expect(await finishedRun(t.pool, event!, 60_000)).toMatchObject({ status: "succeeded" });
    await jobsDone(d, "the job to be completed");
  }, 120_000);

  it("runs again, as its next attempt, an event whose orphaned attempt's job is gone", async () => {
    const d = daemon!;
    // Attempt 1 left `running` by this daemon (its outcome could not be
    // recorded), and no job left for the event: completed, or removed by hand.
    const { rows } = await t.pool.query<{ event: string; run: string }>(
      `with e as (
         insert into pgfn.events (function_name, source, payload, dispatched_at)
         values ('echo', 'manual', '{}', now()) returning id
       ), gone as (
         select id from graphile_worker.complete_jobs(
           array[(graphile_worker.add_job('not_pgfn', '{}')).id])
       )
       insert into pgfn.function_runs (event_id, function_name, attempt, status, worker_id, job_id, started_at)
       select e.id, 'echo', 1, 'running', $1, gone.id, clock_timestamp() - interval '1 minute'
       from e, gone returning event_id as event, id as run`,
      ["supervised"],
    );
    const { event, run } = rows[0]!;
    const next = await waitFor(
      async () =>
        (
          await t.pool.query(
            `select attempt, status, worker_id from pgfn.function_runs
             where event_id = $1 and attempt = 2 and status = 'succeeded'`,
            [event],
          )
        ).rows[0],
      { timeoutMs: 30_000, message: "the event's second attempt to succeed" },
    );
    expect(next).toEqual({ attempt: 2, status: "succeeded", worker_id: "supervised" });
    const { rows: first } = await t.pool.query(
      `select status, error_code, will_retry from pgfn.function_runs where id = $1`,
      [run],
    );
    expect(first).toEqual([{ status: "abandoned", error_code: "INTERNAL", will_retry: true }]);
    await jobsDone(d, "the retry job to be completed");
  }, 60_000);

  it("abandons an attempt whose job none of its live ids holds any more, and only such", async () => {
    const d = daemon!;
    const ids = d.worker!.graphileWorkerIds;
    expect(ids.length).toBeGreaterThan(0);
    // Jobs of a task nobody runs, so no worker takes them: one released (as
    // graphile-worker leaves a failed job), one locked by this daemon's pool.
    const { rows: jobs } = await t.pool.query<{ released: string; held: string }>(
      `select (graphile_worker.add_job('not_pgfn', '{}')).id as released,
              (graphile_worker.add_job('not_pgfn', '{}')).id as held`,
    );
    const { released, held } = jobs[0]!;
    await t.pool.query(
      `update graphile_worker._private_jobs set locked_by = $2, locked_at = now() where id = $1`,
      [held, ids[0]],
    );
    const { rows: events } = await t.pool.query<{ id: string }>(
      `insert into pgfn.events (function_name, source, payload, dispatched_at)
       select 'echo', 'manual', '{}', now() from generate_series(1, 3) returning id`,
    );
    const run = async (eventId: string, jobId: string, age: string) =>
      (
        await t.pool.query<{ id: string }>(
          `insert into pgfn.function_runs (event_id, function_name, attempt, status, worker_id, job_id, started_at)
           values ($1, 'echo', 1, 'running', 'supervised', $2, clock_timestamp() - $3::interval) returning id`,
          [eventId, jobId, age],
        )
      ).rows[0]!.id;
    const orphan = await run(events[0]!.id, released, "1 minute");
    const underWay = await run(events[1]!.id, held, "1 minute");
    const young = await run(events[2]!.id, released, "0 seconds");
    const status = async (id: string) =>
      (
        await t.pool.query(
          `select status, error_code, will_retry from pgfn.function_runs where id = $1`,
          [id],
        )
      ).rows[0];
    expect(
      await waitFor(
        async () => {
          const r = await status(orphan);
          return r.status === "abandoned" ? r : undefined;
        },
        { timeoutMs: 20_000, message: "the heartbeat to abandon the orphaned attempt" },
      ),
    ).toEqual({ status: "abandoned", error_code: "INTERNAL", will_retry: true });
    expect((await status(underWay)).status).toBe("running");
    expect((await status(young)).status).toBe("running");
    await t.pool.query(`delete from pgfn.events where id = any ($1::bigint[])`, [
      events.map((e) => e.id),
    ]);
    await t.pool.query(`delete from graphile_worker._private_jobs where id in ($1, $2)`, [
      released,
      held,
    ]);
  });
});
