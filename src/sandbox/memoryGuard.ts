/**
 * The memory limit. A WebAssembly module grows its own linear memory with
 * the `memory.grow` instruction, which no JavaScript API can observe or cap
 * from outside (a module's declared maximum is its own, and V8 counts wasm
 * memory outside a thread's heap limits). So every `memory.grow` is
 * rewritten, with Binaryen's `instrument-memory` pass limited to it, into
 * calls of two imports around the instruction:
 *
 *   memory.grow(env.memory_grow_pre(id, delta)) -> env.memory_grow_post(id, result)
 *
 * The sandbox answers memory_grow_pre with the delta, or with a delta no
 * engine can grant once the limit would be passed: the grow fails (-1) as it
 * would on a full machine, the handler's allocator gives up, and the run is
 * MEMORY_EXCEEDED rather than a plain trap, because the sandbox saw it.
 *
 * The same rewrite prepares a module for reuse (instances.ts keeps an instance
 * per thread and module and restores it right after each invocation): two
 * exported functions save and restore every mutable global through shadow
 * globals only they touch. A module whose state cannot be restored that way
 * (it changes tables or drops segments) does not get them, and gets a new
 * instance per invocation.
 */
import { Worker } from "node:worker_threads";

/** The import namespace Binaryen gives its instrumentation hooks. */
export const GUARD_NAMESPACE = "env";

/** Added so the sandbox can read the memory's size even when the module does not export it. */
export const GUARD_MEMORY_EXPORT = "__pgfn_memory";

/** Custom section guardMemory adds: the memory's initial pages, u32 little-endian. */
export const GUARD_INITIAL_PAGES_SECTION = "pgfn.initial_pages";

/** Added to a module that can be reused: copies its mutable globals to their shadows. */
export const GUARD_SAVE_GLOBALS = "__pgfn_save_globals";

/** Added with GUARD_SAVE_GLOBALS: copies the shadows back into the mutable globals. */
export const GUARD_RESTORE_GLOBALS = "__pgfn_restore_globals";

/** WebAssembly page size: 64 KiB. */
export const PAGE_BYTES = 65536;

/**
 * Binaryen's hooks for loads and stores are imported even when only
 * memory.grow is instrumented; they are never called, and pass values through.
 */
export const PASS_THROUGH_HOOKS = [
  "load_ptr",
  "load_val_i32",
  "load_val_i64",
  "load_val_f32",
  "load_val_f64",
  "store_ptr",
  "store_val_i32",
  "store_val_i64",
  "store_val_f32",
  "store_val_f64",
] as const;

let thread: Worker | undefined;
let nextId = 0;
const pending = new Map<
  number,
  { resolve: (wasm: Uint8Array) => void; reject: (error: Error) => void }
>();

/** The guard thread (guard.thread.js), started on first use. */
function guardThread(): Worker {
  if (thread) return thread;
  // execArgv: [] so no TypeScript loader is inherited (see guard.thread.js).
  const w = new Worker(new URL("./guard.thread.js", import.meta.url), { execArgv: [] });
  w.unref();
  w.on("message", (msg: { id: number; wasm?: Uint8Array; error?: string }) => {
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    if (pending.size === 0) w.unref();
    if (msg.error !== undefined) p?.reject(new Error(msg.error));
    else p?.resolve(new Uint8Array(msg.wasm!));
  });
  const fail = (error: Error) => {
    for (const p of pending.values()) p.reject(error);
    pending.clear();
    thread = undefined;
  };
  w.on("error", fail);
  w.on("exit", (code) => fail(new Error(`the memory guard thread exited (${code})`)));
  thread = w;
  return w;
}

/**
 * Loads Binaryen in its thread now (about half a second), so the first run
 * of the first function does not wait for it.
 */
export async function warmMemoryGuard(): Promise<void> {
  // The smallest module: magic and version. Binaryen reads it; no memory, no rewrite.
  await guardMemory(new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]));
}

/**
 * Returns the module with every memory.grow guarded, its memory exported
 * as GUARD_MEMORY_EXPORT, its initial size in GUARD_INITIAL_PAGES_SECTION,
 * and, when it can be reused, GUARD_SAVE_GLOBALS and GUARD_RESTORE_GLOBALS.
 * Rejects, with Binaryen's message, a module it cannot read.
 */
export function guardMemory(wasm: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    // Referenced only while it has work: an idle guard thread must not keep
    // the process alive, a busy one must.
    guardThread().ref();
    // A copy: the caller keeps its bytes (they are hashed and stored).
    guardThread().postMessage({
      id,
      wasm: new Uint8Array(wasm),
      memoryExport: GUARD_MEMORY_EXPORT,
      initialPagesSection: GUARD_INITIAL_PAGES_SECTION,
      snapshot: { save: GUARD_SAVE_GLOBALS, restore: GUARD_RESTORE_GLOBALS },
    });
  });
}
