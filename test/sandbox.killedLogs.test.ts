// A handler stopped by the pool keeps what it logged before: the lines of a
// run killed at its deadline (TIMEOUT) or whose thread died are the ones
// needed, and the thread's outcome, which carries the lines otherwise, never
// comes (logRelay.ts). Real sandbox threads, WebAssembly (text compiled with
// Binaryen) and JavaScript handlers; no database needed.
import type { Worker } from "node:worker_threads";
import binaryen from "binaryen";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compileJavaScript } from "../src/sandbox/jsCompile.js";
import { captureLogger, MAX_LOG_LINES, type HandlerLog } from "../src/sandbox/logs.js";
import { sha256Hex, type HandlerModule } from "../src/sandbox/module.js";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.js";

const MB = 1024 * 1024;
let sandbox: Sandbox;

beforeAll(async () => {
  sandbox = createSandbox({ size: 2 });
  await sandbox.pool.warm();
});
afterAll(() => sandbox?.close());

/** A WebAssembly handler that logs `message` at info, then loops. */
async function wasmSpin(message: string): Promise<HandlerModule> {
  const module = binaryen.parseText(`(module
    (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
    (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
    (import "extism:host/env" "log_info" (func $log_info (param i64)))
    (memory 1)
    (data (i32.const 0) ${JSON.stringify(message)})
    ;; Logs memory[0, ${message.length}) at info.
    (func $line (local $a i64) (local $i i32)
      (local.set $a (call $alloc (i64.const ${message.length})))
      (block $done (loop $more
        (br_if $done (i32.ge_u (local.get $i) (i32.const ${message.length})))
        (call $store_u8 (i64.add (local.get $a) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
      (call $log_info (local.get $a)))
    (func (export "handle") (result i32)
      (call $line)
      (loop $forever (br $forever))
      (i32.const 0)))`);
  try {
    const wasm = module.emitBinary();
    return await sandbox.modules.get(sha256Hex(wasm), async () => wasm);
  } finally {
    module.dispose();
  }
}

async function jsHandler(source: string): Promise<HandlerModule> {
  const bytes = new TextEncoder().encode(await compileJavaScript(source, "handler.js"));
  return sandbox.modules.get(sha256Hex(bytes), async () => bytes, "js");
}

// Long enough for a thread's first JavaScript run to start the engine on a
// loaded machine, before the handler logs.
const run = (module: HandlerModule, timeoutMs = 1500) =>
  sandbox.pool.invoke({ module, input: {}, timeoutMs, memoryLimitBytes: 32 * MB });

/** The lines as level and message. */
const said = (logs: readonly { level: string; message: string }[]) =>
  logs.map((l) => [l.level, l.message]);

describe("a handler killed at its deadline keeps the lines it logged", () => {
  it("WebAssembly: log_info, then a loop", async () => {
    const spin = await wasmSpin("about to spin");
    const outcome = await run(spin);
    expect(outcome.error).toEqual({
      code: "TIMEOUT",
      message: "The handler ran past its 1500 ms limit and was stopped.",
    });
    expect(said(outcome.logs)).toEqual([["info", "about to spin"]]);
    expect(Date.parse(outcome.logs[0]!.at)).not.toBeNaN();
  });

  it("JavaScript: ctx.log, then a loop, in order and redacted as any run's", async () => {
    const module = await jsHandler(`export default (event, ctx) => {
      ctx.log.info("about to spin");
      ctx.log.warn("key " + ctx.env.API_KEY, { n: 1 });
      for (;;) {}
    };`);
    const outcome = await sandbox.pool.invoke({
      module,
      input: {},
      timeoutMs: 1500,
      memoryLimitBytes: 32 * MB,
      config: { API_KEY: "sk-live-123456" },
    });
    expect(outcome.error?.code).toBe("TIMEOUT");
    expect(said(outcome.logs)).toEqual([
      ["info", "about to spin"],
      ["warn", 'key [redacted] {"n":1}'],
    ]);
  });

  it("logging in a loop until the deadline keeps at most MAX_LOG_LINES, the first ones, in order", async () => {
    const module = await jsHandler(`export default (event, ctx) => {
      for (let i = 0; ; i++) ctx.log.info("line " + i);
    };`);
    const outcome = await run(module);
    expect(outcome.error?.code).toBe("TIMEOUT");
    expect(outcome.logs).toHaveLength(MAX_LOG_LINES);
    expect(outcome.logs.slice(0, -1).map((l) => l.message)).toEqual(
      Array.from({ length: MAX_LOG_LINES - 1 }, (_, i) => `line ${i}`),
    );
    const last = outcome.logs.at(-1)!;
    expect(last.level).toBe("warn");
    const dropped = Number(/^(\d+) more log lines dropped/.exec(last.message)?.[1]);
    // A loop logs far more than the cap before its deadline, even on a loaded machine.
    expect(dropped).toBeGreaterThan(0);
  });

  it("and only those: not the lines of the runs its thread ran before", async () => {
    const echo = await jsHandler(
      `export default (event, ctx) => { ctx.log.info("echo"); return 1; };`,
    );
    for (let i = 0; i < 4; i++) {
      const outcome = await run(echo);
      expect(outcome.output).toBe(1);
      expect(said(outcome.logs)).toEqual([["info", "echo"]]);
    }
    // A free thread takes the next job: the one that ran the echoes.
    const spin = await jsHandler(
      `export default (event, ctx) => { ctx.log.info("about to spin"); for (;;) {} };`,
    );
    expect(said((await run(spin)).logs)).toEqual([["info", "about to spin"]]);
  });
});

it("a run whose thread dies keeps the lines it logged before", async () => {
  const module = await jsHandler(`export default (event, ctx) => {
    ctx.log.info("before the crash");
    ctx.db.query("select 1");
    for (;;) {}
  };`);
  // The thread dies in the middle of the run, as one that crashes does: its
  // host call is how the test knows it is running, and which thread it is.
  const slots = (sandbox.pool as unknown as { slots: Set<{ thread: Worker; job?: unknown }> })
    .slots;
  const outcome = await sandbox.pool.invoke({
    module,
    input: {},
    timeoutMs: 60_000,
    memoryLimitBytes: 32 * MB,
    host: {
      db_query: async () => {
        const slot = [...slots].find((s) => s.job);
        void slot!.thread.terminate();
        return { rows: [] };
      },
    },
  });
  expect(outcome.error?.code).toBe("FUNCTION_ERROR");
  expect(outcome.error?.message).toMatch(/^The sandbox thread crashed/);
  expect(said(outcome.logs)).toEqual([["info", "before the crash"]]);
});

it("a thread posts only the lines it keeps: a handler logging in a loop queues no more for the daemon", () => {
  const posted: HandlerLog[] = [];
  let dropped = 0;
  const logger = captureLogger([], (text) => text, {
    kept: (line) => posted.push(line),
    dropped: (count) => (dropped = count),
  });
  for (let i = 0; i < 3 * MAX_LOG_LINES; i++) logger.info(`line ${i}`);
  expect(posted).toHaveLength(MAX_LOG_LINES - 1);
  expect(posted.at(-1)!.message).toBe(`line ${MAX_LOG_LINES - 2}`);
  expect(dropped).toBe(2 * MAX_LOG_LINES + 1);
});
