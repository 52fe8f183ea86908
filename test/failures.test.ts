// Failure handling as a user sees it: retries only where they help, with
// jittered backoff, dead letters, the error handler, and the psql operations.
import { beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { retryDelayMs } from "../src/worker/policy.js";
import { enqueueManual, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("failures");
let daemon: Daemon | undefined;

beforeAll(async () => {
  await t.deploy("watchdog", { example: "echo" });
  await t.deploy("flaky", {
    maxAttempts: 5,
    retryBaseMs: 200,
    retryMaxMs: 400,
    onError: "watchdog",
  });
  await t.deploy("fail", { onError: "watchdog" });
  await t.deploy("hog", { memoryLimitMb: 16 });
  await t.deploy("spin", {
    timeoutMs: 1000,
    maxAttempts: 2,
    retryBaseMs: 0,
    retryMaxMs: 0,
    onError: "watchdog",
  });
  await t.deploy("echo");
  await t.deploy("failing_watchdog", { example: "fail" });
  await t.deploy("fail_twice", { example: "fail", onError: "failing_watchdog" });
  daemon = await t.startDaemon({ pollIntervalMs: 100 });
});

async function runsOf(eventId: string) {
  return (
    await t.pool.query(`select * from pgfn.function_runs where event_id = $1 order by attempt`, [
      eventId,
    ])
  ).rows;
}

async function settled(eventId: string, n: number, timeoutMs = 15_000) {
  return waitFor(
    async () => {
      const runs = await runsOf(eventId);
      return runs.length >= n &&
        runs.every((r) => r.status !== "running") &&
        !runs.at(-1)?.will_retry
        ? runs
        : undefined;
    },
    { timeoutMs, message: `${n} settled runs of event ${eventId}` },
  );
}

describe("retries", () => {
  it("retries a handler that asks for it, with jittered backoff within the policy, until it succeeds", async () => {
    const ids = await Promise.all(
      Array.from({ length: 6 }, (_, i) => enqueueManual(t.pool, "flaky", { i })),
    );
    const delays: number[] = [];
    for (const id of ids) {
      const runs = await settled(id, 3);
      expect(runs.map((r) => [r.attempt, r.status, r.will_retry])).toEqual([
        [1, "failed", true],
        [2, "failed", true],
        [3, "succeeded", false],
      ]);
      expect(runs[0].error_message).toBe("Email service down");
      expect(runs[2].result).toEqual({ sent: true, attempt: 3 });
      for (const [i, ceiling] of [
        [0, 200],
        [1, 400],
      ] as const) {
        const delay = runs[i].next_attempt_at.getTime() - runs[i].finished_at.getTime();
        expect(delay).toBeGreaterThanOrEqual(-5);
        expect(delay).toBeLessThanOrEqual(ceiling + 5);
        // The next attempt starts no earlier than scheduled.
        expect(runs[i + 1].started_at.getTime()).toBeGreaterThanOrEqual(
          runs[i].next_attempt_at.getTime() - 5,
        );
        delays.push(delay);
      }
    }
    // Jitter: twelve delays drawn from [0, 200) and [0, 400) are not all alike.
    expect(new Set(delays.map((d) => Math.round(d / 10))).size).toBeGreaterThan(3);
    const dead = await t.pool.query(
      `select count(*)::int as n from pgfn.dead_letters where function_name = 'flaky'`,
    );
    expect(dead.rows[0].n).toBe(0);
  });

  it("never retries a handler error, a memory bomb, or a handler that says so: dead letters", async () => {
    const fail = await enqueueManual(t.pool, "fail", {});
    const hog = await enqueueManual(t.pool, "hog", { mb: 64 });
    const never = await enqueueManual(t.pool, "flaky", { permanent: true });
    for (const [id, code] of [
      [fail, "FUNCTION_ERROR"],
      [hog, "MEMORY_EXCEEDED"],
      [never, "FUNCTION_ERROR"],
    ] as const) {
      const runs = await settled(id, 1);
      expect(runs).toHaveLength(1);
      expect(runs[0]).toMatchObject({
        status: "failed",
        error_code: code,
        will_retry: false,
        next_attempt_at: null,
      });
      const dl = await t.pool.query(`select * from pgfn.dead_letters where event_id = $1`, [id]);
      expect(dl.rows).toEqual([
        expect.objectContaining({ error_code: code, last_run_id: runs[0].id, resolved_at: null }),
      ]);
    }
  });

  it("retries a timeout up to max_attempts, then reports it to the error handler with the event, once", async () => {
    const id = await enqueueManual(t.pool, "spin", { job: "nightly" });
    const runs = await settled(id, 2, 20_000);
    expect(runs.map((r) => [r.attempt, r.error_code, r.will_retry])).toEqual([
      [1, "TIMEOUT", true],
      [2, "TIMEOUT", false],
    ]);
    const handled = await waitFor(async () => {
      const { rows } = await t.pool.query(
        `select r.result from pgfn.events e join pgfn.function_runs r on r.event_id = e.id
         where e.function_name = 'watchdog' and e.source = 'error_handler' and (e.payload->'event'->>'id')::bigint = $1`,
        [id],
      );
      return rows[0]?.result;
    });
    // The watchdog (an echo) got the original event as spin's handler did,
    // the failed run and the error.
    expect(handled).toMatchObject({
      trigger: "error_handler",
      function: "watchdog",
      payload: {
        event: {
          id: Number(id),
          attempt: 2,
          trigger: "manual",
          function: "spin",
          payload: { job: "nightly" },
        },
        run: { attempt: 2, error_code: "TIMEOUT", http_status: 504 },
        error: {
          code: "TIMEOUT",
          message: "The handler ran past its 1000 ms limit and was stopped.",
        },
      },
    });
    const reports = await t.pool.query(
      `select count(*)::int as n from pgfn.events
       where source = 'error_handler' and (payload->'event'->>'id')::bigint = $1`,
      [id],
    );
    expect(reports.rows[0].n).toBe(1);
  }, 30_000);

  it("does not let a failing error handler trigger another error handler", async () => {
    // An error handler of its own: only the loop guard keeps the failing
    // error handler's failure from going further.
    await t.pool.query(
      `update pgfn.functions set on_error = 'watchdog' where name = 'failing_watchdog'`,
    );
    const id = await enqueueManual(t.pool, "fail_twice", {});
    await settled(id, 1);
    const handlerEvent = await waitFor(async () => {
      const { rows } = await t.pool.query(
        `select id from pgfn.events where function_name = 'failing_watchdog' and (payload->'event'->>'id')::bigint = $1`,
        [id],
      );
      return rows[0]?.id as string | undefined;
    });
    const handlerRuns = await settled(handlerEvent, 1);
    expect(handlerRuns[0].status).toBe("failed");
    const further = await t.pool.query(
      `select count(*)::int as n from pgfn.events where source = 'error_handler' and (payload->'event'->>'id')::bigint = $1`,
      [handlerEvent],
    );
    expect(further.rows[0].n).toBe(0);
  });
});

describe("the backoff", () => {
  it("is full jitter under an exponential, capped ceiling, with retry_after as a floor", () => {
    const policy = { maxAttempts: 10, baseMs: 1000, maxMs: 300_000 };
    expect(
      [1, 2, 3, 9, 10, 20].map((a) => retryDelayMs(policy, a, { code: "TIMEOUT" }, () => 0.999999)),
    ).toEqual([999, 1999, 3999, 255999, 299999, 299999]);
    expect(retryDelayMs(policy, 1, { code: "TIMEOUT" }, () => 0)).toBe(0);
    expect(retryDelayMs(policy, 1, { code: "FUNCTION_ERROR", retryAfterMs: 5000 }, () => 0.5)).toBe(
      5000,
    );
  });
});

describe("psql operations", () => {
  it("a disabled function's events become dead letters; enable + retry_dead_letters runs them", async () => {
    expect((await t.pool.query(`select pgfn.disable('echo') as v`)).rows[0].v).toBe(false);
    const ids = [
      await enqueueManual(t.pool, "echo", { n: 1 }),
      await enqueueManual(t.pool, "echo", { n: 2 }),
    ];
    for (const id of ids) {
      const [run] = await settled(id, 1);
      expect(run).toMatchObject({ error_code: "FUNCTION_NOT_FOUND", http_status: 404 });
    }
    expect((await t.pool.query(`select pgfn.enable('echo') as v`)).rows[0].v).toBe(true);
    const retried = await t.pool.query(`select pgfn.retry_dead_letters('echo') as n`);
    expect(retried.rows[0].n).toBe(2);
    const dl = await t.pool.query(
      `select d.resolved_at is not null as resolved, e.replay_of from pgfn.dead_letters d join pgfn.events e on e.id = d.retried_event_id where d.function_name = 'echo' order by d.event_id`,
    );
    expect(dl.rows).toEqual(ids.map((id) => ({ resolved: true, replay_of: id })));
    const replays = await t.pool.query(
      `select retried_event_id as id from pgfn.dead_letters where function_name = 'echo' order by id`,
    );
    for (const { id } of replays.rows) expect((await settled(id, 1))[0].status).toBe("succeeded");
    expect((await t.pool.query(`select pgfn.retry_dead_letters('echo') as n`)).rows[0].n).toBe(0);
  });

  it("a retry's and a replay's handler get a new id and the original's idempotency_key", async () => {
    const original = await enqueueManual(t.pool, "echo", { order: 7 });
    const [first] = await settled(original, 1);
    expect(first.result).toMatchObject({ id: Number(original), idempotency_key: Number(original) });
    const retried = (await t.pool.query(`select pgfn.retry($1) as id`, [first.id])).rows[0].id;
    // A replay of the retry, and a forced second replay of the original.
    const replayed = (await t.pool.query(`select pgfn.replay($1) as id`, [retried])).rows[0].id;
    const forced = (await t.pool.query(`select pgfn.replay($1, force => true) as id`, [original]))
      .rows[0].id;
    for (const id of [retried, replayed, forced]) {
      const [run] = await settled(id, 1);
      expect(run.result).toEqual({
        id: Number(id),
        attempt: 1,
        idempotency_key: Number(original),
        trigger: "manual",
        function: "echo",
        payload: { order: 7 },
        timestamp: expect.any(String),
      });
    }
  });

  it("work queued while no daemon runs waits for one: invoke_async, retry, replay", async () => {
    await daemon!.stop();
    daemon = undefined;
    const invoked = (
      await t.pool.query(`select pgfn.invoke_async('echo', '{"hello":"psql"}') as id`)
    ).rows[0].id;
    const lastFail = (
      await t.pool.query(
        `select id from pgfn.function_runs where function_name = 'fail' order by id desc limit 1`,
      )
    ).rows[0].id;
    const retried = (await t.pool.query(`select pgfn.retry($1) as id`, [lastFail])).rows[0].id;
    const pending = await t.pool.query(
      `select event_id::text from pgfn.pending where event_id in ($1, $2) order by 1`,
      [invoked, retried],
    );
    expect(pending.rows.map((r) => r.event_id).sort()).toEqual(
      [String(invoked), String(retried)].sort(),
    );
    daemon = await t.startDaemon({ pollIntervalMs: 100 });
    expect((await settled(invoked, 1))[0]).toMatchObject({
      status: "succeeded",
      result: { payload: { hello: "psql" } },
    });
    expect((await settled(retried, 1))[0]).toMatchObject({
      status: "failed",
      error_code: "FUNCTION_ERROR",
    });
  });

  it("refuses bad input with a clear message", async () => {
    await expect(t.pool.query(`select pgfn.retry(999999999)`)).rejects.toThrow(
      "pgfn.retry: there is no run 999999999",
    );
    await expect(t.pool.query(`select pgfn.replay(999999999)`)).rejects.toThrow(
      "pgfn.replay: there is no event 999999999",
    );
    await expect(t.pool.query(`select pgfn.invoke_async('Bad Name', '{}')`)).rejects.toThrow(
      /invalid function name 'Bad Name'/,
    );
    await expect(t.pool.query(`select pgfn.enable('nope')`)).rejects.toThrow(
      "there is no function 'nope'",
    );
    await expect(t.pool.query(`select pgfn.prune('-1 day')`)).rejects.toThrow(/positive interval/);
  });

  it("views show failures and stats; prune deletes finished history only", async () => {
    const failures = await t.pool.query(
      `select function_name, error_code from pgfn.failures where function_name = 'hog'`,
    );
    expect(failures.rows).toContainEqual({ function_name: "hog", error_code: "MEMORY_EXCEEDED" });
    // The view's figures for flaky against its runs, counted here.
    const stats = await t.pool.query(`select * from pgfn.stats where function_name = 'flaky'`);
    const flaky = (
      await t.pool.query<{ status: string }>(
        `select status from pgfn.function_runs where function_name = 'flaky'`,
      )
    ).rows;
    const failed = flaky.filter((r) => r.status === "failed" || r.status === "abandoned").length;
    expect(failed).toBeGreaterThan(0);
    expect([stats.rows[0].runs, stats.rows[0].succeeded, stats.rows[0].failed].map(Number)).toEqual(
      [flaky.length, flaky.filter((r) => r.status === "succeeded").length, failed],
    );
    expect(Number(stats.rows[0].error_rate)).toBeCloseTo(failed / flaky.length, 4);
    expect(Number(stats.rows[0].p95_ms)).toBeGreaterThanOrEqual(Number(stats.rows[0].p50_ms));

    const before = (await t.pool.query(`select count(*)::int as n from pgfn.events`)).rows[0].n;
    expect((await t.pool.query(`select pgfn.prune('1 hour') as n`)).rows[0].n).toBe(0); // all recent
    const pruned = (await t.pool.query(`select pgfn.prune('0 seconds') as n`)).rows[0].n;
    const open = (
      await t.pool.query(
        `select count(*)::int as n from pgfn.dead_letters where resolved_at is null`,
      )
    ).rows[0].n;
    expect(pruned).toBeGreaterThan(0);
    const after = (await t.pool.query(`select count(*)::int as n from pgfn.events`)).rows[0].n;
    expect(after).toBe(before - pruned);
    // Open dead letters keep their events.
    expect(
      (
        await t.pool.query(
          `select count(*)::int as n from pgfn.dead_letters where resolved_at is null`,
        )
      ).rows[0].n,
    ).toBe(open);
    // A replay whose original was pruned forgets it, and nothing points at a deleted event.
    expect(
      (
        await t.pool.query(
          `select count(*)::int as n from pgfn.events e
           where e.replay_of is not null and not exists (select 1 from pgfn.events o where o.id = e.replay_of)`,
        )
      ).rows[0].n,
    ).toBe(0);
  });

  it("prune waits for every event a batch job still has to run", async () => {
    // Two events in one job (as dispatch makes them) that no daemon ran yet;
    // the first already has a finished run (a job that runs again).
    const { rows } = await t.pool.query<{ id: string }>(
      `insert into pgfn.events (function_name, source, payload, created_at, dispatched_at)
       select 'echo', 'manual', '{}', now() - interval '1 day', now() from generate_series(1, 2) returning id`,
    );
    const [first, second] = rows.map((r) => r.id);
    await t.pool.query(
      `select graphile_worker.add_job('pgfn_run', json_build_object('event_ids', array[$1::bigint, $2::bigint]),
         run_at => now() + interval '1 hour', job_key => 'pgfn:batch:' || $1)`,
      [first, second],
    );
    await t.pool.query(
      `insert into pgfn.function_runs (event_id, function_name, attempt, status, finished_at)
       values ($1, 'echo', 1, 'failed', now()), ($2, 'echo', 1, 'failed', now())`,
      [first, second],
    );
    await t.pool.query(`select pgfn.prune('1 hour')`);
    const left = await t.pool.query(`select id from pgfn.events where id = any ($1::bigint[])`, [
      [first, second],
    ]);
    expect(left.rowCount).toBe(2);
    await t.pool.query(
      `delete from graphile_worker._private_jobs where key = 'pgfn:batch:' || $1`,
      [first],
    );
  });
});
