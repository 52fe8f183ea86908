/**
 * One call of a handler: its input sent as JSON, its output, error or trap
 * turned into an {@link InvokeOutcome}, its memory limit and pgfn's host
 * functions put around the call, on an instance from instances.ts. Runs in
 * the foreground of the thread that calls it; the pool (pool.ts) runs it on
 * a sandbox thread (thread.ts) and adds the time limit.
 *
 * How Extism (@extism/extism 2.0.0-rc13, foreground) reports what a handler
 * did, and what we make of it:
 * - output_set: `call()` returns the bytes; we parse them as JSON.
 * - error_set: `call()` throws "Plugin-originated error: <message>".
 * - a trap (unreachable, out-of-bounds access, AssemblyScript's abort): the
 *   WebAssembly RuntimeError is thrown as is and whatever error_set said is
 *   lost, so a handler's abort logs its message at error level just before
 *   trapping (assemblyscript/host.ts) and we report that line.
 * - the export's return code is ignored by Extism: returning 1 without
 *   error_set counts as success.
 *
 * Its own file because this is what changes with Extism's behaviour and
 * with what a run row records of a call; which instance the call runs on
 * (instances.ts) and which module it is (module.ts) change for other reasons.
 */
import type { CallContext } from "@extism/extism";
import type { ErrorCode } from "../errors.js";
import { redactAndClip, secretValues } from "./host/redact.js";
import { HostMemory, type HostContext } from "./hostMemory.js";
import { isReusable, KeptPlugin, type Hooks, type InstanceCache } from "./instances.js";
import { captureLogger, MAX_MESSAGE_CHARS, type HandlerLog, type LogSink } from "./logs.js";
import {
  GUARD_INITIAL_PAGES_SECTION,
  GUARD_NAMESPACE,
  GUARD_RESTORE_GLOBALS,
  GUARD_SAVE_GLOBALS,
  PAGE_BYTES,
  PASS_THROUGH_HOOKS,
} from "./memoryGuard.js";
import { DEFAULT_ENTRY, perModule } from "./module.js";

/**
 * The codes an invocation can come back with, from invokeHandler itself
 * (FUNCTION_ERROR, INVALID_REQUEST, MEMORY_EXCEEDED), from the sandbox
 * thread (HOST_FUNCTION_ERROR) or from the pool (TIMEOUT, and
 * MEMORY_EXCEEDED or FUNCTION_ERROR for a thread that died).
 */
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
   * cannot be sent as JSON, MEMORY_EXCEEDED past the memory limit; the
   * sandbox thread and the pool add the other {@link InvokeErrorCode}s.
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
  /** Told of each log line as it is kept (logRelay.ts). (Default: none) */
  readonly logSink?: LogSink;
}

/** Handler output beyond this is an error: it would be kept in a run row. (1 MiB) */
export const MAX_OUTPUT_BYTES = 1024 * 1024;

/**
 * The input as the JSON text a handler is given, or why it cannot be sent
 * (a cycle, a BigInt, nothing at all): one wording for both runtimes.
 */
export function inputJson(input: unknown): { json: string } | { refusal: string } {
  try {
    const json = JSON.stringify(input);
    return json === undefined ? { refusal: "The input cannot be sent as JSON." } : { json };
  } catch (error) {
    return { refusal: `The input cannot be sent as JSON: ${(error as Error).message}` };
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

  const sent = inputJson(input);
  if ("refusal" in sent) return failed(sent.refusal, "INVALID_REQUEST");
  const { json } = sent;
  if (linearPages * PAGE_BYTES > limitBytes) {
    // Not instantiated at all: the engine would allocate it all at once.
    budget.refusal = { kind: "grow", fromBytes: 0, deltaBytes: linearPages * PAGE_BYTES };
    return memoryExceeded()!;
  }
  budget.begin(Buffer.byteLength(json));

  const logger = captureLogger(logs, clip, options.logSink);
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

/** Whether guardMemory() instrumented this module. */
const isGuarded = perModule((module): boolean =>
  WebAssembly.Module.imports(module).some(
    (i) => i.module === GUARD_NAMESPACE && i.name === "memory_grow_pre",
  ),
);

/** The linear memory's initial pages, as guardMemory() recorded them; 0 when it did not. */
const initialPages = perModule((module): number => {
  const [section] = WebAssembly.Module.customSections(module, GUARD_INITIAL_PAGES_SECTION);
  return section?.byteLength === 4 ? new DataView(section).getUint32(0, true) : 0;
});
