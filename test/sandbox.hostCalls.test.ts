// A host call can fail in every way without taking the daemon down: a
// binding that throws or rejects, a value that cannot become JSON, a reply
// too big for the shared buffer. Each is the call's error (issue 10, finding 3).
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { sha256Hex } from "../src/sandbox/module.js";
import type { HostBinding } from "../src/sandbox/pool.js";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.js";
import { exampleWasm } from "./helpers.js";

let sandbox: Sandbox;
let query: WebAssembly.Module;
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => void unhandled.push(reason);

beforeAll(async () => {
  process.on("unhandledRejection", onUnhandled);
  sandbox = createSandbox({ size: 1, maxInvocationsPerThread: 50 });
  // Started before the first test: a thread's start is slow on a busy machine.
  await sandbox.pool.warm();
  const wasm = await readFile(exampleWasm("query"));
  query = await sandbox.modules.get(sha256Hex(wasm), async () => wasm);
});
afterAll(async () => {
  process.off("unhandledRejection", onUnhandled);
  await sandbox?.close();
});

/** Runs the query example with `db_query` answered by `binding`. */
const run = (binding: HostBinding) =>
  sandbox.pool.invoke({
    module: query,
    input: { sql: "select 1", params: [] },
    // Generous: a timeout here would hide the error under test as TIMEOUT.
    timeoutMs: 30_000,
    memoryLimitBytes: 32 * 1024 * 1024,
    host: { db_query: binding },
  });

it("turns a value that cannot be JSON into the call's error, not an unhandled rejection", async () => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  const values: unknown[] = [
    { big: 10n },
    cyclic,
    {
      get rows() {
        throw new RangeError("Invalid string length");
      },
    },
  ];
  for (const value of values) {
    const outcome = await run(async () => value);
    expect(outcome.error?.code).toBe("HOST_FUNCTION_ERROR");
    expect(outcome.error?.message).toContain("could not be sent to the handler");
  }
  // Give a stray rejection the turn it would need to surface.
  await new Promise((resolve) => setImmediate(resolve));
  expect(unhandled).toEqual([]);
});

it("reports a binding that throws anything, even a value whose message getter throws", async () => {
  const hostile = {
    get message(): string {
      throw new Error("no");
    },
  };
  for (const binding of [
    () => {
      throw hostile;
    },
    () => Promise.reject(new Error("refused")),
  ] as HostBinding[]) {
    const outcome = await run(binding);
    expect(outcome.error?.code).toBe("HOST_FUNCTION_ERROR");
  }
  await new Promise((resolve) => setImmediate(resolve));
  expect(unhandled).toEqual([]);
});

it("fails a reply too big for the shared buffer with its size", async () => {
  const outcome = await run(async () => ({ rows: ["x".repeat(5 * 1024 * 1024)] }));
  expect(outcome.error?.code).toBe("HOST_FUNCTION_ERROR");
  expect(outcome.error?.message).toMatch(/db_query's result is \d+ bytes; at most \d+ fit/);
});

it("fails a run whose host functions cannot be prepared, for good, without running it", async () => {
  const outcome = await sandbox.pool.invoke({
    module: query,
    input: { sql: "select 1", params: [] },
    timeoutMs: 30_000,
    memoryLimitBytes: 32 * 1024 * 1024,
    host: () => {
      throw new Error("no connection string");
    },
  });
  expect(outcome).toEqual({
    ok: false,
    output: null,
    error: {
      code: "HOST_FUNCTION_ERROR",
      message: "The host functions could not be prepared: no connection string",
      transient: false,
    },
    durationMs: 0,
    logs: [],
  });
});
