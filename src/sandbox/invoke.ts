/**
 * Calling a handler: an Extism plugin built from a compiled module cached by
 * its sha256. This is the plain, correct invocation, in the foreground; time
 * and memory limits and pgfn's host functions are added around it.
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
 * How Extism (@extism/extism 2.0.0-rc13, foreground) reports what a handler
 * did, and what we make of it:
 * - output_set: `call()` returns the bytes; we parse them as JSON.
 * - error_set: `call()` throws "Plugin-originated error: <message>".
 * - a trap (unreachable, out-of-bounds access, AssemblyScript's abort): the
 *   WebAssembly RuntimeError is thrown as is and whatever error_set said is
 *   lost, so a handler's abort logs its message at error level just before
 *   trapping (examples/lib/pgfn.ts) and we report that line.
 * - the export's return code is ignored by Extism: returning 1 without
 *   error_set counts as success.
 */
import { createHash } from "node:crypto";
import createPlugin, { type CallContext, type Plugin } from "@extism/extism";
import type { ErrorCode } from "../errors.js";
import { redactAndClip, secretValues } from "./host/redact.js";
import { HostMemory, type HostContext } from "./hostMemory.js";
import {
  GUARD_INITIAL_PAGES_SECTION,
  GUARD_MEMORY_EXPORT,
  GUARD_NAMESPACE,
  GUARD_RESTORE_GLOBALS,
  GUARD_SAVE_GLOBALS,
  PAGE_BYTES,
  PASS_THROUGH_HOOKS,
} from "./memoryGuard.js";

/** One line a handler logged through Extism's `log_*` host functions. */
export interface HandlerLog {
  /** "trace" | "debug" | "info" | "warn" | "error" */
  readonly level: string;
  readonly message: string;
  /** When it was logged, ISO 8601. */
  readonly at: string;
}

/** The codes an invocation itself can produce (limits add TIMEOUT, MEMORY_EXCEEDED). */
export type InvokeErrorCode = Extract<
  ErrorCode,
  "FUNCTION_ERROR" | "INVALID_REQUEST" | "MEMORY_EXCEEDED" | "HOST_FUNCTION_ERROR" | "TIMEOUT"
>;

/** What one call of a handler came to. */
export interface InvokeOutcome {
  readonly ok: boolean;
  /** The handler's output parsed as JSON; null when it failed or wrote nothing. */
  readonly output: unknown;
  /**
   * Set when `ok` is false: FUNCTION_ERROR for the handler's faults (trap,
   * error_set, output that is not JSON), INVALID_REQUEST for an input that
   * cannot be sent as JSON.
   */
  readonly error?: {
    readonly code: InvokeErrorCode;
    readonly message: string;
    /** For HOST_FUNCTION_ERROR: whether the host call may succeed if tried again. */
    readonly transient?: boolean;
  };
  /** Wall-clock time of the call, instantiation included. */
  readonly durationMs: number;
  /** What the handler logged, in order, at every level. */
  readonly logs: readonly HandlerLog[];
  /**
   * The handler's memory at its largest: its linear memory plus the host
   * memory (Extism blocks and vars) it made the sandbox hold; undefined when
   * the module's memory is not visible.
   */
  readonly memoryPeakBytes?: number;
  /** What the handler said about retrying (pgfn_retry_after / pgfn_no_retry). */
  readonly retry?: { readonly afterMs?: number; readonly never?: boolean };
}

/**
 * A host function: what it may do with Extism's memory (its replies are
 * counted against the memory limit), then the wasm arguments (i64 as bigint).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type HostFunction = (context: HostContext, ...args: any[]) => unknown;

/** Options of {@link invokeHandler}. */
export interface InvokeOptions {
  /** The export to call. (Default: "handle") */
  readonly entry?: string;
  /**
   * Cap on the handler's linear memory, for modules prepared by guardMemory
   * (memoryGuard.ts); growing past it fails the run as MEMORY_EXCEEDED.
   * (Default: no cap)
   */
  readonly memoryLimitBytes?: number;
  /** What the handler reads with Extism's config_get: the function's env. (Default: {}) */
  readonly config?: Readonly<Record<string, string>>;
  /** Host functions offered under `extism:host/user`. (Default: none) */
  readonly userFunctions?: Readonly<Record<string, HostFunction>>;
  /**
   * The thread's memory outside the JavaScript heap, for the backstop that
   * stops a run whose thread grows past twice the limit (hostMemory.ts);
   * only where one invocation runs per thread. (Default: no backstop)
   */
  readonly threadMemory?: () => number;
  /** Called when that backstop stopped the run: the thread should be replaced. */
  readonly onThreadMemoryExceeded?: () => void;
  /**
   * Instances kept for the next invocation of the same module, given back to
   * their state after start-up. (Default: a new instance per invocation)
   */
  readonly instances?: InstanceCache;
}

/** The export called when none is named. */
export const DEFAULT_ENTRY = "handle";

/** Handler output beyond this is an error: it would be kept in a run row. (1 MiB) */
export const MAX_OUTPUT_BYTES = 1024 * 1024;

/** Log lines kept per invocation; a handler logging in a loop must not fill the heap. */
export const MAX_LOG_LINES = 1000;

/** Characters kept of one log line or error message. */
export const MAX_MESSAGE_CHARS = 4000;

/**
 * Import namespaces a pgfn instance can satisfy: Extism's kernel, WASI
 * (Rust, Go and C PDKs import it) and Extism's namespace for host functions.
 */
const HOST_NAMESPACES: ReadonlySet<string> = new Set([
  "extism:host/env",
  "extism:host/user",
  "wasi_snapshot_preview1",
]);

/** Lowercase hex sha256 of the bytes, as stored in `functions.wasm_sha256`. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * Compiles a module after checking its bytes against the hash it was stored
 * with, so a corrupted or tampered row never runs. Throws an Error saying
 * which check failed.
 *
 * @example
 * const module = await compileModule(row.wasm, row.wasm_sha256);
 */
export async function compileModule(
  wasm: Uint8Array,
  expectedSha256: string,
): Promise<WebAssembly.Module> {
  verifySha256(wasm, expectedSha256);
  return compile(wasm);
}

/** Throws unless the bytes hash to `expectedSha256`. */
export function verifySha256(wasm: Uint8Array, expectedSha256: string): void {
  const actual = sha256Hex(wasm);
  if (actual !== expectedSha256.toLowerCase()) {
    throw new Error(
      `The module's bytes hash to sha256 ${actual}, not the ${expectedSha256} it was stored with; deploy the function again.`,
    );
  }
}

/**
 * Checks, before a deploy stores them, that the bytes are a WebAssembly module
 * exporting `entry` as a function and importing only what pgfn provides.
 * Throws an Error whose message says what is wrong and what to do.
 *
 * @param entry the export pgfn will call. (Default: "handle")
 */
export async function validateWasm(wasm: Uint8Array, entry = DEFAULT_ENTRY): Promise<void> {
  const module = await compile(wasm);
  const exported = WebAssembly.Module.exports(module).find((e) => e.name === entry);
  if (!exported || exported.kind !== "function") {
    throw new Error(
      `The module does not export a function named "${entry}"; export it, or name the entry point the module has.`,
    );
  }
  for (const { module: namespace, name, kind } of WebAssembly.Module.imports(module)) {
    if (!HOST_NAMESPACES.has(namespace) || kind !== "function") {
      // The usual cause: AssemblyScript's default abort, imported as env.abort.
      const hint =
        namespace === "env" && name === "abort"
          ? " Build AssemblyScript handlers with `--use abort=...` (see examples/build.js)."
          : "";
      throw new Error(
        `The module imports ${kind} "${namespace}" "${name}", which pgfn does not provide; only Extism PDK functions and WASI can be imported.${hint}`,
      );
    }
  }
}

async function compile(wasm: Uint8Array): Promise<WebAssembly.Module> {
  try {
    // The cast: TypeScript's WebAssembly types want ArrayBuffer-backed views,
    // and ours come from Buffers or pg bytea, which are.
    return await WebAssembly.compile(wasm as Uint8Array<ArrayBuffer>);
  } catch (error) {
    throw new Error(
      `The bytes are not a valid WebAssembly module (${(error as Error).message}); upload the .wasm file the compiler wrote.`,
      { cause: error },
    );
  }
}

/**
 * Compiled modules by sha256, the least recently used evicted beyond
 * `capacity`. Concurrent gets of one hash share one load and compilation; a
 * failed one is forgotten, so the next get tries again.
 *
 * @example
 * const modules = new ModuleCache();
 * const module = await modules.get(fn.wasm_sha256, () => loadWasm(db, fn.name));
 */
export class ModuleCache {
  // Map iteration order is insertion order: re-inserting on use makes the
  // first key the least recently used.
  private readonly entries = new Map<string, Promise<WebAssembly.Module>>();

  /**
   * @param capacity modules kept compiled. (Default: 64)
   * @param prepare rewrites verified bytes before compiling (the daemon
   *   passes guardMemory). (Default: none)
   */
  constructor(
    private readonly capacity = 64,
    private readonly prepare?: (wasm: Uint8Array) => Promise<Uint8Array>,
  ) {}

  /** The compiled module for `sha256`, calling `load` for its bytes on a miss. */
  get(sha256: string, load: () => Promise<Uint8Array>): Promise<WebAssembly.Module> {
    let entry = this.entries.get(sha256);
    if (entry) {
      this.entries.delete(sha256);
      this.entries.set(sha256, entry);
      return entry;
    }
    entry = Promise.resolve()
      .then(load)
      .then(async (wasm) => {
        // The stored bytes are verified; what prepare makes of them is compiled.
        verifySha256(wasm, sha256);
        return compile(this.prepare ? await this.prepare(wasm) : wasm);
      });
    const current = entry;
    current.catch(() => {
      // Only if still ours: it may have been evicted and loaded again since.
      if (this.entries.get(sha256) === current) this.entries.delete(sha256);
    });
    this.entries.set(sha256, entry);
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.capacity) break;
      this.entries.delete(oldest);
    }
    return entry;
  }

  /** Modules cached, or being compiled. */
  get size(): number {
    return this.entries.size;
  }
}

/**
 * Calls the handler once, on a new instance of `module` or one kept in
 * `options.instances` (in its state after start-up), with `input` as JSON.
 * Never throws for the handler's faults: they come back as an outcome with
 * `ok: false`.
 *
 * @example
 * const outcome = await invokeHandler(module, event);
 * if (!outcome.ok) console.log(outcome.error?.code, outcome.error?.message);
 */
export async function invokeHandler(
  module: WebAssembly.Module,
  input: unknown,
  options: InvokeOptions = {},
): Promise<InvokeOutcome> {
  const entry = options.entry ?? DEFAULT_ENTRY;
  const logs: HandlerLog[] = [];
  // Messages are redacted before they are cut, so no cut leaves half a secret.
  const secrets = secretValues(options.config ?? {});
  const clip = (text: string) => redactAndClip(text, secrets, MAX_MESSAGE_CHARS);
  const started = performance.now();
  let memory: WebAssembly.Memory | undefined;
  // The linear memory's size before the instance's memory can be read (its
  // start-up code runs inside createPlugin): the initial size, then what
  // each granted memory.grow returned.
  let linearPages = initialPages(module);
  let growing = 0;
  const limitBytes =
    options.memoryLimitBytes === undefined
      ? Infinity
      : Math.floor(options.memoryLimitBytes / PAGE_BYTES) * PAGE_BYTES;
  // Linear memory and the host memory the handler makes Extism hold, under one limit.
  const budget = new HostMemory(
    limitBytes,
    () => memory?.buffer.byteLength ?? linearPages * PAGE_BYTES,
    options.threadMemory,
  );
  const peak = () => (memory ? { memoryPeakBytes: budget.peakBytes } : {});
  const done = (output: unknown): InvokeOutcome => ({
    ok: true,
    output,
    durationMs: performance.now() - started,
    logs,
    ...peak(),
  });
  const failed = (message: string, code: InvokeErrorCode = "FUNCTION_ERROR"): InvokeOutcome => ({
    ok: false,
    output: null,
    error: { code, message: clip(message) },
    durationMs: performance.now() - started,
    logs,
    ...peak(),
  });
  const memoryExceeded = (): InvokeOutcome | undefined => {
    const message = budget.refusalMessage();
    if (message === undefined) return undefined;
    if (budget.refusal?.kind === "thread") options.onThreadMemoryExceeded?.();
    return failed(message, "MEMORY_EXCEEDED");
  };

  // Hooks that guardMemory() put around every memory.grow.
  const guard = {
    memory_grow_pre: (context: CallContext, _id: number, delta: number): number => {
      growing = delta >>> 0;
      // 0xffffffff pages: more than any engine grants, so the grow returns -1.
      return budget.mayGrow(context, growing * PAGE_BYTES) ? delta : -1;
    },
    memory_grow_post: (_context: CallContext, _id: number, result: number): number => {
      // memory.grow returns the old size in pages, or -1.
      if (result !== -1) linearPages = (result >>> 0) + growing;
      return result;
    },
    ...Object.fromEntries(
      PASS_THROUGH_HOOKS.map((name) => [
        name,
        (_context: CallContext, ...args: unknown[]) => args.at(-1),
      ]),
    ),
  };

  let json: string | undefined;
  try {
    json = JSON.stringify(input);
  } catch (error) {
    return failed(
      `The input cannot be sent as JSON: ${(error as Error).message}`,
      "INVALID_REQUEST",
    );
  }
  if (json === undefined) return failed("The input cannot be sent as JSON.", "INVALID_REQUEST");
  if (linearPages * PAGE_BYTES > limitBytes) {
    // Not instantiated at all: the engine would allocate it all at once.
    budget.refusal = { kind: "grow", fromBytes: 0, deltaBytes: linearPages * PAGE_BYTES };
    return memoryExceeded()!;
  }
  budget.begin(Buffer.byteLength(json));

  const logger = captureLogger(logs, clip);
  const hooks: Hooks = {
    guard: isGuarded(module) ? guard : {},
    // Extism merges these over its own kernel functions: every allocation a
    // handler can ask for is counted (hostMemory.ts).
    kernel: budget.kernelFunctions(options.config ?? {}, logger),
    user: Object.fromEntries(
      Object.entries(options.userFunctions ?? {}).map(([name, fn]) => [
        name,
        (context: CallContext, ...args: unknown[]) =>
          fn(budget.hostContext(context, `${name}'s reply`), ...args),
      ]),
    ),
    logger,
  };
  const cache = options.instances && isReusable(module) ? options.instances : undefined;
  if (cache && (entry === GUARD_SAVE_GLOBALS || entry === GUARD_RESTORE_GLOBALS)) {
    return failed(`The module does not export a function named "${entry}".`);
  }
  let kept = cache?.take(module, hooks);
  try {
    if (!kept) {
      try {
        kept = await KeptPlugin.create(module, hooks, cache !== undefined);
      } catch (error) {
        // Start-up code (_initialize, a start function) can allocate too.
        return (
          memoryExceeded() ?? failed(`The module could not be instantiated: ${messageOf(error)}`)
        );
      }
      // Start-up that ran against a limit it hit is not the start-up another limit would see.
      if (budget.refusal) kept.reusable = false;
    }
    memory = kept.memory;
    if (memory && memory.buffer.byteLength + budget.hostBytesInUse > limitBytes) {
      budget.refusal ??= { kind: "grow", fromBytes: 0, deltaBytes: memory.buffer.byteLength };
      return memoryExceeded()!;
    }
    let out;
    budget.startCall();
    try {
      out = await kept.plugin.call(entry, json);
    } catch (error) {
      return memoryExceeded() ?? failed(handlerMessage(error, entry, logs));
    }
    // A refused host allocation stops the run even if the module caught the trap.
    if (budget.stopped) return memoryExceeded()!;
    // A handler that survived a refused grow and succeeded has succeeded.
    const bytes = out?.bytes() ?? new Uint8Array();
    if (bytes.byteLength > MAX_OUTPUT_BYTES) {
      return failed(
        `The handler's output is ${bytes.byteLength} bytes; at most ${MAX_OUTPUT_BYTES} are kept.`,
      );
    }
    if (bytes.byteLength === 0) return done(null);
    const text = new TextDecoder().decode(bytes);
    try {
      return done(JSON.parse(text));
    } catch {
      return failed(`handler output is not JSON: ${redactAndClip(text, secrets, 200)}`);
    }
  } finally {
    if (kept) {
      kept.release();
      // Given back to its state after start-up now, not when next taken:
      // this invocation's data does not wait in an idle instance.
      if (cache && kept.restore()) cache.give(module, kept);
      else await kept.close();
    }
  }
}

/**
 * What an instance's imports answer to: the invocation running on it. The
 * instance's imports are fixed when it is made; these change with each
 * invocation.
 */
interface Hooks {
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
type ImportFunction = (context: CallContext, ...args: any[]) => unknown;

/** Kernel functions whose answers depend on the invocation: start-up code calling one makes its instance single-use. */
const INVOCATION_KERNEL_FUNCTIONS: ReadonlySet<string> = new Set([
  "config_get",
  "var_get",
  "var_set",
]);

/** Levels of Extism's logger (its Console). */
const LOG_LEVELS = ["trace", "debug", "info", "warn", "error"] as const;

/**
 * An Extism plugin whose imports call the hooks of the invocation running on
 * it. While reusable, it holds a copy of its linear memory as start-up left
 * it, and its mutable globals are saved in the module (guardMemory).
 */
class KeptPlugin {
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
 * thread: a sandbox thread keeps one (worker.ts).
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

/**
 * The handler's own words for a failed call. error_set arrives as
 * "Plugin-originated error: ..."; a trap loses them, so when the last thing
 * the handler did was log at error level (as an abort does), that line is
 * the message and the trap is added.
 */
function handlerMessage(error: unknown, entry: string, logs: readonly HandlerLog[]): string {
  const message = messageOf(error);
  const originated = "Plugin-originated error: ";
  if (message.startsWith(originated)) return message.slice(originated.length);
  if (message.startsWith("Plugin error: function") && message.endsWith("does not exist")) {
    return `The module does not export a function named "${entry}".`;
  }
  const last = logs.at(-1);
  return last?.level === "error" ? `${last.message} (trap: ${message})` : `trap: ${message}`;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * A Console for Extism's `logger` option that collects lines instead of
 * printing them. Extism calls logger[level](text) for the handler's log_*
 * calls and also for its own complaints (e.g. a bad memory address).
 */
function captureLogger(into: HandlerLog[], clip: (text: string) => string): Console {
  let dropped = 0;
  const at = (level: string) => (message: unknown) => {
    if (into.length < MAX_LOG_LINES - 1) {
      into.push({ level, message: clip(String(message)), at: new Date().toISOString() });
      return;
    }
    // The last slot says how many lines were dropped.
    dropped += 1;
    into[MAX_LOG_LINES - 1] = {
      level: "warn",
      message: `${dropped} more log lines dropped (at most ${MAX_LOG_LINES} are kept)`,
      at: new Date().toISOString(),
    };
  };
  return {
    trace: at("trace"),
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
  } as unknown as Console;
}

const guarded = new WeakMap<WebAssembly.Module, boolean>();

/** Whether guardMemory() instrumented this module. */
function isGuarded(module: WebAssembly.Module): boolean {
  let value = guarded.get(module);
  if (value === undefined) {
    value = WebAssembly.Module.imports(module).some(
      (i) => i.module === GUARD_NAMESPACE && i.name === "memory_grow_pre",
    );
    guarded.set(module, value);
  }
  return value;
}

const initialPagesOf = new WeakMap<WebAssembly.Module, number>();

/** The linear memory's initial pages, as guardMemory() recorded them; 0 when it did not. */
function initialPages(module: WebAssembly.Module): number {
  let pages = initialPagesOf.get(module);
  if (pages === undefined) {
    const [section] = WebAssembly.Module.customSections(module, GUARD_INITIAL_PAGES_SECTION);
    pages = section?.byteLength === 4 ? new DataView(section).getUint32(0, true) : 0;
    initialPagesOf.set(module, pages);
  }
  return pages;
}

const userImportsOf = new WeakMap<WebAssembly.Module, readonly string[]>();

/** The names the module imports from `extism:host/user`. */
function userImports(module: WebAssembly.Module): readonly string[] {
  let names = userImportsOf.get(module);
  if (names === undefined) {
    names = WebAssembly.Module.imports(module)
      .filter((i) => i.module === "extism:host/user")
      .map((i) => i.name);
    userImportsOf.set(module, names);
  }
  return names;
}

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

const reusableOf = new WeakMap<WebAssembly.Module, boolean>();

/**
 * Whether an instance of the module can be given back to its state after
 * start-up: guardMemory added the globals' save and restore, and any WASI
 * it imports keeps no state.
 */
function isReusable(module: WebAssembly.Module): boolean {
  let reusable = reusableOf.get(module);
  if (reusable === undefined) {
    const exports = new Set(WebAssembly.Module.exports(module).map((e) => e.name));
    reusable =
      exports.has(GUARD_SAVE_GLOBALS) &&
      exports.has(GUARD_RESTORE_GLOBALS) &&
      WebAssembly.Module.imports(module).every(
        (i) => i.module !== "wasi_snapshot_preview1" || STATELESS_WASI.has(i.name),
      );
    reusableOf.set(module, reusable);
  }
  return reusable;
}

const wasiNeeded = new WeakMap<WebAssembly.Module, boolean>();

/**
 * WASI only for modules that import it (Rust, Go and C PDKs do; AssemblyScript
 * does not): Extism refuses a WASI import without `useWasi`, and setting it up
 * opens /dev/null for each instance.
 */
function needsWasi(module: WebAssembly.Module): boolean {
  let needed = wasiNeeded.get(module);
  if (needed === undefined) {
    needed = WebAssembly.Module.imports(module).some((i) => i.module === "wasi_snapshot_preview1");
    wasiNeeded.set(module, needed);
  }
  return needed;
}
