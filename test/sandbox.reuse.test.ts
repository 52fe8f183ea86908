// No state survives an invocation, although a sandbox thread keeps one
// instance per module and gives it back its state after start-up instead of
// making a new one (instances.ts). And the pool's clock for an invocation starts
// when a thread starts it, not when it was queued. Modules are WebAssembly
// text compiled with Binaryen; no database needed.
import { readFile } from "node:fs/promises";
import binaryen from "binaryen";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../src/sandbox/module.js";
import { SandboxPool, type HostBinding } from "../src/sandbox/pool.js";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.js";
import { exampleWasm } from "./helpers.js";

const MB = 1024 * 1024;
let sandbox: Sandbox;

beforeAll(async () => {
  // One thread, kept for the whole file: every invocation lands where the
  // last one ran, on the instance it left.
  sandbox = createSandbox({ size: 1, maxInvocationsPerThread: 1_000_000 });
  await sandbox.pool.warm();
});
afterAll(() => sandbox?.close());

/** Compiles WebAssembly text with Extism's imports and two helpers around `body`. */
function wat(body: string): Uint8Array {
  const module = binaryen.parseText(`(module
    (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
    (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
    (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
    (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
    (import "extism:host/env" "log_info" (func $log_info (param i64)))
    (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
    (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
    (import "extism:host/env" "var_set" (func $var_set (param i64 i64)))
    (memory 1)
    (data (i32.const 200) "start-up")
    ;; A block holding memory[ptr, ptr + len).
    (func $block (param $ptr i32) (param $len i32) (result i64) (local $a i64) (local $i i32)
      (local.set $a (call $alloc (i64.extend_i32_u (local.get $len))))
      (block $done (loop $more
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (call $store_u8 (i64.add (local.get $a) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
      (local.get $a))
    ;; A one-byte block holding \`byte\`.
    (func $byte (param $byte i32) (result i64) (local $a i64)
      (local.set $a (call $alloc (i64.const 1)))
      (call $store_u8 (local.get $a) (local.get $byte))
      (local.get $a))
    ;; Logs "start-up": only a new instance does.
    (func (export "_initialize") (call $log_info (call $block (i32.const 200) (i32.const 8))))
    ${body})`);
  try {
    // What V8 in Node 20 runs (All would write GC encodings it refuses).
    const F = binaryen.Features;
    module.setFeatures(F.MVP | F.MutableGlobals | F.SIMD128 | F.BulkMemory | F.ReferenceTypes);
    return module.emitBinary();
  } finally {
    module.dispose();
  }
}

/**
 * Reports, then changes, every kind of state an instance has: an i32, an
 * i64 and a v128 global, a byte of memory, the memory's size ("grow" grows
 * it by a page) and an Extism var. Output: {"g":_,"l":_,"x":_,"m":_,"p":_,"v":_}.
 */
const stateful = wat(`
  (global $g (mut i32) (i32.const 0))
  (global $l (mut i64) (i64.const 0))
  (global $x (mut v128) (v128.const i32x4 0 0 0 0))
  (data (i32.const 100) "{\\"g\\":0,\\"l\\":0,\\"x\\":0,\\"m\\":0,\\"p\\":0,\\"v\\":0}")
  (func $digit (param $a i64) (param $at i64) (param $value i32)
    (call $store_u8 (i64.add (local.get $a) (local.get $at))
      (i32.add (i32.const 48) (select (local.get $value) (i32.const 9) (i32.lt_u (local.get $value) (i32.const 9))))))
  (func $report (local $a i64)
    (local.set $a (call $block (i32.const 100) (i32.const 37)))
    (call $digit (local.get $a) (i64.const 5) (global.get $g))
    (call $digit (local.get $a) (i64.const 11) (i32.wrap_i64 (global.get $l)))
    (call $digit (local.get $a) (i64.const 17) (i32x4.extract_lane 0 (global.get $x)))
    (call $digit (local.get $a) (i64.const 23) (i32.load8_u (i32.const 16)))
    (call $digit (local.get $a) (i64.const 29) (memory.size))
    (call $digit (local.get $a) (i64.const 35)
      (i64.ne (call $var_get (call $byte (i32.const 107))) (i64.const 0)))
    (call $output_set (local.get $a) (i64.const 37)))
  (func $mutate
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (global.set $l (i64.add (global.get $l) (i64.const 1)))
    (global.set $x (i32x4.add (global.get $x) (v128.const i32x4 1 1 1 1)))
    (i32.store8 (i32.const 16) (i32.add (i32.load8_u (i32.const 16)) (i32.const 1)))
    (call $var_set (call $byte (i32.const 107)) (call $byte (i32.const 1))))
  (func (export "handle") (result i32) (call $report) (call $mutate) (i32.const 0))
  (func (export "grow") (result i32)
    (call $report) (call $mutate) (drop (memory.grow (i32.const 1))) (i32.const 0))`);

/** Runs `wasm` through the pool, as the daemon does. */
async function run(
  wasm: Uint8Array,
  options: { entry?: string; config?: Record<string, string>; timeoutMs?: number } = {},
) {
  const module = await sandbox.modules.get(sha256Hex(wasm), async () => wasm);
  return sandbox.pool.invoke({
    module,
    input: {},
    timeoutMs: options.timeoutMs ?? 20_000,
    memoryLimitBytes: 16 * MB,
    ...(options.entry && { entry: options.entry }),
    ...(options.config && { config: options.config }),
  });
}

const startedUp = (outcome: { logs: readonly { message: string }[] }) =>
  outcome.logs.some((line) => line.message === "start-up");

const pristine = { g: 0, l: 0, x: 0, m: 0, p: 1, v: 0 };

describe("a kept instance", () => {
  it("starts every invocation with the globals, memory and vars start-up left", async () => {
    const outcomes = [];
    for (let i = 0; i < 4; i++) outcomes.push(await run(stateful));
    for (const outcome of outcomes) expect(outcome).toMatchObject({ ok: true, output: pristine });
    // Only the first made an instance: the others ran on it, restored.
    expect(outcomes.map(startedUp)).toEqual([true, false, false, false]);
  });

  it("is replaced when its memory grew, which cannot be undone", async () => {
    await run(stateful);
    const grew = await run(stateful, { entry: "grow" });
    expect(grew.output).toEqual(pristine);
    const after = await run(stateful);
    expect(after.output).toEqual(pristine);
    expect(startedUp(after)).toBe(true);
  });

  it("is restored after a trap too", async () => {
    const trapping = wat(`
      (global $g (mut i32) (i32.const 0))
      (func (export "handle") (result i32) (local $a i64)
        (local.set $a (call $alloc (i64.const 1)))
        (call $store_u8 (local.get $a) (i32.add (i32.const 48) (global.get $g)))
        (call $output_set (local.get $a) (i64.const 1))
        (global.set $g (i32.add (global.get $g) (i32.const 1)))
        (i32.store8 (i32.const 16) (i32.const 1))
        (unreachable))
      (func (export "peek") (result i32) (local $a i64)
        (local.set $a (call $alloc (i64.const 1)))
        (call $store_u8 (local.get $a)
          (i32.add (i32.const 48) (i32.add (global.get $g) (i32.load8_u (i32.const 16)))))
        (call $output_set (local.get $a) (i64.const 1))
        (i32.const 0))`);
    expect((await run(trapping)).error?.code).toBe("FUNCTION_ERROR");
    const peek = await run(trapping, { entry: "peek" });
    expect(peek.output).toBe(0);
    expect(startedUp(peek)).toBe(false);
  });
});

describe("what a kept instance cannot give back gets a new instance per invocation", () => {
  it("a module that grows its table", async () => {
    const table = wat(`
      (table 1 funcref)
      (func (export "handle") (result i32) (local $a i64)
        (local.set $a (call $alloc (i64.const 1)))
        (call $store_u8 (local.get $a) (i32.add (i32.const 48) (table.size 0)))
        (call $output_set (local.get $a) (i64.const 1))
        (drop (table.grow 0 (ref.null func) (i32.const 1)))
        (i32.const 0))`);
    for (let i = 0; i < 3; i++) expect((await run(table)).output).toBe(1);
  });

  it("a module that drops a passive data segment", async () => {
    // memory.init of a dropped segment traps: only a new instance can run it twice.
    const dropping = wat(`
      (data $once "7")
      (func (export "handle") (result i32) (local $a i64)
        (memory.init $once (i32.const 16) (i32.const 0) (i32.const 1))
        (data.drop $once)
        (local.set $a (call $alloc (i64.const 1)))
        (call $store_u8 (local.get $a) (i32.load8_u (i32.const 16)))
        (call $output_set (local.get $a) (i64.const 1))
        (i32.const 0))`);
    for (let i = 0; i < 3; i++) expect((await run(dropping)).output).toBe(7);
  });

  it("an instance whose start-up read the function's config", async () => {
    const configured = wat(`
      (global $k (mut i32) (i32.const 48))
      (func $init (local $a i64)
        (local.set $a (call $config_get (call $byte (i32.const 107))))
        (if (i64.ne (local.get $a) (i64.const 0))
          (then (global.set $k (call $load_u8 (local.get $a))))))
      (start $init)
      (func (export "handle") (result i32) (local $a i64)
        (local.set $a (call $alloc (i64.const 1)))
        (call $store_u8 (local.get $a) (global.get $k))
        (call $output_set (local.get $a) (i64.const 1))
        (i32.const 0))`);
    // The same module for two functions, each with its own env.
    expect((await run(configured, { config: { k: "1" } })).output).toBe(1);
    expect((await run(configured, { config: { k: "2" } })).output).toBe(2);
    expect((await run(configured)).output).toBe(0);
  });
});

describe("the pool's clock", () => {
  it("gives a queued invocation its whole timeout from the moment a thread starts it", async () => {
    const spinWasm = await readFile(exampleWasm("spin"));
    const queryWasm = await readFile(exampleWasm("query"));
    const spin = await sandbox.modules.get(sha256Hex(spinWasm), async () => spinWasm);
    const query = await sandbox.modules.get(sha256Hex(queryWasm), async () => queryWasm);
    let spinDone = 0;
    const looping = sandbox.pool
      .invoke({ module: spin, input: {}, timeoutMs: 1000, memoryLimitBytes: 16 * MB })
      .then((outcome) => ((spinDone = Date.now()), outcome));
    let deadline = 0;
    // Queued behind the loop on the only thread; its host call takes half
    // its timeout, which it only has if queueing did not count.
    const queued = sandbox.pool.invoke({
      module: query,
      input: { payload: { sql: "select 1" } },
      timeoutMs: 1000,
      memoryLimitBytes: 16 * MB,
      host: (at: number): Record<string, HostBinding> => {
        deadline = at;
        return {
          db_query: async () => {
            // The handler's own work, as far as the pool can tell.
            await new Promise((resolve) => setTimeout(resolve, 500));
            return { rows: [], rowCount: 0, fields: [] };
          },
        };
      },
    });
    expect((await looping).error?.code).toBe("TIMEOUT");
    const outcome = await queued;
    expect(outcome.error).toBeUndefined();
    expect(outcome.ok).toBe(true);
    // The host functions were given the deadline the pool holds the run to.
    expect(deadline).toBeGreaterThanOrEqual(spinDone + 1000);
  });

  it("answers the invocations running and queued when the pool closes, rather than keeping them waiting", async () => {
    const pool = new SandboxPool({ size: 1 });
    const spinWasm = await readFile(exampleWasm("spin"));
    const spin = await sandbox.modules.get(sha256Hex(spinWasm), async () => spinWasm);
    const request = { module: spin, input: {}, timeoutMs: 600_000, memoryLimitBytes: 16 * MB };
    let started!: () => void;
    const isRunning = new Promise<void>((resolve) => (started = resolve));
    // The pool calls host when a thread starts the invocation.
    const running = pool.invoke({ ...request, host: () => (started(), {}) });
    const queued = pool.invoke(request);
    await isRunning;
    await pool.close();
    expect((await queued).error).toEqual({
      code: "FUNCTION_ERROR",
      message: "The sandbox shut down before the handler ran.",
    });
    expect((await running).error).toEqual({
      code: "FUNCTION_ERROR",
      message: "The sandbox shut down during the run.",
    });
  });
});
