// The sandbox's hard limits, through the thread pool: timeouts kill, memory
// is capped, threads are recycled, and a stuck handler delays no one else.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../src/sandbox/module.js";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.js";
import { exampleWasm, waitFor } from "./helpers.js";

let sandbox: Sandbox;
const modules: Record<string, WebAssembly.Module> = {};
const MB = 1024 * 1024;

beforeAll(async () => {
  sandbox = createSandbox({ size: 3, maxInvocationsPerThread: 50 });
  await sandbox.pool.warm();
  for (const name of ["echo", "spin", "hog", "fail", "counter", "demo", "notjson"]) {
    const wasm = await readFile(exampleWasm(name));
    modules[name] = await sandbox.modules.get(sha256Hex(wasm), async () => wasm);
  }
});
afterAll(() => sandbox?.close());

const run = (
  name: string,
  input: unknown = {},
  limits: { timeoutMs?: number; memoryMb?: number } = {},
) =>
  sandbox.pool.invoke({
    module: modules[name]!,
    input,
    timeoutMs: limits.timeoutMs ?? 5000,
    memoryLimitBytes: (limits.memoryMb ?? 16) * MB,
  });

describe("timeout", () => {
  // How late past the deadline the TIMEOUT comes back is measured in
  // bench:sandbox ("loop -> TIMEOUT"), not here: on a loaded machine any
  // bound tight enough to mean something fails for the wrong reason.
  it("stops an infinite loop at its timeout as TIMEOUT, and the next run works", async () => {
    const started = performance.now();
    const outcome = await run("spin", {}, { timeoutMs: 1000 });
    const elapsed = performance.now() - started;
    expect(outcome.error).toEqual({
      code: "TIMEOUT",
      message: "The handler ran past its 1000 ms limit and was stopped.",
    });
    expect(elapsed).toBeGreaterThanOrEqual(999);
    expect(sandbox.pool.counters.killed).toBeGreaterThanOrEqual(1);
    expect((await run("echo", { after: "kill" })).output).toEqual({ after: "kill" });
  });

  it("keeps serving other handlers while one loops (the bulkhead)", async () => {
    // Long enough that fifty echoes end first even on a loaded machine.
    const looping = run("spin", {}, { timeoutMs: 10_000 });
    for (let i = 0; i < 50; i++) expect((await run("echo", { i })).output).toEqual({ i });
    // Fifty echoes finish while the loop still holds its thread.
    expect(await Promise.race([looping, Promise.resolve("still looping")])).toBe("still looping");
    expect((await looping).error?.code).toBe("TIMEOUT");
  });
});

describe("memory", () => {
  it("fails a handler that grows past its limit step by step as MEMORY_EXCEEDED", async () => {
    const outcome = await run("hog", { mb: 64 }, { memoryMb: 16 });
    expect(outcome.ok).toBe(false);
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
    expect(outcome.error?.message).toMatch(
      /^Memory limit exceeded: the handler asked to grow its memory from \d+ MB by \d+ MB, past its limit of 16 MB/,
    );
    expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(16 * MB);
  });

  it("fails one huge allocation as MEMORY_EXCEEDED, not as a trap", async () => {
    const outcome = await run("hog", { mb: 200, once: true }, { memoryMb: 32 });
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
    expect(outcome.error?.message).toMatch(/by 200 MB, past its limit of 32 MB/);
  });

  it("lets a handler use memory under its limit and reports the peak", async () => {
    const outcome = await run("hog", { mb: 8 }, { memoryMb: 32 });
    expect(outcome).toMatchObject({ ok: true, output: { allocated_mb: 8 } });
    expect(outcome.memoryPeakBytes).toBeGreaterThanOrEqual(8 * MB);
    expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(32 * MB);
  });

  it("a trap is FUNCTION_ERROR, distinguishable from MEMORY_EXCEEDED", async () => {
    const outcome = await run("fail", {}, { memoryMb: 16 });
    expect(outcome.error?.code).toBe("FUNCTION_ERROR");
    expect(outcome.error?.message).toMatch(/demo failure/);
  });
});

describe("threads", () => {
  it("gives each invocation a fresh instance, on any thread", async () => {
    const outputs = await Promise.all(Array.from({ length: 12 }, () => run("counter")));
    expect(outputs.map((o) => o.output)).toEqual(Array.from({ length: 12 }, () => ({ calls: 1 })));
  });

  it("replaces a thread after maxInvocationsPerThread invocations", async () => {
    const before = sandbox.pool.counters.recycled;
    for (let i = 0; i < 120; i++) await run("echo", { i });
    expect(sandbox.pool.counters.recycled).toBeGreaterThan(before);
    expect(sandbox.pool.stats.threads).toBeLessThanOrEqual(3);
  });

  it("starts a thread in place of a killed one before anything asks for it", async () => {
    await sandbox.pool.warm();
    expect(sandbox.pool.stats.threads).toBe(3);
    const killed = sandbox.pool.counters.killed;
    expect((await run("spin", {}, { timeoutMs: 1000 })).error?.code).toBe("TIMEOUT");
    expect(sandbox.pool.counters.killed).toBe(killed + 1);
    // Nothing is invoked meanwhile: without the replacement the pool stays at 2.
    await waitFor(async () => sandbox.pool.stats.threads === 3, {
      message: "a thread to start in place of the killed one",
    });
  });

  it("reports output that is not JSON, and error_set, as FUNCTION_ERROR", async () => {
    expect((await run("notjson")).error?.code).toBe("FUNCTION_ERROR");
    expect((await run("notjson")).error?.message).toMatch(/^handler output is not JSON/);
    expect((await run("demo", { nothing: true })).error).toMatchObject({
      code: "FUNCTION_ERROR",
      message: "expected a database event with a new row",
    });
  });
});
