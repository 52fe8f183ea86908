// Many events per job (sql/000011_batch_jobs.sql, src/worker/execute.ts
// executeJob): a backlog runs in few jobs, each event still once and on its
// own terms, and a daemon never has more attempts running than its slots.
import { beforeAll, expect, it } from "vitest";
import { waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("worker_batch");

beforeAll(async () => {
  await t.deploy("echo");
  await t.deploy("flaky", { maxAttempts: 3, retryBaseMs: 0, retryMaxMs: 0 });
  // Its planned failures must not open its circuit (that would defer them).
  await t.pool.query(`update pgfn.functions set circuit_min_volume = 10000 where name = 'flaky'`);
  await t.deploy("busy", { maxConcurrency: 3 });
  await t.deploy("busy_wide", { example: "busy" });
});

/** Commits `n` manual events of `fn` in one transaction; returns their ids. */
async function commitEvents(fn: string, payloads: unknown[]): Promise<string[]> {
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.events (function_name, source, payload)
     select $1, 'manual', p from jsonb_array_elements($2::jsonb) p returning id`,
    [fn, JSON.stringify(payloads)],
  );
  return rows.map((r) => r.id);
}

async function finished(fn: string): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `select count(distinct event_id)::int as n from pgfn.function_runs r
     where function_name = $1 and (status = 'succeeded'
       or exists (select 1 from pgfn.dead_letters d where d.event_id = r.event_id))`,
    [fn],
  );
  return rows[0]!.n;
}

/** The most runs of `fn` that were `running` at one moment, from their recorded times. */
async function maxOverlap(fn: string): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `select coalesce(max((select count(*) from pgfn.function_runs o
        where o.function_name = r.function_name
          and o.started_at <= r.started_at and o.finished_at > r.started_at)), 0)::int as n
     from pgfn.function_runs r where r.function_name = $1`,
    [fn],
  );
  return rows[0]!.n;
}

it("runs a backlog in jobs of up to 50 events, each event exactly once", async () => {
  const ids = await commitEvents(
    "echo",
    Array.from({ length: 120 }, (_, i) => ({ i })),
  );
  // Committed before the daemon starts: its first dispatch takes all 120.
  const daemon = await t.startDaemon({ daemonId: "batch-backlog" });
  try {
    await waitFor(async () => (await finished("echo")) === 120, {
      timeoutMs: 60_000,
      message: "120 echo events to succeed",
    });
  } finally {
    await daemon.stop();
  }
  const { rows } = await t.pool.query<{ runs: number; jobs: number; events: number }>(
    `select count(*)::int as runs, count(distinct job_id)::int as jobs,
            count(distinct event_id)::int as events
     from pgfn.function_runs where event_id = any ($1::bigint[])`,
    [ids],
  );
  expect(rows[0]).toEqual({ runs: 120, jobs: 3, events: 120 });
}, 120_000);

it("retries a batch's failed events one by one, never the batch again", async () => {
  // flaky asks for a retry until its third attempt; "permanent" fails for good.
  const payloads = Array.from({ length: 20 }, (_, i) => ({ i, permanent: i % 4 === 0 }));
  const ids = await commitEvents("flaky", payloads);
  const daemon = await t.startDaemon({ daemonId: "batch-flaky" });
  try {
    await waitFor(async () => (await finished("flaky")) === 20, {
      timeoutMs: 60_000,
      message: "20 flaky events to succeed or be dead-lettered",
    });
  } finally {
    await daemon.stop();
  }
  const { rows } = await t.pool.query<{
    event_id: string;
    attempt: number;
    status: string;
    job_id: string;
  }>(
    `select event_id, attempt, status, job_id from pgfn.function_runs
     where event_id = any ($1::bigint[]) order by event_id, attempt`,
    [ids],
  );
  const batchJob = rows.find((r) => r.attempt === 1)!.job_id;
  // Every first attempt came from the one batch job...
  expect(rows.filter((r) => r.attempt === 1).every((r) => r.job_id === batchJob)).toBe(true);
  // ...every later one from a job of its own, for its event alone.
  const later = rows.filter((r) => r.attempt > 1);
  expect(later.length).toBe(15 * 2);
  expect(later.some((r) => r.job_id === batchJob)).toBe(false);
  expect(new Set(later.map((r) => r.job_id)).size).toBe(later.length);
  for (const [i, id] of ids.entries()) {
    const runs = rows.filter((r) => r.event_id === id);
    if (payloads[i]!.permanent) {
      expect(runs.map((r) => r.status)).toEqual(["failed"]);
    } else {
      expect(runs.map((r) => `${r.attempt}:${r.status}`)).toEqual([
        "1:failed",
        "2:failed",
        "3:succeeded",
      ]);
    }
  }
}, 120_000);

it("never has more attempts running than the daemon's slots, nor than max_concurrency", async () => {
  // Each run works for a while, so that runs of one batch would overlap if
  // they were all started at once.
  const work = Array.from({ length: 24 }, () => ({ millions: 20 }));
  await commitEvents("busy", work);
  await commitEvents("busy_wide", work);
  const daemon = await t.startDaemon({
    daemonId: "batch-slots",
    workerConcurrency: 2,
    sandboxThreads: 2,
  });
  try {
    await waitFor(async () => (await finished("busy")) + (await finished("busy_wide")) === 48, {
      timeoutMs: 120_000,
      message: "48 busy events to succeed",
    });
  } finally {
    await daemon.stop();
  }
  // busy_wide may run 100 at once: the daemon's 2 slots are the bound.
  expect(await maxOverlap("busy_wide")).toBeLessThanOrEqual(2);
  expect(await maxOverlap("busy")).toBeLessThanOrEqual(2);
  // A daemon with more slots than busy's max_concurrency (3).
  await commitEvents("busy", work);
  const wide = await t.startDaemon({
    daemonId: "batch-wide",
    workerConcurrency: 8,
    sandboxThreads: 8,
  });
  try {
    await waitFor(async () => (await finished("busy")) === 48, {
      timeoutMs: 120_000,
      message: "24 more busy events to succeed",
    });
  } finally {
    await wide.stop();
  }
  expect(await maxOverlap("busy")).toBeLessThanOrEqual(3);
}, 300_000);
