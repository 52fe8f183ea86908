// Each failure mode of the sandbox as a user sees it: a function_runs row
// with status, error_code, http_status and message, while the daemon keeps
// serving the other functions.
import { beforeAll, expect, it } from "vitest";
import { enqueueManual, finishedRun } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("sandbox_runs");

beforeAll(async () => {
  await t.deploy("echo");
  await t.deploy("spin", { timeoutMs: 3000 });
  await t.deploy("hog", { memoryLimitMb: 16 });
  await t.deploy("fail");
  await t.deploy("leaky", { example: "secret", env: { API_KEY: "sk-live-123456", REGION: "eu" } });
  await t.deploy("leaky_long", { example: "secret", env: { API_KEY: LONG_KEY, REGION: "eu" } });
  await t.startDaemon();
});

/** A secret longer than a log line is kept: cut before redaction, it would leak whole but its tail. */
const LONG_KEY = `sk-${"0123456789".repeat(500)}`;

const invokeAsync = (fn: string, payload: unknown) => enqueueManual(t.pool, fn, payload);
const finished = (eventId: string) => finishedRun(t.pool, eventId);

it("records a timeout as TIMEOUT / 504 while other functions keep running", async () => {
  const spinning = await invokeAsync("spin", {});
  // Started while spin holds a thread: these must not wait for its timeout.
  const echoes = await Promise.all(Array.from({ length: 5 }, (_, i) => invokeAsync("echo", { i })));
  const echoRuns = await Promise.all(echoes.map((id) => finished(id)));
  const spinRun = await finished(spinning);
  expect(spinRun).toMatchObject({
    status: "failed",
    error_code: "TIMEOUT",
    http_status: 504,
    error_message: "The handler ran past its 3000 ms limit and was stopped.",
  });
  // Stopped at its limit, not before. libuv times timers from the loop's
  // cached millisecond clock, so they can fire up to ~1 ms early by
  // performance.now(), which duration_ms uses (CI saw 2999.96).
  expect(spinRun.duration_ms).toBeGreaterThanOrEqual(2995);
  for (const r of echoRuns) {
    expect(r.status).toBe("succeeded");
    expect(r.finished_at.getTime()).toBeLessThan(spinRun.finished_at.getTime());
  }
});

it("records a memory bomb as MEMORY_EXCEEDED / 507 with the peak", async () => {
  const run = await finished(await invokeAsync("hog", { mb: 100 }));
  expect(run).toMatchObject({ status: "failed", error_code: "MEMORY_EXCEEDED", http_status: 507 });
  expect(run.error_message).toMatch(/past its limit of 16 MB/);
  expect(Number(run.memory_peak_bytes)).toBeGreaterThan(0);
  expect(Number(run.memory_peak_bytes)).toBeLessThanOrEqual(16 * 1024 * 1024);
  const ok = await finished(await invokeAsync("hog", { mb: 4 }));
  expect(ok).toMatchObject({ status: "succeeded", result: { allocated_mb: 4 }, http_status: 200 });
  expect(Number(ok.memory_peak_bytes)).toBeGreaterThanOrEqual(4 * 1024 * 1024);
});

it("records a trap as FUNCTION_ERROR / 500 with the handler's message and its logs", async () => {
  const run = await finished(await invokeAsync("fail", {}));
  expect(run).toMatchObject({ status: "failed", error_code: "FUNCTION_ERROR", http_status: 500 });
  expect(run.error_message).toMatch(
    /^demo failure at examples\/fail\/index\.ts:\d+:\d+ \(trap: unreachable\)$/,
  );
  expect(run.logs).toEqual([
    expect.objectContaining({ level: "error", message: expect.stringMatching(/^demo failure/) }),
  ]);
});

it("gives a handler its env and redacts secret values from its logs and errors", async () => {
  const run = await finished(await invokeAsync("leaky", {}));
  expect(run.error_message).toBe("upstream rejected key [redacted]");
  expect(run.logs.map((l: { message: string }) => l.message)).toEqual([
    "using key [redacted] in eu",
  ]);
  expect(JSON.stringify(run)).not.toContain("sk-live-123456");
});

it("redacts a secret before cutting a long message, so no part of it survives the cut", async () => {
  const run = await finished(await invokeAsync("leaky_long", {}));
  expect(run.error_message).toBe("upstream rejected key [redacted]");
  expect(run.logs.map((l: { message: string }) => l.message)).toEqual([
    "using key [redacted] in eu",
  ]);
  expect(JSON.stringify(run)).not.toContain("sk-0123456789");
});

it("redacts a secret in output that is not JSON before cutting it for the error message", async () => {
  const run = await finished(await invokeAsync("leaky", { mode: "notjson" }));
  expect(run.error_code).toBe("FUNCTION_ERROR");
  expect(run.error_message).toMatch(/^handler output is not JSON: x{195} \[red/);
  expect(run.error_message).not.toMatch(/sk-/);
});

it("still serves everyone after all of the above", async () => {
  const runs = await Promise.all(
    Array.from({ length: 20 }, async (_, i) => finished(await invokeAsync("echo", { after: i }))),
  );
  expect(runs.every((r) => r.status === "succeeded")).toBe(true);
});
