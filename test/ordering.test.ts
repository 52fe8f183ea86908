// ordering = 'function': one event at a time, in commit order, across
// daemons, whatever graphile-worker does with named queues (its localQueue
// runs a batch of one queue's jobs concurrently, graphile/worker#621). The
// gate is pgfn.ordered_turn (sql/000012_ordering.sql); a failing event holds
// the events behind it until it succeeds or becomes a dead letter.
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { PgfnError } from "../src/errors.js";
import { HTTP_STATUS } from "../src/http/errors.js";
import { invokeNow } from "../src/invokeNow.js";
import { enqueueManual, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("ordering");

beforeAll(async () => {
  for (const name of ["gate_a", "gate_b", "gate_c", "gate_d", "gate_e", "gate_f"]) {
    await t.deploy(name, { example: "echo" });
  }
  await t.deploy("in_order", { example: "busy" });
  // Asks for a retry until its third attempt; {"permanent":true} fails for good.
  await t.deploy("held", { example: "flaky", maxAttempts: 3, retryBaseMs: 50, retryMaxMs: 100 });
  await t.pool.query(`update pgfn.functions set ordering = 'function'`);
});

interface Run {
  id: string;
  event_id: string;
  attempt: number;
  status: string;
  started_at: Date;
  finished_at: Date;
  worker_id: string;
}

/** Starts an attempt the way a daemon does; the run id, or why not. */
async function begin(eventId: string) {
  const { rows } = await t.pool.query<{
    run_id: string | null;
    refused: string | null;
    retry_at: Date | null;
  }>(`select run_id, refused, retry_at from pgfn.begin_run($1, 'test', null)`, [eventId]);
  return rows[0]!;
}

async function finish(runId: string, status: "succeeded" | "failed", retryAt?: string) {
  await t.pool.query(
    `update pgfn.function_runs
     set status = $2, finished_at = clock_timestamp(), will_retry = $3::timestamptz is not null,
         next_attempt_at = $3::timestamptz
     where id = $1`,
    [runId, status, retryAt ?? null],
  );
}

describe("the gate, attempt by attempt", () => {
  // Left as these tests made them (some attempts `running` for good), out
  // of the daemons' reach.
  afterAll(async () => {
    await t.pool.query(
      `update pgfn.events set dispatched_at = now() where function_name like 'gate_%'`,
    );
  });

  it("starts only the first unfinished event, and only while none of the function runs", async () => {
    const [e1, e2, e3] = [
      await enqueueManual(t.pool, "gate_a", {}),
      await enqueueManual(t.pool, "gate_a", {}),
      await enqueueManual(t.pool, "gate_a", {}),
    ] as [string, string, string];
    const second = await begin(e2);
    const third = await begin(e3);
    expect(second).toMatchObject({ run_id: null, refused: "ORDERING" });
    expect(third).toMatchObject({ run_id: null, refused: "ORDERING" });
    // A line, not a crowd: the later event asks again later (25 ms a place).
    expect(third.retry_at!.getTime() - second.retry_at!.getTime()).toBeGreaterThanOrEqual(15);
    const first = await begin(e1);
    expect(first).toMatchObject({ refused: null });
    // A second job of the same event (at-least-once) does not run beside it.
    expect(await begin(e1)).toMatchObject({ run_id: null, refused: "ORDERING" });
    expect(await begin(e2)).toMatchObject({ run_id: null, refused: "ORDERING" });
    await finish(first.run_id!, "succeeded");
    expect(await begin(e3)).toMatchObject({ run_id: null, refused: "ORDERING" });
    expect(await begin(e2)).toMatchObject({ refused: null });
  });

  it("holds the events behind one that waits for its retry until then, and lets them go at its dead letter", async () => {
    const [e1, e2] = [
      await enqueueManual(t.pool, "gate_b", {}),
      await enqueueManual(t.pool, "gate_b", {}),
    ] as [string, string];
    const first = await begin(e1);
    const retryAt = new Date(Date.now() + 3_600_000);
    await finish(first.run_id!, "failed", retryAt.toISOString());
    const held = await begin(e2);
    expect(held).toMatchObject({ run_id: null, refused: "ORDERING" });
    // Not worth asking before the earlier event's retry is due.
    expect(held.retry_at!.getTime()).toBeGreaterThanOrEqual(retryAt.getTime());
    expect(held.retry_at!.getTime()).toBeLessThan(retryAt.getTime() + 1000);

    const again = await begin(e1);
    expect(again).toMatchObject({ refused: null });
    await finish(again.run_id!, "failed");
    await t.pool.query(
      `insert into pgfn.dead_letters (event_id, function_name, last_run_id, error_code, error_message)
       values ($1, 'gate_b', $2, 'FUNCTION_ERROR', 'no')`,
      [e1, again.run_id],
    );
    expect(await begin(e2)).toMatchObject({ refused: null });
  });

  it("keeps commit order when a smaller event id commits after a larger one", async () => {
    const late = new pg.Client({ connectionString: t.url });
    await late.connect();
    const insertLate = async () =>
      (
        await late.query<{ id: string }>(
          `insert into pgfn.events (function_name, source, payload) values ('gate_c', 'manual', '{}') returning id`,
        )
      ).rows[0]!.id;
    try {
      await late.query("begin");
      const a = await insertLate();
      // Committed first, so first in commit order, though its id is larger.
      const b = await enqueueManual(t.pool, "gate_c", {});
      expect(BigInt(b)).toBeGreaterThan(BigInt(a));
      const runB = await begin(b);
      expect(runB).toMatchObject({ refused: null });
      await late.query("commit");
      // b is still running: a waits for it.
      expect(await begin(a)).toMatchObject({ run_id: null, refused: "ORDERING" });
      await finish(runB.run_id!, "succeeded");

      // Again, while the gate looks (and remembers how far all is finished)
      // with a's twin uncommitted: it must not skip the twin's id.
      await late.query("begin");
      const aRun = await begin(a);
      expect(aRun).toMatchObject({ refused: null });
      await finish(aRun.run_id!, "succeeded");
      const twin = await insertLate();
      const c = await enqueueManual(t.pool, "gate_c", {});
      const runC = await begin(c);
      expect(runC).toMatchObject({ refused: null });
      await finish(runC.run_id!, "succeeded");
      for (let i = 0; i < 3; i++) {
        await t.pool.query(`select * from pgfn.ordered_turn('gate_c', $1)`, [c]);
      }
      await late.query("commit");
      // Committed after the twin: behind it.
      const d = await enqueueManual(t.pool, "gate_c", {});
      expect(await begin(d)).toMatchObject({ run_id: null, refused: "ORDERING" });
      expect(await begin(twin)).toMatchObject({ refused: null });
    } finally {
      await late.end();
    }
  });

  it("wakes the deferral of the event first in line, and neither a retry nor the events behind", async () => {
    const [e1, e2] = [
      await enqueueManual(t.pool, "gate_d", {}),
      await enqueueManual(t.pool, "gate_d", {}),
    ];
    const keys = [`pgfn:wait:${e1}`, `pgfn:retry:${e1}:2`, `pgfn:wait:${e2}`];
    for (const key of keys) {
      await t.pool.query(
        `select graphile_worker.add_job('pgfn_run', '{}', run_at => now() + interval '1 hour', job_key => $1)`,
        [key],
      );
    }
    await t.pool.query(`select pgfn.ordered_wake('gate_d')`);
    const { rows } = await t.pool.query<{ key: string; due: boolean }>(
      `select key, run_at <= now() as due from graphile_worker.jobs where key = any($1)`,
      [keys],
    );
    expect(Object.fromEntries(rows.map((r) => [r.key, r.due]))).toEqual({
      [`pgfn:wait:${e1}`]: true,
      [`pgfn:retry:${e1}:2`]: false,
      [`pgfn:wait:${e2}`]: false,
    });
    await t.pool.query(`select graphile_worker.remove_job(k) from unnest($1::text[]) k`, [keys]);
  });

  it("keeps the place of an event whose orphaned attempt's job is gone, and runs it next", async () => {
    // Attempt 1 of e1 is left `running` (its outcome could not be
    // recorded) by a live daemon, and its job is gone. The heartbeat's sweep
    // (pgfn.abandon_orphaned_runs) must not let e2 go first.
    const [e1, e2] = [
      await enqueueManual(t.pool, "gate_e", {}),
      await enqueueManual(t.pool, "gate_e", {}),
    ] as [string, string];
    const { rows: gone } = await t.pool.query<{ id: string }>(
      `select id from graphile_worker.complete_jobs(
         array[(graphile_worker.add_job('not_pgfn', '{}')).id])`,
    );
    const { rows: started } = await t.pool.query<{ run_id: string }>(
      `select run_id from pgfn.begin_run($1, 'gate-orphan', $2)`,
      [e1, gone[0]!.id],
    );
    expect(started[0]!.run_id).not.toBeNull();
    expect(await begin(e2)).toMatchObject({ run_id: null, refused: "ORDERING" });

    await t.pool.query(`select pgfn.abandon_orphaned_runs('gate-orphan', '{}', interval '0')`);
    expect(await begin(e2)).toMatchObject({ run_id: null, refused: "ORDERING" });
    const { rows } = await t.pool.query<{ attempt: number; refused: string | null }>(
      `select b.attempt, b.refused from graphile_worker.jobs j,
         pgfn.begin_run($1, 'gate-orphan', j.id) b where j.key = $2`,
      [e1, `pgfn:retry:${e1}:2`],
    );
    expect(rows).toEqual([{ attempt: 2, refused: null }]);
    await t.pool.query(`select graphile_worker.remove_job($1)`, [`pgfn:retry:${e1}:2`]);
  });

  it("keeps the place of an event whose dead daemon's attempt lost its job, and runs it next", async () => {
    // Attempt 1 of e1 was running on a daemon that died, and its job is
    // gone. The reaper (pgfn.reap_dead_daemons) must neither let e2 go
    // first nor leave e1 to a job that will never come.
    const [e1, e2] = [
      await enqueueManual(t.pool, "gate_f", {}),
      await enqueueManual(t.pool, "gate_f", {}),
    ] as [string, string];
    const { rows: gone } = await t.pool.query<{ id: string }>(
      `select id from graphile_worker.complete_jobs(
         array[(graphile_worker.add_job('not_pgfn', '{}')).id])`,
    );
    const { rows: started } = await t.pool.query<{ run_id: string }>(
      `select run_id from pgfn.begin_run($1, 'gate-dead', $2)`,
      [e1, gone[0]!.id],
    );
    expect(started[0]!.run_id).not.toBeNull();
    await t.pool.query(
      `insert into pgfn.daemons (id, heartbeat_at) values ('gate-dead', now() - interval '1 hour')`,
    );

    await t.pool.query(
      `select pgfn.reap_dead_daemons(interval '60 seconds', interval '2 seconds')`,
    );
    expect(await begin(e2)).toMatchObject({ run_id: null, refused: "ORDERING" });
    const { rows } = await t.pool.query<{ attempt: number; refused: string | null }>(
      `select b.attempt, b.refused from graphile_worker.jobs j,
         pgfn.begin_run($1, 'gate-dead', j.id) b where j.key = $2`,
      [e1, `pgfn:retry:${e1}:2`],
    );
    expect(rows).toEqual([{ attempt: 2, refused: null }]);
    await t.pool.query(`select graphile_worker.remove_job($1)`, [`pgfn:retry:${e1}:2`]);
  });
});

/** The function's runs, in the order they started. */
async function runsOf(fn: string): Promise<Run[]> {
  const { rows } = await t.pool.query<Run>(
    `select id, event_id, attempt, status, started_at, finished_at, worker_id
     from pgfn.function_runs where function_name = $1 order by started_at, id`,
    [fn],
  );
  return rows;
}

/** Pairs of runs that were in progress at the same instant. */
function overlaps(runs: readonly Run[]): [string, string][] {
  const found: [string, string][] = [];
  runs.forEach((r, i) => {
    for (const s of runs.slice(i + 1)) {
      if (s.started_at < r.finished_at && r.started_at < s.finished_at) found.push([r.id, s.id]);
    }
  });
  return found;
}

describe("two daemons", () => {
  const daemons: Daemon[] = [];
  beforeAll(async () => {
    // Production's worker (localQueue on, several jobs at once), twice.
    for (const daemonId of ["one", "two"]) {
      daemons.push(await t.startDaemon({ daemonId, workerConcurrency: 4, pollIntervalMs: 100 }));
    }
  });
  afterAll(async () => {
    await Promise.all(daemons.map((d) => d.stop()));
  });

  it("start the events of an ordered function one at a time, in commit order", async () => {
    // One writer, one event per transaction, while the daemons run.
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push(await enqueueManual(t.pool, "in_order", { millions: 2 }));
    const runs = await waitFor(
      async () => {
        const runs = await runsOf("in_order");
        return runs.filter((r) => r.status === "succeeded").length === ids.length
          ? runs
          : undefined;
      },
      { timeoutMs: 150_000, message: "all 30 events of in_order to succeed" },
    );
    expect({ order: runs.map((r) => r.event_id), overlaps: overlaps(runs) }).toEqual({
      order: ids,
      overlaps: [],
    });
    // Waiting for its turn is not an attempt.
    expect(runs.every((r) => r.attempt === 1)).toBe(true);
  }, 180_000);

  it("refuse a synchronous invoke while an earlier event is pending, and run it otherwise", async () => {
    // gate_a still has an attempt running (left by the first test).
    const error = await invokeNow(daemons[0]!.executor, "gate_a", {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PgfnError);
    expect(error).toMatchObject({ code: "CONCURRENCY_LIMIT" });
    expect(HTTP_STATUS[(error as PgfnError).code]).toBe(429);
    expect((error as Error).message).toMatch(/one at a time in order/);
    const run = await invokeNow(daemons[1]!.executor, "in_order", { millions: 1 });
    expect(run.status).toBe("succeeded");
  });

  it("hold the events behind a failing one until it succeeds or becomes a dead letter", async () => {
    const payloads = [{}, {}, { permanent: true }, {}, {}];
    const ids: string[] = [];
    for (const p of payloads) ids.push(await enqueueManual(t.pool, "held", p));
    const runs = await waitFor(
      async () => {
        const runs = await runsOf("held");
        const last = runs.some((r) => r.event_id === ids[4] && r.status === "succeeded");
        return last && runs.every((r) => r.status !== "running") ? runs : undefined;
      },
      { timeoutMs: 150_000, message: "the last event of held to succeed" },
    );
    // Each event's attempts, then the next event's: none starts before the
    // one ahead of it succeeded at its third attempt, or failed for good.
    expect(runs.map((r) => [r.event_id, r.attempt, r.status])).toEqual([
      [ids[0], 1, "failed"],
      [ids[0], 2, "failed"],
      [ids[0], 3, "succeeded"],
      [ids[1], 1, "failed"],
      [ids[1], 2, "failed"],
      [ids[1], 3, "succeeded"],
      [ids[2], 1, "failed"],
      [ids[3], 1, "failed"],
      [ids[3], 2, "failed"],
      [ids[3], 3, "succeeded"],
      [ids[4], 1, "failed"],
      [ids[4], 2, "failed"],
      [ids[4], 3, "succeeded"],
    ]);
    expect(overlaps(runs)).toEqual([]);
    const { rows: dead } = await t.pool.query(
      `select event_id from pgfn.dead_letters where function_name = 'held'`,
    );
    expect(dead).toEqual([{ event_id: ids[2] }]);
  }, 180_000);
});
