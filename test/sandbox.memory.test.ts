// memory_limit_mb covers the host memory a handler makes Extism allocate for
// it (alloc, config_get, var_get/var_set, host function replies), counted
// with its linear memory and refused before it is allocated; a backstop on
// the thread's memory catches whatever that counting would miss. The modules
// are a few lines of WebAssembly text, compiled with Binaryen.
import binaryen from "binaryen";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { invokeHandler } from "../src/sandbox/invocation.js";
import { sha256Hex } from "../src/sandbox/module.js";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.js";
import type { HostBinding } from "../src/sandbox/pool.js";

const MB = 1024 * 1024;
let sandbox: Sandbox;

beforeAll(async () => {
  sandbox = createSandbox({ size: 2, maxInvocationsPerThread: 1000 });
  await sandbox.pool.warm();
});
afterAll(() => sandbox?.close());

/** A module of Extism imports and one exported `handle` with `body`. */
function wat(body: string, locals = ""): Uint8Array {
  const text = `(module
    (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
    (import "extism:host/env" "free" (func $free (param i64)))
    (import "extism:host/env" "length" (func $length (param i64) (result i64)))
    (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
    (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
    (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
    (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
    (import "extism:host/env" "var_set" (func $var_set (param i64 i64)))
    (import "extism:host/user" "pgfn_big" (func $big (param i64) (result i64)))
    (memory 1)
    ;; A one-byte block holding \`byte\`: a key, or a JSON argument.
    (func $byte (param $byte i32) (result i64) (local $a i64)
      (local.set $a (call $alloc (i64.const 1)))
      (call $store_u8 (local.get $a) (local.get $byte))
      (local.get $a))
    (func (export "handle") (result i32) (local $i i32) (local $a i64) (local $k i64) ${locals}
      ${body}
      (i32.const 0)))`;
  const module = binaryen.parseText(text);
  try {
    return module.emitBinary();
  } finally {
    module.dispose();
  }
}

/** `step` `count` times. */
const loop = (count: number, step: string) => `
  (local.set $i (i32.const 0))
  (loop $more
    ${step}
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br_if $more (i32.lt_u (local.get $i) (i32.const ${count}))))`;

/** Runs `wasm` through the pool, as the daemon does, at `memoryMb`. */
async function run(
  wasm: Uint8Array,
  options: {
    memoryMb?: number;
    config?: Record<string, string>;
    host?: Record<string, HostBinding>;
  } = {},
) {
  const module = await sandbox.modules.get(sha256Hex(wasm), async () => wasm);
  return sandbox.pool.invoke({
    module,
    input: {},
    timeoutMs: 20_000,
    memoryLimitBytes: (options.memoryMb ?? 16) * MB,
    config: options.config ?? {},
    host: options.host ?? { big: async () => "" },
  });
}

const echo = wat(`(call $output_set (call $byte (i32.const 49)) (i64.const 1))`); // "1"

describe("host memory counts against memory_limit_mb", () => {
  it("refuses alloc past the limit before allocating: 20 x 64 MB at 16 MB is MEMORY_EXCEEDED", async () => {
    // The reproduction of issue 10, finding 5: alloc's answer ignored, asked again and again.
    const wasm = wat(loop(20, `(drop (call $alloc (i64.const ${64 * MB})))`));
    const outcome = await run(wasm);
    expect(outcome.ok).toBe(false);
    expect(outcome.error).toEqual({
      code: "MEMORY_EXCEEDED",
      message:
        "Memory limit exceeded: the handler asked the host for 64 MB (alloc) with 64 KB in use, " +
        "past its limit of 16 MB; the instance was stopped.",
    });
    expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(16 * MB);
    // The thread survives and serves the next run.
    expect(await run(echo)).toMatchObject({ ok: true, output: 1 });
  });

  it("counts small allocations until the limit, linear memory included", async () => {
    const wasm = wat(loop(100, `(drop (call $alloc (i64.const ${MB})))`));
    const outcome = await run(wasm);
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
    expect(outcome.error?.message).toMatch(
      /^Memory limit exceeded: the handler asked the host for 1 MB \(alloc\) with 15 MB in use, past its limit of 16 MB/,
    );
    expect(outcome.memoryPeakBytes).toBeGreaterThan(15 * MB);
    expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(16 * MB);
  });

  it("gives back what the handler frees: alloc and free 40 x 1 MB at 16 MB succeeds", async () => {
    const wasm = wat(
      loop(40, `(call $free (call $alloc (i64.const ${MB})))`) +
        `(call $output_set (call $byte (i32.const 49)) (i64.const 1))`,
    );
    const outcome = await run(wasm);
    expect(outcome).toMatchObject({ ok: true, output: 1 });
    expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(2 * MB);
  });

  it("counts host blocks and linear memory under one limit", async () => {
    // 12 MB on the host, then the module asks for 8 MB of linear memory.
    const wasm = wat(`
      (drop (call $alloc (i64.const ${12 * MB})))
      (if (i32.lt_s (memory.grow (i32.const 128)) (i32.const 0)) (then (unreachable)))`);
    const outcome = await run(wasm);
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
    expect(outcome.error?.message).toBe(
      "Memory limit exceeded: the handler asked to grow its memory from 0 MB by 8 MB, past its " +
        "limit of 16 MB with 12 MB held in host memory; the instance was stopped.",
    );
  });

  it("counts config_get's copies of the env", async () => {
    const wasm = wat(
      `(local.set $k (call $byte (i32.const 107)))` + // "k"
        loop(1000, `(drop (call $config_get (local.get $k)))`),
    );
    const outcome = await run(wasm, { config: { k: "x".repeat(100_000) } });
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
    expect(outcome.error?.message).toMatch(/asked the host for 98 KB \(config_get of "k"\)/);
  });

  it("counts var_get's blocks, which would keep every var_set value alive", async () => {
    const wasm = wat(
      `(local.set $k (call $byte (i32.const 107)))
       (local.set $a (call $alloc (i64.const ${MB})))` +
        loop(
          100,
          `(call $var_set (local.get $k) (local.get $a)) (drop (call $var_get (local.get $k)))`,
        ),
    );
    const outcome = await run(wasm);
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
    expect(outcome.error?.message).toMatch(/\((var_get|var_set) of "k"\)/);
  });

  it("lets a handler set one var again and again", async () => {
    const wasm = wat(
      `(local.set $k (call $byte (i32.const 107)))
       (local.set $a (call $alloc (i64.const ${MB})))` +
        loop(40, `(call $var_set (local.get $k) (local.get $a))`) +
        `(call $output_set (call $byte (i32.const 49)) (i64.const 1))`,
    );
    const outcome = await run(wasm);
    expect(outcome).toMatchObject({ ok: true, output: 1 });
    // The value's block, the var, and its next copy while the old one is replaced.
    expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(4 * MB);
  });

  it("counts pgfn host function replies", async () => {
    let calls = 0;
    const wasm = wat(loop(20, `(drop (call $big (call $byte (i32.const 48))))`)); // "0"
    const outcome = await run(wasm, {
      host: {
        big: async () => {
          calls++;
          return "x".repeat(3 * MB);
        },
      },
    });
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
    expect(outcome.error?.message).toMatch(/asked the host for 3 MB \(pgfn_big's reply\)/);
    expect(calls).toBeLessThan(20);
  });

  it("refuses a host function argument over 4 MiB without reading it or calling the host", async () => {
    let calls = 0;
    const wasm = wat(`
      (local.set $a (call $big (call $alloc (i64.const ${5 * MB}))))
      (call $output_set (local.get $a) (call $length (local.get $a)))`);
    const outcome = await run(wasm, {
      memoryMb: 32,
      host: {
        big: async () => {
          calls++;
          return null;
        },
      },
    });
    expect(calls).toBe(0);
    expect(outcome.output).toEqual({
      ok: false,
      error: {
        message: `big: the argument is ${5 * MB} bytes; at most ${4 * MB} are accepted`,
        transient: false,
      },
    });
  });

  it("ends the run MEMORY_EXCEEDED even when the module catches the refusal", async () => {
    // Wasm exception handling: catch_all swallows the JavaScript error the import threw.
    const text = `(module
      (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (memory 1)
      (func (export "handle") (result i32)
        (try (do (drop (call $alloc (i64.const ${64 * MB})))) (catch_all))
        (i32.const 0)))`;
    const module = binaryen.parseText(text);
    module.setFeatures(binaryen.Features.All);
    const wasm = module.emitBinary();
    module.dispose();
    const outcome = await run(wasm);
    expect(outcome.error?.code).toBe("MEMORY_EXCEEDED");
  });
});

describe("start-up code (a start function, _initialize), run before the memory is visible", () => {
  /** A module whose memory starts at `pages` and whose `init` grows it 8 x 8 MB. */
  const startUp = (pages: number, init: string) => {
    const module = binaryen.parseText(`(module
      (memory ${pages})
      (func $grow (local $i i32)
        (loop $more
          (drop (memory.grow (i32.const 128)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $more (i32.lt_u (local.get $i) (i32.const 8)))))
      ${init}
      (func (export "handle") (result i32) (i32.const 0)))`);
    try {
      return module.emitBinary();
    } finally {
      module.dispose();
    }
  };

  it("holds a start function and _initialize to the limit", async () => {
    for (const init of ["(start $grow)", '(export "_initialize" (func $grow))']) {
      const outcome = await run(startUp(1, init));
      // The grows past 16 MB were refused (-1), and the module coped.
      expect(outcome.ok).toBe(true);
      expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(16 * MB);
    }
  });

  it("gives back the blocks start-up code allocated, which Extism drops before the call", async () => {
    const module = binaryen.parseText(`(module
      (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (memory 1)
      (func (export "_initialize") (drop (call $alloc (i64.const ${10 * MB}))))
      (func (export "handle") (result i32) (drop (call $alloc (i64.const ${10 * MB}))) (i32.const 0)))`);
    const wasm = module.emitBinary();
    module.dispose();
    const outcome = await run(wasm);
    expect(outcome.ok).toBe(true);
    expect(outcome.memoryPeakBytes).toBeLessThanOrEqual(11 * MB);
  });

  it("refuses a module that starts with more memory than its limit before instantiating it", async () => {
    const outcome = await run(startUp(2048, ""));
    expect(outcome.error).toEqual({
      code: "MEMORY_EXCEEDED",
      message:
        "Memory limit exceeded: the handler asked to grow its memory from 0 MB by 128 MB, past " +
        "its limit of 16 MB; the instance was stopped.",
    });
    // Never instantiated, so its memory was never seen.
    expect(outcome.memoryPeakBytes).toBeUndefined();
  });
});

describe("the thread backstop", () => {
  it("stops a run whose thread memory grows past twice the limit plus 64 MB", async () => {
    // What the counting might miss is, by construction, not reachable from a
    // module: a stand-in for the thread's memory grows 100 MB at every look.
    const wasm = wat(loop(3, `(drop (call $alloc (i64.const 1)))`));
    const module = await WebAssembly.compile(wasm as Uint8Array<ArrayBuffer>);
    let external = 1000 * MB;
    let exceeded = 0;
    const outcome = await invokeHandler(
      module,
      {},
      {
        memoryLimitBytes: 16 * MB,
        userFunctions: { pgfn_big: () => 0n },
        threadMemory: () => (external += 100 * MB),
        onThreadMemoryExceeded: () => exceeded++,
      },
    );
    expect(outcome.error).toEqual({
      code: "MEMORY_EXCEEDED",
      message:
        "Memory limit exceeded: the sandbox thread's memory grew by 100 MB during the run, past " +
        "the 96 MB a limit of 16 MB allows; the instance was stopped and the thread replaced.",
    });
    expect(exceeded).toBe(1);
  });
});
