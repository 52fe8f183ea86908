// What a handler writes that Postgres cannot store (U+0000, lone UTF-16
// surrogates) never fails the statement that records its run: output is a
// FUNCTION_ERROR, handled by the failure model like any other (dead letter,
// on_error, no retry); logs and messages are stored with U+FFFD instead.
import { beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { invokeNow } from "../src/invokeNow.js";
import type { SandboxPool } from "../src/sandbox/pool.js";
import { enqueueManual, finishedRun, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("unstorable");
let daemon: Daemon;

beforeAll(async () => {
  await t.deploy("watchdog", { example: "echo" });
  await t.deploy("unstorable", { onError: "watchdog" });
  daemon = await t.startDaemon({ pollIntervalMs: 100 });
});

/** The event's pgfn_run jobs still in graphile-worker (waiting, or failed and to be retried). */
async function jobsOf(eventId: string): Promise<number> {
  const { rows } = await t.pool.query(
    `select count(*)::int as n from graphile_worker.jobs
     where key in ('pgfn:event:' || $1, 'pgfn:wait:' || $1) or key like 'pgfn:retry:' || $1 || ':%'`,
    [eventId],
  );
  return rows[0].n;
}

it("output with \\u0000 is a FUNCTION_ERROR: dead-lettered, handed to on_error, its job done", async () => {
  const eventId = await enqueueManual(t.pool, "unstorable", { mode: "output_nul" });
  const run = await finishedRun(t.pool, eventId);
  expect(run).toMatchObject({
    attempt: 1,
    status: "failed",
    error_code: "FUNCTION_ERROR",
    http_status: 500,
    will_retry: false,
    result: null,
  });
  expect(run.error_message).toMatch(
    /The handler's output contains \\u0000 \(a NUL character\), which Postgres jsonb cannot store/,
  );
  const dead = await t.pool.query(`select error_code from pgfn.dead_letters where event_id = $1`, [
    eventId,
  ]);
  expect(dead.rows).toEqual([{ error_code: "FUNCTION_ERROR" }]);
  const handled = await t.pool.query(
    `select payload -> 'error' ->> 'code' as code from pgfn.events
     where source = 'error_handler' and function_name = 'watchdog'
       and (payload -> 'event' ->> 'id')::bigint = $1`,
    [eventId],
  );
  expect(handled.rows).toEqual([{ code: "FUNCTION_ERROR" }]);
  await waitFor(async () => (await jobsOf(eventId)) === 0, {
    message: "the event's job to complete, not wait for a retry",
  });
  const runs = await t.pool.query(
    `select count(*)::int as n from pgfn.function_runs where event_id = $1`,
    [eventId],
  );
  expect(runs.rows[0].n).toBe(1);
});

it("output with a lone surrogate is a FUNCTION_ERROR too, also when invoked synchronously", async () => {
  const run = await invokeNow(daemon.executor, "unstorable", { mode: "output_surrogate" });
  expect(run).toMatchObject({ status: "failed", error_code: "FUNCTION_ERROR", http_status: 500 });
  expect(run.error_message).toMatch(/contains a lone surrogate \(\\ud800\), which Postgres jsonb/);
});

it("a NUL byte in a log line is stored as U+FFFD and the run succeeds", async () => {
  const eventId = await enqueueManual(t.pool, "unstorable", { mode: "log_nul" });
  const run = await finishedRun(t.pool, eventId);
  expect(run).toMatchObject({ status: "succeeded", result: { ok: true } });
  expect(run.logs.map((l: { message: string }) => l.message)).toEqual(["before\uFFFDafter"]);
});

it("lone surrogates and NULs in logs and in an error message are stored as U+FFFD", async () => {
  // A sandbox that answers as a handler in another language could: Extism
  // decodes a module's UTF-8 itself, so no example module can send these.
  const sandbox = {
    invoke: async () => ({
      ok: false,
      output: null,
      error: { code: "FUNCTION_ERROR", message: "bad \ud800 and \u0000" },
      durationMs: 1,
      logs: [
        {
          level: "info",
          message: "half \udc00 a pair, a whole \u{1F600}",
          at: new Date().toISOString(),
        },
      ],
    }),
  } as unknown as SandboxPool;
  const run = await invokeNow({ ...daemon.executor, sandbox }, "unstorable", {});
  expect(run).toMatchObject({
    status: "failed",
    error_code: "FUNCTION_ERROR",
    error_message: "bad \uFFFD and \uFFFD",
  });
  expect(run.logs).toMatchObject([{ message: "half \uFFFD a pair, a whole \u{1F600}" }]);
});

it("output nested deeper than 1000 levels is a FUNCTION_ERROR, not an internal error", async () => {
  let deep: unknown = [];
  for (let i = 0; i < 6000; i++) deep = [deep];
  const sandbox = {
    invoke: async () => ({ ok: true, output: deep, durationMs: 1, logs: [] }),
  } as unknown as SandboxPool;
  const run = await invokeNow({ ...daemon.executor, sandbox }, "unstorable", {});
  expect(run).toMatchObject({ status: "failed", error_code: "FUNCTION_ERROR", result: null });
  expect(run.error_message).toMatch(/nested deeper than 1000 levels/);
});
