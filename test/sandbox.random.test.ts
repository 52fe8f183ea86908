// Start-up code that draws randomness (WASI random_get, as TinyGo's and many
// runtimes' init does to seed a PRNG or hash seeds) must not be saved with a
// kept instance and replayed to every invocation: a module importing
// random_get or clock_time_get gets a new instance each time (instances.ts
// STATELESS_WASI).
import binaryen from "binaryen";
import { afterAll, beforeAll, expect, it } from "vitest";
import { sha256Hex } from "../src/sandbox/module.js";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.js";

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = createSandbox({ size: 1, maxInvocationsPerThread: 1_000_000 });
  await sandbox.pool.warm();
});
afterAll(() => sandbox?.close());

function seeded(): Uint8Array {
  const module = binaryen.parseText(`(module
    (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
    (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
    (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
    (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
    (memory (export "memory") 1)
    (global $seeded (mut i32) (i32.const 0))
    ;; The runtime's init: seed a PRNG from the host once.
    (func (export "_initialize")
      (drop (call $random_get (i32.const 300) (i32.const 4)))
      (global.set $seeded (i32.const 1)))
    ;; Output: "xxxxxxxx", the 4 seed bytes as letters a-p (a JSON string).
    (func (export "handle") (result i32) (local $a i64) (local $i i32) (local $b i32)
      (local.set $a (call $alloc (i64.const 10)))
      (call $store_u8 (local.get $a) (i32.const 34))
      (block $done (loop $more
        (br_if $done (i32.ge_u (local.get $i) (i32.const 4)))
        (local.set $b (i32.load8_u (i32.add (i32.const 300) (local.get $i))))
        (call $store_u8 (i64.add (local.get $a) (i64.extend_i32_u (i32.add (i32.const 1) (i32.shl (local.get $i) (i32.const 1)))))
          (i32.add (i32.const 97) (i32.shr_u (local.get $b) (i32.const 4))))
        (call $store_u8 (i64.add (local.get $a) (i64.extend_i32_u (i32.add (i32.const 2) (i32.shl (local.get $i) (i32.const 1)))))
          (i32.add (i32.const 97) (i32.and (local.get $b) (i32.const 15))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
      (call $store_u8 (i64.add (local.get $a) (i64.const 9)) (i32.const 34))
      (call $output_set (local.get $a) (i64.const 10))
      (i32.const 0)))`);
  try {
    module.setFeatures(
      binaryen.Features.MVP | binaryen.Features.MutableGlobals | binaryen.Features.BulkMemory,
    );
    return module.emitBinary();
  } finally {
    module.dispose();
  }
}

it("each invocation draws its own seed, as a new instance would", async () => {
  const wasm = seeded();
  const module = await sandbox.modules.get(sha256Hex(wasm), async () => wasm);
  const outputs: unknown[] = [];
  for (let i = 0; i < 3; i++) {
    const outcome = await sandbox.pool.invoke({
      module,
      input: {},
      timeoutMs: 20_000,
      memoryLimitBytes: 16 << 20,
    });
    expect(outcome.ok).toBe(true);
    outputs.push(outcome.output);
  }
  // Three fresh 32-bit seeds collide with probability ~2^-31.
  expect(new Set(outputs).size).toBe(3);
});
