// A batch job's tries are not one event's: a daemon death or a failed try
// mid-batch must never strand its events. Two deaths while a max_attempts = 1
// function's batch runs once left its later events with no run, no dead
// letter and no job graphile-worker would fetch (sql/000011_batch_jobs.sql:
// batches get 25 tries, and the reaper gives back the try a death cost).
import { beforeAll, expect, it } from "vitest";
import { enqueueManyManual } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("batch_attempts");

beforeAll(async () => {
  await t.deploy("once", { example: "echo", maxAttempts: 1 });
});

it("events of a batch nobody started survive two daemon deaths", async () => {
  const events = await enqueueManyManual(t.pool, "once", 3);
  expect((await t.pool.query(`select pgfn.dispatch(500, 50) as n`)).rows[0].n).toBe(3);
  const { rows: jobs } = await t.pool.query<{ id: string; key: string; max_attempts: number }>(
    `select id, key, max_attempts from graphile_worker._private_jobs`,
  );
  expect(jobs).toHaveLength(1);
  expect(jobs[0]!.key).toMatch(/^pgfn:batch:/);
  const job = jobs[0]!;

  // Twice: a daemon fetches the batch (what graphile-worker's getJobs does),
  // starts its next event (its slots hold only one), and is SIGKILLed; the
  // reaper abandons the attempt and releases the job.
  for (let death = 0; death < 2; death++) {
    const daemon = `doomed-${death}`;
    await t.pool.query(
      `update graphile_worker._private_jobs
       set attempts = attempts + 1, locked_at = now(), locked_by = $2 where id = $1`,
      [job.id, `w-${daemon}`],
    );
    await t.pool.query(
      `insert into pgfn.daemons (id, heartbeat_at, graphile_worker_ids, holds_lock)
       values ($1, now() - interval '1 hour', array[$2], true)`,
      [daemon, `w-${daemon}`],
    );
    const started = await t.pool.query(
      `select * from pgfn.begin_runs(array[$1]::bigint[], $2, $3)`,
      [events[death]!, daemon, job.id],
    );
    expect(started.rows[0].run_id).not.toBeNull();
    expect(
      (await t.pool.query(`select pgfn.reap_dead_daemons(interval '1 minute') as n`)).rows[0].n,
    ).toBe(1);
  }

  // The third event never ran. It must still have a job graphile-worker can
  // fetch, or at least be a dead letter someone can see and retry.
  const last = events[2]!;
  const { rows } = await t.pool.query(
    `select
       exists (select 1 from pgfn.function_runs where event_id = $1) as ran,
       exists (select 1 from pgfn.dead_letters where event_id = $1) as dead,
       exists (select 1 from graphile_worker._private_jobs j
               where j.is_available
                 and (j.key = 'pgfn:batch:' || $2 or j.key like 'pgfn:%:' || $1 || '%')) as fetchable`,
    [last, events[0]!],
  );
  expect(rows[0].ran).toBe(false);
  expect(rows[0].fetchable || rows[0].dead).toBe(true);
});
