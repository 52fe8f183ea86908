/**
 * Extism instances of a module, and keeping one for the next invocation.
 *
 * No state survives an invocation. Making a new instance for each one gives
 * that at ~10x the cost of the call itself, so an {@link InstanceCache} keeps
 * one instance per module and gives it back to its state right after start-up
 * before it is used again: the linear memory's bytes (copied back; a memory
 * that grew cannot shrink, so its instance is dropped), every mutable global
 * (through the functions guardMemory added), Extism's blocks (dropped by
 * Extism at every call) and vars (kept per invocation by HostMemory). What
 * cannot be given back that way keeps a new instance per invocation: modules
 * that change tables or drop segments (guardMemory does not mark them), that
 * import stateful WASI functions, and instances whose start-up code asked
 * the host for something an invocation chooses (config, vars, host calls).
 *
 * Its own file because what may be reused, and how an instance is made, is
 * a question of Extism's and WASI's state, apart from what one invocation
 * does with the instance it is given (invocation.ts).
 */
import type { CallContext, Plugin } from "@extism/extism";
import { LOG_LEVELS } from "./logs.js";
import {
  GUARD_MEMORY_EXPORT,
  GUARD_NAMESPACE,
  GUARD_RESTORE_GLOBALS,
  GUARD_SAVE_GLOBALS,
} from "./memoryGuard.js";
import { perModule } from "./module.js";

/**
 * What an instance's imports answer to: the invocation running on it. The
 * instance's imports are fixed when it is made; these change with each
 * invocation.
 */
export interface Hooks {
  /** guardMemory's memory.grow hooks, for a guarded module. */
  readonly guard: Readonly<Record<string, ImportFunction>>;
  /** pgfn's replacements of Extism kernel functions (HostMemory.kernelFunctions). */
  readonly kernel: Readonly<Record<string, ImportFunction>>;
  /** `extism:host/user`: pgfn's host functions. */
  readonly user: Readonly<Record<string, ImportFunction>>;
  /** Where Extism's log_* functions and its own complaints go. */
  readonly logger: Console;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type ImportFunction = (context: CallContext, ...args: any[]) => unknown;

/** Kernel functions whose answers depend on the invocation: start-up code calling one makes its instance single-use. */
const INVOCATION_KERNEL_FUNCTIONS: ReadonlySet<string> = new Set([
  "config_get",
  "var_get",
  "var_set",
]);

/**
 * An Extism plugin whose imports call the hooks of the invocation running on
 * it. While reusable, it holds a copy of its linear memory as start-up left
 * it, and its mutable globals are saved in the module (guardMemory).
 */
export class KeptPlugin {
  private current: Hooks | undefined;
  /** Linear memory right after start-up, for {@link restore}. */
  private snapshot: Uint8Array | undefined;
  /** Sets the mutable globals back to what start-up left (guardMemory). */
  private restoreGlobals: (() => void) | undefined;
  /** Whether it may be kept after this invocation. */
  reusable = false;
  plugin!: Plugin;
  memory: WebAssembly.Memory | undefined;

  private constructor(
    hooks: Hooks,
    /** The `extism:host/user` imports the module has: a taker must offer them all. */
    readonly userImports: readonly string[],
  ) {
    this.current = hooks;
  }

  /**
   * Instantiates `module` (running its start-up code) with `hooks` as the
   * current invocation's; when `reuse`, also saves its state after start-up
   * if nothing in start-up depended on the invocation.
   */
  static async create(module: WebAssembly.Module, hooks: Hooks, reuse: boolean) {
    const kept = new KeptPlugin(hooks, userImports(module));
    let starting = true;
    let startUpAskedHost = false;
    const forward =
      (namespace: "guard" | "kernel" | "user", name: string) =>
      (context: CallContext, ...args: unknown[]) => {
        if (starting && (namespace === "user" || INVOCATION_KERNEL_FUNCTIONS.has(name)))
          startUpAskedHost = true;
        const hooks = kept.current;
        // Between invocations nothing of the module runs; this is a bug of ours.
        if (!hooks) throw new Error(`${name} was called outside an invocation`);
        return hooks[namespace][name]!(context, ...args);
      };
    const forwardAll = (namespace: "guard" | "kernel" | "user") =>
      Object.fromEntries(Object.keys(hooks[namespace]).map((n) => [n, forward(namespace, n)]));
    const logger = Object.fromEntries(
      LOG_LEVELS.map((level) => [
        level,
        (message: unknown) => kept.current?.logger[level](message),
      ]),
    ) as unknown as Console;
    // Loaded at the first instance, not at import: Extism imports node:wasi,
    // and Node warns on that (experimental) in whatever process imports
    // pgfn's package, which may never run a WebAssembly handler itself.
    const { default: createPlugin } = await import("@extism/extism");
    kept.plugin = await createPlugin(
      // No config and no memory options for Extism: config_get is ours
      // (hostMemory.ts), and Extism's maxPages check comes after the allocation.
      { wasm: [{ module }] },
      {
        useWasi: needsWasi(module),
        functions: {
          ...(Object.keys(hooks.guard).length > 0 && { [GUARD_NAMESPACE]: forwardAll("guard") }),
          "extism:host/env": forwardAll("kernel"),
          "extism:host/user": forwardAll("user"),
        },
        logger,
        // The logger only sees levels at or above this; we keep all of them.
        logLevel: "trace",
        // WASI stdout/stderr go to /dev/null, never to the daemon's output.
        enableWasiOutput: false,
      },
    );
    starting = false;
    const { exports } = await kept.plugin.getInstance();
    const exported = exports[GUARD_MEMORY_EXPORT] ?? exports.memory;
    if (exported instanceof WebAssembly.Memory) kept.memory = exported;
    const save = exports[GUARD_SAVE_GLOBALS];
    const restore = exports[GUARD_RESTORE_GLOBALS];
    if (
      reuse &&
      !startUpAskedHost &&
      kept.memory &&
      kept.memory.buffer.byteLength <= MAX_KEPT_MEMORY_BYTES &&
      typeof save === "function" &&
      typeof restore === "function"
    ) {
      (save as () => void)();
      kept.restoreGlobals = restore as () => void;
      kept.snapshot = new Uint8Array(kept.memory.buffer).slice();
      kept.reusable = true;
    }
    return kept;
  }

  /** Bytes it holds while idle: its linear memory and the copy. */
  get bytes(): number {
    return 2 * (this.snapshot?.byteLength ?? 0);
  }

  /** Makes `hooks` the current invocation's, if this instance can serve it. */
  take(hooks: Hooks): boolean {
    if (!this.userImports.every((name) => Object.hasOwn(hooks.user, name))) return false;
    this.current = hooks;
    return true;
  }

  /** The invocation is over: its hooks and Extism's blocks (input, output) are let go. */
  release(): void {
    this.current = undefined;
    void this.plugin.reset();
  }

  /**
   * Gives the instance back its state right after start-up: memory bytes and
   * mutable globals. False when it cannot (not reusable, or the memory grew)
   * and must be closed instead.
   */
  restore(): boolean {
    const snapshot = this.snapshot;
    if (!this.reusable || !snapshot || this.memory?.buffer.byteLength !== snapshot.byteLength)
      return false;
    new Uint8Array(this.memory.buffer).set(snapshot);
    this.restoreGlobals!();
    return true;
  }

  /** Closes WASI's file descriptors; the instance itself is left to the GC. */
  async close(): Promise<void> {
    this.snapshot = undefined;
    await this.plugin.close().catch(() => undefined);
  }
}

/**
 * Linear memory beyond this after start-up is not kept: copying it back
 * costs about as much as a new instance (here: ~0.1-0.3 ms per MiB on a
 * loaded 2-core machine, against ~0.4-0.8 ms for a new echo instance). (2 MiB)
 */
export const MAX_KEPT_MEMORY_BYTES = 2 * 1024 * 1024;

/**
 * Idle instances, one per module at most, the least recently used closed
 * beyond `capacity` instances or `maxBytes` of memory held. Meant for one
 * thread: a sandbox thread keeps one (thread.ts).
 *
 * @example
 * const instances = new InstanceCache();
 * const outcome = await invokeHandler(module, event, { instances });
 */
export class InstanceCache {
  // Map iteration order is insertion order: the first key is the least recently given back.
  private readonly idle = new Map<WebAssembly.Module, KeptPlugin>();
  private heldBytes = 0;

  /**
   * @param capacity instances kept. (Default: 16)
   * @param maxBytes memory the kept instances may hold, copies included. (Default: 64 MiB)
   */
  constructor(
    private readonly capacity = 16,
    private readonly maxBytes = 64 * 1024 * 1024,
  ) {}

  /** The idle instance of `module`, made the invocation's, if there is one that can serve it. */
  take(module: WebAssembly.Module, hooks: Hooks): KeptPlugin | undefined {
    const kept = this.idle.get(module);
    if (!kept?.take(hooks)) return undefined;
    this.idle.delete(module);
    this.heldBytes -= kept.bytes;
    return kept;
  }

  /** Keeps a restored instance for the next invocation of `module`. */
  give(module: WebAssembly.Module, kept: KeptPlugin): void {
    // Two concurrent invocations made two instances: one is enough.
    const other = this.idle.get(module);
    if (other) this.drop(module, other);
    this.idle.set(module, kept);
    this.heldBytes += kept.bytes;
    for (const [oldest, instance] of this.idle) {
      if (this.idle.size <= this.capacity && this.heldBytes <= this.maxBytes) break;
      this.drop(oldest, instance);
    }
  }

  /** Instances kept now. */
  get size(): number {
    return this.idle.size;
  }

  private drop(module: WebAssembly.Module, kept: KeptPlugin): void {
    this.idle.delete(module);
    this.heldBytes -= kept.bytes;
    void kept.close();
  }
}

/** The names the module imports from `extism:host/user`. */
const userImports = perModule((module): readonly string[] =>
  WebAssembly.Module.imports(module)
    .filter((i) => i.module === "extism:host/user")
    .map((i) => i.name),
);

/**
 * WASI functions that keep no state between calls in Node's WASI: a module
 * importing any other (fd_close, path_open, fd_seek, ...) could change what
 * the next invocation finds, and gets a new instance each time. Not
 * random_get nor clock_time_get: what start-up code reads from them would be
 * saved with the instance and replayed to every invocation (one PRNG seed
 * for all; TinyGo seeds its runtime that way).
 */
const STATELESS_WASI: ReadonlySet<string> = new Set([
  "args_get",
  "args_sizes_get",
  "environ_get",
  "environ_sizes_get",
  "clock_res_get",
  "sched_yield",
  "proc_exit",
  "fd_write",
  "fd_fdstat_get",
  "fd_prestat_get",
  "fd_prestat_dir_name",
]);

/**
 * Whether an instance of the module can be given back to its state after
 * start-up: guardMemory added the globals' save and restore, and any WASI
 * it imports keeps no state.
 */
export const isReusable = perModule((module): boolean => {
  const exports = new Set(WebAssembly.Module.exports(module).map((e) => e.name));
  return (
    exports.has(GUARD_SAVE_GLOBALS) &&
    exports.has(GUARD_RESTORE_GLOBALS) &&
    WebAssembly.Module.imports(module).every(
      (i) => i.module !== "wasi_snapshot_preview1" || STATELESS_WASI.has(i.name),
    )
  );
});

/**
 * WASI only for modules that import it (Rust, Go and C PDKs do; AssemblyScript
 * does not): Extism refuses a WASI import without `useWasi`, and setting it up
 * opens /dev/null for each instance.
 */
const needsWasi = perModule((module): boolean =>
  WebAssembly.Module.imports(module).some((i) => i.module === "wasi_snapshot_preview1"),
);
