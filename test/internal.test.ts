// When pgfn itself cannot record an attempt (a database error mid-run), the
// attempt is ended as `abandoned` with INTERNAL, not left `running` for ever,
// and graphile-worker runs the event again once the fault is gone.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import { executeEvent } from "../src/worker/execute.js";
import {
  createTestDatabase,
  enqueueManual,
  exampleWasm,
  startTestDaemon,
  waitFor,
  type TestDatabase,
} from "./helpers.js";

let t: TestDatabase;
let daemon: Daemon;

beforeAll(async () => {
  t = await createTestDatabase("internal");
  await deployFunction(createDb(t.pool), {
    name: "echo",
    wasm: await readFile(exampleWasm("echo")),
  });
  // The fault: recording a success fails while this trigger exists.
  await t.pool.query(`
    create function public.refuse_success() returns trigger language plpgsql as $$
    begin
      if new.status = 'succeeded' then raise exception 'disk full (simulated)'; end if;
      return new;
    end $$;
    create trigger refuse_success before update on pgfn.function_runs
      for each row execute function public.refuse_success();`);
  daemon = await startTestDaemon(t.url, { pollIntervalMs: 100 });
});
afterAll(async () => {
  await daemon?.stop();
  await t?.drop();
});

it("ends the attempt as abandoned with INTERNAL, and runs the event again once the fault is gone", async () => {
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
    status: "abandoned",
    error_code: "INTERNAL",
    http_status: 500,
    will_retry: true,
  });
  expect(first.error_message).toMatch(
    /pgfn could not finish recording this attempt: .*disk full \(simulated\)/,
  );
  expect(
    (
      await t.pool.query(
        `select count(*)::int as n from pgfn.function_runs where status = 'running'`,
      )
    ).rows[0].n,
  ).toBe(0);

  await t.pool.query(`drop trigger refuse_success on pgfn.function_runs`);
  // graphile-worker's own retry of the failed job (its backoff: about 3 s).
  const next = await waitFor(
    async () =>
      (
        await t.pool.query(
          `select * from pgfn.function_runs where event_id = $1 and status = 'succeeded'`,
          [eventId],
        )
      ).rows[0],
    { timeoutMs: 20_000, message: "the event to succeed on graphile-worker's retry" },
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
