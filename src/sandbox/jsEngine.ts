/**
 * One call of a JavaScript handler (compiled at deploy by jsCompile.ts), in
 * QuickJS compiled to WebAssembly, on a sandbox thread: the same pool, host
 * functions, deadline, run rows and error codes as a WebAssembly handler.
 *
 * The engine: QuickJS, synchronous build (`@jitl/quickjs-wasmfile-release-sync`
 * through `quickjs-emscripten-core`). Measured on the 2-core dev machine
 * under load (echo handler, a new QuickJS runtime and context per call, the
 * handler's script evaluated and called, 1000 runs): sync p50 0.32 ms, p99
 * 1.4 ms; the asyncified build p50 0.55 ms, p99 3.6 ms; a new WebAssembly
 * instance of QuickJS per call p50 6.9 ms. The asyncified build buys only
 * host calls that suspend the engine, and ours need no suspending: a host
 * call already blocks the whole sandbox thread (thread.ts, Atomics.wait)
 * while the main thread works, so `ctx.db.query` returns an already settled
 * promise. Other candidates (an Extism-ABI JavaScript plugin, a
 * SpiderMonkey build) need a toolchain of their own and weigh megabytes more.
 *
 * Per thread, one QuickJS WebAssembly instance; per call, a new JSRuntime
 * (its own heap, freed when the call ends): a global set by one call is not
 * seen by the next. The limits:
 * - time: the pool kills the thread at the deadline, as for any handler;
 *   QuickJS's interrupt handler is not needed for that.
 * - memory: QuickJS's own limit (setMemoryLimit) does not hold in this
 *   build (it counts 8 bytes per allocation, not the allocation: a loop of
 *   1 MiB strings grew the instance to 2 GiB). Instead the instance's linear
 *   memory may not grow past the function's limit: Emscripten's heap growth
 *   calls `grow` on the Memory object, which refuses; malloc then fails and
 *   QuickJS throws "out of memory", which ends the run as MEMORY_EXCEEDED.
 *   An instance whose memory grew, or that failed in a way QuickJS may not
 *   have cleaned up after (out of memory, a stack overflow), is dropped, so
 *   every call starts on an instance at its initial size.
 */
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import quickjsSyncExport from "@jitl/quickjs-wasmfile-release-sync";
import {
  newQuickJSWASMModuleFromVariant,
  newVariant,
  type QuickJSContext,
  type QuickJSHandle,
  type QuickJSSyncVariant,
  type QuickJSWASMModule,
  Lifetime,
} from "quickjs-emscripten-core";
import { formatBytes } from "./hostMemory.js";
import { redactAndClip, redactionWindow, secretValues } from "./host/redact.js";
import type { InvokeErrorCode, InvokeOutcome } from "./invocation.js";
import { inputJson, MAX_OUTPUT_BYTES } from "./invocation.js";
import { captureLogger, MAX_MESSAGE_CHARS, type HandlerLog, type LogSink } from "./logs.js";
import { DEFAULT_ENTRY } from "./module.js";
import { MAX_HOST_ARGUMENT_BYTES, type HostReply } from "./protocol.js";
import { firstOriginalPosition, JS_MODULE_FILE, splitSourceMap } from "./sourceMap.js";

/** Options of {@link invokeJavaScript}. */
export interface JsInvokeOptions {
  /**
   * The function's entrypoint: the export called. "handle" means the
   * default export, else the one named `handle`. (Default: "handle")
   */
  readonly entry?: string;
  /** The instance's linear memory may not grow past this. (Default: no cap) */
  readonly memoryLimitBytes?: number;
  /** `ctx.env`: the function's env. (Default: {}) */
  readonly config?: Readonly<Record<string, string>>;
  /** Serves `ctx.db.query` (db_query) and `ctx.fetch` (http_fetch). (Default: every call fails) */
  readonly callHost?: (name: string, payload: unknown) => HostReply;
  /** `ctx.retryAfter(ms)` and `ctx.noRetry()`: what the handler said about retrying. */
  readonly onRetry?: (retry: { afterMs?: number; never?: boolean }) => void;
  /** Told of each `ctx.log` line as it is kept (logRelay.ts). (Default: none) */
  readonly logSink?: LogSink;
}

/** How long a retry may be asked to wait, as pgfn_retry_after allows. (1 day) */
const MAX_RETRY_AFTER_MS = 86_400_000;

const PAGE = 65_536;

/** A QuickJS WebAssembly instance whose linear memory grows only up to `capBytes`. */
class Engine {
  /** Set for each call. */
  capBytes = Infinity;
  /** A grow was refused during the current call. */
  refused = false;

  private constructor(
    readonly quickjs: QuickJSWASMModule,
    readonly memory: WebAssembly.Memory,
    readonly initialBytes: number,
  ) {}

  static async create(): Promise<Engine> {
    compiled ??= compileQuickJs();
    const module = await compiled;
    enginesStarted += 1;
    const quickjs = await newQuickJSWASMModuleFromVariant(
      newVariant(quickjsSync, { wasmModule: module }),
    );
    const memory = quickjs.getWasmMemory();
    const engine = new Engine(quickjs, memory, memory.buffer.byteLength);
    // Emscripten grows its heap only through this method of this object
    // (its emscripten_resize_heap), and takes a throw as "no memory".
    const grow = WebAssembly.Memory.prototype.grow;
    memory.grow = function (delta: number) {
      if (memory.buffer.byteLength + delta * PAGE > engine.capBytes) {
        engine.refused = true;
        throw new RangeError("pgfn: the function's memory limit");
      }
      return grow.call(memory, delta);
    };
    return engine;
  }
}

// The package's types describe its CommonJS build; imported as ESM, its default is the variant.
const quickjsSync = quickjsSyncExport as unknown as QuickJSSyncVariant;

let compiled: Promise<WebAssembly.Module> | undefined;

/** QuickJS's .wasm, compiled once per thread: each new instance reuses it. */
async function compileQuickJs(): Promise<WebAssembly.Module> {
  const require = createRequire(import.meta.url);
  const bytes = await readFile(require.resolve("@jitl/quickjs-wasmfile-release-sync/wasm"));
  return WebAssembly.compile(bytes);
}

/** This thread's instance; undefined until the first call, and after one that dropped it. */
let engine: Promise<Engine> | undefined;
let enginesStarted = 0;

/** How many engine instances this thread has started: tests tell a reused engine from a new one. */
export const engineStarts = (): number => enginesStarted;

/**
 * Starts this thread's engine ahead of its first call. A failure is left to
 * that call to report.
 */
export async function warmJavaScript(): Promise<void> {
  try {
    await (engine ??= Engine.create());
  } catch {
    engine = undefined;
  }
}

/**
 * `f(handle)`, then the handle disposed even when `f` throws: Lifetime's own
 * consume leaves it alive then, and a handle left alive makes freeing the
 * runtime abort, which costs the thread its engine.
 */
function consume<T>(handle: QuickJSHandle, f: (handle: QuickJSHandle) => T): T {
  try {
    return f(handle);
  } finally {
    if (handle.alive) handle.dispose();
  }
}

/** A failed run, as the handler's code or the engine left it. */
type Failure = {
  ok: false;
  message: string;
  stack?: string;
  /** What the handler failed with is a ctx.db.query or ctx.fetch rejection, uncaught. */
  host?: { transient: boolean };
  /** It is an error ctx.retryAfter or ctx.noRetry made: a decision, not a fault to trace. */
  asked?: true;
};

/** A run's message for QuickJS itself failing: V8's stack limit inside the engine, or an abort. */
const engineFailure = (error: unknown): Failure => {
  const message = (error as Error).message ?? String(error);
  return {
    ok: false,
    message: /call stack/i.test(message)
      ? "The handler overflowed the stack (unbounded recursion?)."
      : `The JavaScript engine failed: ${message}`,
  };
};

/**
 * Calls the JavaScript handler once, in a new QuickJS runtime on this
 * thread's engine instance, with `input` as its event. Never throws for the
 * handler's faults: they come back as an outcome with `ok: false`.
 *
 * @example
 * const outcome = await invokeJavaScript(await compileJavaScript(source, "h.ts"), event);
 */
export async function invokeJavaScript(
  code: string,
  input: unknown,
  options: JsInvokeOptions = {},
): Promise<InvokeOutcome> {
  const logs: HandlerLog[] = [];
  const config = options.config ?? {};
  const secrets = secretValues(config);
  const clip = (text: string) => redactAndClip(text, secrets, MAX_MESSAGE_CHARS);
  const logger = captureLogger(logs, clip, options.logSink);
  const started = performance.now();
  let peak: number | undefined;
  const finish = (o: { ok: boolean; output: unknown; error?: InvokeOutcome["error"] }) => ({
    ...o,
    durationMs: performance.now() - started,
    logs,
    ...(peak !== undefined && { memoryPeakBytes: peak }),
  });
  const failed = (message: string, code: InvokeErrorCode = "FUNCTION_ERROR"): InvokeOutcome =>
    finish({ ok: false, output: null, error: { code, message: clip(message) } });

  const sent = inputJson(input);
  if ("refusal" in sent) return failed(sent.refusal, "INVALID_REQUEST");
  const { json } = sent;

  let e: Engine;
  try {
    e = await (engine ??= Engine.create());
  } catch (error) {
    engine = undefined;
    return failed(`The JavaScript engine could not start: ${(error as Error).message}`);
  }
  const limit = options.memoryLimitBytes ?? Infinity;
  if (e.initialBytes > limit) {
    return failed(
      `The JavaScript engine needs ${formatBytes(e.initialBytes)} to start; the function's memory limit is ${formatBytes(limit)}.`,
      "MEMORY_EXCEEDED",
    );
  }
  e.capBytes = limit;
  e.refused = false;

  let settled: { ok: true; json: string } | Failure | undefined;
  // Whether the engine may serve the next call: false after anything QuickJS may not have cleaned up after.
  let healthy = true;
  // A host error inside one of ctx's functions (V8's stack limit, mostly):
  // it may have unwound QuickJS mid-update, so the run fails and the engine goes.
  let fault: unknown;
  // Each failed host call's error, as thrown in the handler's code.
  const hostFailures: { error: QuickJSHandle; transient: boolean }[] = [];
  // What of a string is copied out of the context for a log line or an
  // error message: what redaction needs to fill MAX_MESSAGE_CHARS.
  const window = redactionWindow(secrets, MAX_MESSAGE_CHARS);
  const runtime = e.quickjs.newRuntime();
  const context = runtime.newContext();
  // Handles to dispose before the context is: each of the context's own
  // values, taken before the handler's code runs, so that `ctx` and the
  // description of what the handler threw work whatever that code does to
  // the global object.
  const owned: QuickJSHandle[] = [];
  try {
    const keep = (h: QuickJSHandle) => (owned.push(h), h);
    const get = (object: QuickJSHandle, key: string) => keep(context.getProp(object, key));
    const Object_ = get(context.global, "Object");
    const JSON_ = get(context.global, "JSON");
    const parse = get(JSON_, "parse");
    const stringify = get(JSON_, "stringify");
    const freeze = get(Object_, "freeze");
    const isPrototypeOf = get(get(Object_, "prototype"), "isPrototypeOf");
    const Error_ = get(context.global, "Error");
    const errorPrototype = get(Error_, "prototype");
    const reflectGet = get(get(context.global, "Reflect"), "get");
    const Promise_ = get(context.global, "Promise");
    const resolve = get(Promise_, "resolve");
    const reject = get(Promise_, "reject");
    const String_ = get(context.global, "String");
    const slice = get(get(String_, "prototype"), "slice");
    const Number_ = get(context.global, "Number");

    // `ctx` is built here from handles rather than by a script: parsing one
    // on every call cost more than the call itself. Inside a host function
    // a thrown handle is thrown in the handler's code.
    const call = (fn: QuickJSHandle, ...args: QuickJSHandle[]) =>
      callOn(context.undefined, fn, ...args);
    function callOn(self: QuickJSHandle, fn: QuickJSHandle, ...args: QuickJSHandle[]) {
      const r = context.callFunction(fn, self, ...args);
      if (r.error) throw r.error;
      return r.value;
    }
    /** `object[key]`, a getter's throw thrown here (context.getProp would leave it pending). */
    const prop = (object: QuickJSHandle, key: string) =>
      consume(context.newString(key), (k) => call(reflectGet, object, k));
    const fromJson = (text: string | undefined) =>
      text === undefined
        ? context.undefined
        : consume(context.newString(text), (s) => call(parse, s));
    /** String(h) in the context, as a handle of the caller's. */
    const toString = (h: QuickJSHandle) =>
      context.typeof(h) === "string" ? h.dup() : call(String_, h);
    // Whatever crosses from the context to this thread's heap is measured
    // first, inside the context: a handler's string may be as long as its
    // memory limit allows, the thread's heap is smaller. QuickJS answers a
    // string's length itself, without the handler's code; each of its
    // UTF-16 units is at least one UTF-8 byte.
    const lengthOf = (s: QuickJSHandle) => consume(context.getProp(s, "length"), context.getNumber);
    /** String(h), copied out only if at most `max` units long; else `refusal(length)` is thrown in the handler's code. */
    const bounded = (h: QuickJSHandle, max: number, refusal: (length: number) => string) =>
      consume(toString(h), (s) => {
        const length = lengthOf(s);
        if (length > max) throw context.newError(refusal(length));
        return context.getString(s);
      });
    /** String(h), cut inside the context to `window` units, "…" marking a cut. */
    const clipped = (h: QuickJSHandle) =>
      consume(toString(h), (s) => {
        if (lengthOf(s) <= window) return context.getString(s);
        const start = context.newNumber(0);
        const end = context.newNumber(window);
        try {
          return `${consume(callOn(s, slice, start, end), context.getString)}…`;
        } finally {
          start.dispose();
          end.dispose();
        }
      });
    const argument = (name: string) => (length: number) =>
      `${name}: the argument is at least ${length} bytes; at most ${MAX_HOST_ARGUMENT_BYTES} are accepted`;
    /** JSON.stringify in the context, then JSON.parse here: undefined where the first gives undefined. */
    const toHost = (h: QuickJSHandle, name: string): unknown =>
      context.typeof(h) === "undefined"
        ? undefined
        : consume(call(stringify, h), (json) =>
            context.typeof(json) === "string"
              ? JSON.parse(bounded(json, MAX_HOST_ARGUMENT_BYTES, argument(name)))
              : undefined,
          );
    const str = (h: QuickJSHandle, name: string) =>
      bounded(h, MAX_HOST_ARGUMENT_BYTES, argument(name));
    const frozen = (h: QuickJSHandle) => (call(freeze, h).dispose(), h);
    const object = (props: Record<string, QuickJSHandle>) => {
      const o = context.newObject();
      for (const [key, value] of Object.entries(props)) {
        context.setProp(o, key, value);
        value.dispose();
      }
      return frozen(o);
    };
    /** A host error (not a handle the context threw) inside ctx's functions: the engine's fault. */
    const hostError = (error: unknown) => {
      fault ??= error;
      return context.newError(`pgfn: ${(error as Error).message ?? String(error)}`);
    };
    const fn = (name: string, body: (...args: QuickJSHandle[]) => QuickJSHandle | undefined) =>
      context.newFunction(name, (...args) => {
        try {
          return body(...args);
        } catch (error) {
          if (error instanceof Lifetime) throw error;
          throw hostError(error);
        }
      });
    /** `new Promise((resolve) => resolve(f()))`: what `f` throws is the rejection. */
    const settle = (f: () => QuickJSHandle) => {
      let value: QuickJSHandle;
      try {
        value = f();
      } catch (error) {
        const reason = error instanceof Lifetime ? (error as QuickJSHandle) : hostError(error);
        return consume(reason, (r) => callOn(Promise_, reject, r));
      }
      return consume(value, (v) => callOn(Promise_, resolve, v));
    };
    /** A host function's value; its error thrown as the handler's Error. */
    const host = (name: string, argument: unknown): unknown => {
      const bytes = Buffer.byteLength(JSON.stringify(argument));
      if (bytes > MAX_HOST_ARGUMENT_BYTES) {
        throw context.newError(
          `${name}: the argument is ${bytes} bytes; at most ${MAX_HOST_ARGUMENT_BYTES} are accepted`,
        );
      }
      const reply: HostReply = options.callHost
        ? options.callHost(name, argument)
        : { ok: false, error: { message: `${name} is not available here`, transient: false } };
      if (!reply.ok) {
        const error = context.newError(reply.error.message);
        // As node-postgres's errors have it: a handler tests e.code for 23505 (unique violation).
        if (typeof reply.error.code === "string") {
          consume(context.newString(reply.error.code.slice(0, 5)), (c) =>
            context.setProp(error, "code", c),
          );
        }
        hostFailures.push({ error: keep(error.dup()), transient: reply.error.transient });
        throw error;
      }
      return reply.value;
    };
    /** A value in a log line: its JSON, else String(value); clipped. */
    const shown = (h: QuickJSHandle) => {
      try {
        return consume(call(stringify, h), (json) =>
          context.typeof(json) === "string" ? clipped(json) : "undefined",
        );
      } catch (error) {
        if (!(error instanceof Lifetime)) throw error;
        error.dispose();
        return clipped(h);
      }
    };
    // The logger redacts and clips each line to MAX_MESSAGE_CHARS.
    const level = (name: "debug" | "info" | "warn" | "error") =>
      fn(name, (message, fields) => {
        const suffix =
          fields !== undefined && context.typeof(fields) !== "undefined" ? ` ${shown(fields)}` : "";
        logger[name](clipped(message ?? context.undefined) + suffix);
        return undefined;
      });
    /** console.log and co.: their arguments, strings as they are, joined by spaces. */
    const consoleLevel = (name: string, to: "debug" | "info" | "warn" | "error") =>
      fn(name, (...args) => {
        let line = "";
        for (const a of args) {
          if (line.length > window) break;
          line += (line ? " " : "") + (context.typeof(a) === "string" ? clipped(a) : shown(a));
        }
        logger[to](line);
        return undefined;
      });
    const response = (r: { status: number; headers?: unknown; body?: string }) =>
      object({
        status: context.newNumber(r.status),
        ok: r.status >= 200 && r.status < 300 ? context.true : context.false,
        headers:
          r.headers === undefined ? context.undefined : frozen(fromJson(JSON.stringify(r.headers))),
        text: fn("text", () =>
          settle(() => (r.body === undefined ? context.undefined : context.newString(r.body))),
        ),
        json: fn("json", () =>
          settle(() =>
            consume(r.body === undefined ? context.undefined : context.newString(r.body), (b) =>
              call(parse, b),
            ),
          ),
        ),
      });
    // The handler's message stays in the context, `Error(String(message))`:
    // it may be any length, and is clipped where the run's message is made.
    const retryError = (message: QuickJSHandle | undefined, otherwise: () => string) =>
      message === undefined || context.typeof(message) === "undefined"
        ? context.newError(otherwise())
        : consume(toString(message), (s) => call(Error_, s));
    /** The errors ctx.retryAfter and ctx.noRetry made: returned rather than thrown, they count as thrown. */
    const retries: QuickJSHandle[] = [];
    const said = (error: QuickJSHandle) => (retries.push(keep(error.dup())), error);
    const env: Record<string, QuickJSHandle> = {};
    for (const [key, value] of Object.entries(config)) env[key] = context.newString(value);
    const ctx = keep(
      object({
        env: object(env),
        log: object({
          debug: level("debug"),
          info: level("info"),
          warn: level("warn"),
          error: level("error"),
        }),
        db: object({
          query: fn("query", (sql, params) =>
            settle(() =>
              fromJson(
                JSON.stringify(
                  host("db_query", {
                    sql: toHost(sql ?? context.undefined, "db_query"),
                    params:
                      params === undefined || context.typeof(params) === "undefined"
                        ? []
                        : toHost(params, "db_query"),
                  }) ?? null,
                ),
              ),
            ),
          ),
        }),
        fetch: fn("fetch", (url, init) =>
          settle(() => {
            const field = (key: string) =>
              init !== undefined &&
              (context.typeof(init) === "function" ||
                (context.typeof(init) === "object" && !context.eq(init, context.null)))
                ? prop(init, key)
                : context.undefined;
            const body = consume(field("body"), (b) =>
              context.typeof(b) === "undefined" ? undefined : str(b, "http_fetch"),
            );
            return response(
              host("http_fetch", {
                url: str(url ?? context.undefined, "http_fetch"),
                method: consume(field("method"), (m) => toHost(m, "http_fetch")),
                headers: consume(field("headers"), (h) => toHost(h, "http_fetch")),
                body,
              }) as { status: number; headers?: unknown; body?: string },
            );
          }),
        ),
        retryAfter: fn("retryAfter", (ms, message) => {
          // Number(ms) in the context: a valueOf that throws is thrown to the handler.
          const after = ms === undefined ? NaN : consume(call(Number_, ms), context.getNumber);
          options.onRetry?.({ afterMs: Math.max(0, Math.min(after || 0, MAX_RETRY_AFTER_MS)) });
          return said(
            retryError(
              message,
              () => `the handler asked to be retried after ${clipped(ms ?? context.undefined)} ms`,
            ),
          );
        }),
        noRetry: fn("noRetry", (message) => {
          options.onRetry?.({ never: true });
          return said(retryError(message, () => "the handler asked not to be retried"));
        }),
      }),
    );
    const input = keep(fromJson(json));
    consume(
      object({
        log: consoleLevel("log", "info"),
        info: consoleLevel("info", "info"),
        debug: consoleLevel("debug", "debug"),
        warn: consoleLevel("warn", "warn"),
        error: consoleLevel("error", "error"),
      }),
      (c) => context.setProp(context.global, "console", c),
    );
    const among = (list: readonly QuickJSHandle[], h: QuickJSHandle) =>
      list.some((x) => context.eq(x, h));
    /** The handler's rejection: a failed host call's own error, uncaught, is the host's failure. */
    const rejected = (error: QuickJSHandle): Failure => {
      const failure = describe(error);
      if (among(retries, error)) return { ...failure, asked: true };
      const host = hostFailures.find((f) => context.eq(f.error, error));
      return host ? { ...failure, host: { transient: host.transient } } : failure;
    };

    /**
     * What the handler threw, read with the context's own functions saved
     * above, never with a script evaluated after the handler ran: each step
     * may throw (a getter, a Proxy, a replaced toString) and stands alone.
     */
    const describe = (error: QuickJSHandle): Failure => {
      const attempt = <T>(f: () => T): T | undefined => {
        try {
          return f();
        } catch (thrown) {
          if (!(thrown instanceof Lifetime)) throw thrown;
          thrown.dispose();
          return undefined;
        }
      };
      const isError = attempt(() =>
        consume(callOn(errorPrototype, isPrototypeOf, error), (b) => context.eq(b, context.true)),
      );
      if (isError) {
        const name = attempt(() => consume(prop(error, "name"), clipped));
        const message =
          attempt(() => consume(prop(error, "message"), clipped)) ??
          "(a message that cannot be shown)";
        const stack = attempt(() =>
          consume(prop(error, "stack"), (s) =>
            context.typeof(s) === "string" ? clipped(s) : undefined,
          ),
        );
        return {
          ok: false,
          message: !name || name === "Error" ? message : `${name}: ${message}`,
          ...(stack !== undefined && { stack }),
        };
      }
      const shown =
        context.typeof(error) === "string"
          ? clipped(error)
          : (attempt(() =>
              consume(call(stringify, error), (json) =>
                context.typeof(json) === "string" ? clipped(json) : undefined,
              ),
            ) ?? attempt(() => clipped(error)));
      return {
        ok: false,
        message:
          shown === undefined
            ? "the handler threw a value that cannot be shown"
            : `the handler threw ${shown}`,
      };
    };

    // The module's evaluation: its namespace, or a promise for it when the
    // module awaits at top level (settled, if ever, by the pending jobs).
    const evaluated = context.evalCode(code, JS_MODULE_FILE, { type: "module" });
    let m: QuickJSHandle | undefined;
    if (evaluated.error) {
      settled = consume(evaluated.error, describe);
    } else {
      let loaded = context.getPromiseState(keep(evaluated.value));
      if (loaded.type === "pending") {
        runtime.executePendingJobs(-1).dispose();
        loaded = context.getPromiseState(evaluated.value);
      }
      if (loaded.type === "rejected") settled = consume(loaded.error, describe);
      else if (loaded.type === "fulfilled")
        m = loaded.notAPromise ? loaded.value : keep(loaded.value);
    }
    if (m) {
      const entry = options.entry ?? DEFAULT_ENTRY;
      const kind = context.typeof(m);
      let handler: QuickJSHandle | undefined;
      if (kind === "object" || kind === "function") {
        if (entry === DEFAULT_ENTRY) {
          const d = get(m, "default");
          handler = context.typeof(d) === "function" ? d : get(m, entry);
        } else handler = get(m, entry);
      }
      if (!handler || context.typeof(handler) !== "function") {
        settled = { ok: false, message: noEntry(entry, exportNames(context, m, clipped)) };
      } else {
        const result = context.callFunction(handler, context.undefined, input, ctx);
        const promise = keep(
          result.error
            ? consume(result.error, (r) => callOn(Promise_, reject, r))
            : consume(result.value, (v) => callOn(Promise_, resolve, v)),
        );
        // Every job the handler's promises queue; host calls settle at once,
        // so when the queue is empty the handler is done or waits for ever.
        const jobs = runtime.executePendingJobs(-1);
        if (jobs.error) {
          settled = consume(jobs.error, describe);
        } else {
          const state = context.getPromiseState(promise);
          if (state.type === "rejected") settled = consume(state.error, rejected);
          else if (state.type === "fulfilled") {
            settled = consume(state.value, (value): NonNullable<typeof settled> => {
              if (context.typeof(value) === "undefined") return { ok: true, json: "null" };
              // `return ctx.retryAfter(...)` where `throw` was meant.
              if (among(retries, value)) return { ...describe(value), asked: true };
              let json: QuickJSHandle;
              try {
                json = call(stringify, value);
              } catch (error) {
                if (!(error instanceof Lifetime)) throw error;
                const reason = consume(error, describe);
                return {
                  ok: false,
                  message: `The handler's result cannot be stored as JSON: ${reason.message}`,
                };
              }
              return consume(json, (j): NonNullable<typeof settled> => {
                if (context.typeof(j) !== "string") return { ok: true, json: "null" };
                const length = lengthOf(j);
                if (length > MAX_OUTPUT_BYTES) {
                  return {
                    ok: false,
                    message: `The handler's output is at least ${length} bytes; at most ${MAX_OUTPUT_BYTES} are kept.`,
                  };
                }
                return { ok: true, json: context.getString(j) };
              });
            });
          }
        }
      }
    }
  } catch (error) {
    // QuickJS itself failed: V8's stack limit inside the engine, or an abort.
    healthy = false;
    settled ??= engineFailure(error);
  } finally {
    peak = e.memory.buffer.byteLength;
    if (e.refused || peak > e.initialBytes || fault !== undefined) healthy = false;
    if (healthy) {
      try {
        for (const h of owned) if (h.alive) h.dispose();
        context.dispose();
        runtime.dispose();
      } catch {
        healthy = false;
      }
    }
    // Left to the garbage collector with whatever it holds.
    if (!healthy) engine = undefined;
  }

  // Whatever the handler made of the error it was handed, QuickJS may have
  // been left mid-update: what it returned is not to be trusted.
  const result = fault === undefined ? settled : engineFailure(fault);
  if (e.refused && !result?.ok) {
    return failed(
      `The handler ran out of memory: its limit is ${formatBytes(limit)}.`,
      "MEMORY_EXCEEDED",
    );
  }
  if (!result) {
    return failed(
      "The handler's promise never settled: it waited for something that cannot happen in the sandbox (there are no timers, and host calls settle at once).",
    );
  }
  if (!result.ok) {
    // The message is the run's error_message either way; the stack is for a fault.
    if (result.stack && !result.asked) logger.error(`${result.message}\n${result.stack}`);
    if (!result.host) return failed(result.message);
    return finish({
      ok: false,
      output: null,
      error: {
        code: "HOST_FUNCTION_ERROR",
        message: clip(result.message),
        transient: result.host.transient,
      },
    });
  }
  const bytes = Buffer.byteLength(result.json);
  if (bytes > MAX_OUTPUT_BYTES) {
    return failed(`The handler's output is ${bytes} bytes; at most ${MAX_OUTPUT_BYTES} are kept.`);
  }
  try {
    return finish({ ok: true, output: JSON.parse(result.json) });
  } catch {
    return failed(`handler output is not JSON: ${result.json.slice(0, 200)}`);
  }
}

/** Export names a message lists at most. */
const SHOWN_EXPORTS = 20;

/**
 * The module's exports, by name, for a message, each read with `read` (a
 * cut copy); [] if they cannot be read.
 */
function exportNames(
  context: QuickJSContext,
  m: QuickJSHandle,
  read: (name: QuickJSHandle) => string,
): string[] {
  const names = context.getOwnPropertyNames(m, { strings: true, onlyEnumerable: true });
  if (names.error) {
    names.error.dispose();
    return [];
  }
  try {
    const shown = names.value.slice(0, SHOWN_EXPORTS).map(read);
    const more = names.value.length - shown.length;
    return more > 0 ? [...shown, `${more} more`] : shown;
  } finally {
    names.value.dispose();
  }
}

/** Why the entrypoint cannot be called, in the terms the user set it in. */
function noEntry(entry: string, exports: readonly string[]): string {
  const found = exports.length ? `it exports ${exports.join(", ")}` : "it exports nothing";
  return entry === DEFAULT_ENTRY
    ? `The handler exports no function to call: export default a function (event, ctx) => result, or export one named "${DEFAULT_ENTRY}" (${found}).`
    : `The handler does not export a function named "${entry}", the function's entrypoint; export it, or set entrypoint to one it exports (${found}).`;
}

/** How long a handler's top-level code may run when deploy evaluates it. */
const CHECK_DEADLINE_MS = 1000;

/** What would fail every run of a handler, and where in the user's file ("LINE:COLUMN"), when known. */
export interface DeployProblem {
  readonly message: string;
  readonly at?: string;
}

/**
 * Evaluates a compiled handler once, as a run would before calling it, and
 * says what would fail every run: its top-level code throws, loops, runs
 * out of memory or overflows the stack, awaits for ever, or `exportName`
 * (else the default export, else `handle`) is not a function. Undefined
 * when it would be called. A throw names the line of the user's file it
 * came from, through the module's source map. The handler is not called and no ctx exists, so
 * nothing reaches outside; a fresh instance, dropped afterwards, so nothing
 * is left behind. Bounded: `deadlineMs` of QuickJS's interrupt handler, and
 * linear memory capped as a run's is.
 *
 * @example
 * const problem = await checkJavaScript(await compileJavaScript(source, "h.ts"));
 */
export async function checkJavaScript(
  code: string,
  options: { memoryLimitBytes?: number; exportName?: string; deadlineMs?: number } = {},
): Promise<DeployProblem | undefined> {
  const e = await Engine.create();
  const { sourceMap } = splitSourceMap(code);
  e.capBytes = Math.max(options.memoryLimitBytes ?? Infinity, e.initialBytes);
  const deadlineMs = options.deadlineMs ?? CHECK_DEADLINE_MS;
  const runtime = e.quickjs.newRuntime();
  const deadline = performance.now() + deadlineMs;
  let late = false;
  runtime.setInterruptHandler(() => (late = performance.now() > deadline));
  const context = runtime.newContext();
  const top = "its top-level code";
  const failure = (error: QuickJSHandle): DeployProblem => {
    if (e.refused) return { message: `${top} ran out of memory (${formatBytes(e.capBytes)})` };
    /** A string no longer than a log line's, copied out; else undefined. */
    const short = (h: QuickJSHandle) => {
      if (context.typeof(h) !== "string") return undefined;
      const length = context.getNumber(context.getProp(h, "length"));
      return length > MAX_MESSAGE_CHARS ? undefined : context.getString(h);
    };
    // A getter may throw, or run out the deadline: then that part is not shown.
    const text = (key: string) => {
      try {
        return short(context.getProp(error, key));
      } catch {
        return undefined;
      }
    };
    // An interrupt's stack names the module's first line, not the loop.
    if (late) return { message: `${top} ran for more than ${deadlineMs} ms (a loop?)` };
    const kind = context.typeof(error);
    const stack = kind === "object" ? text("stack") : undefined;
    const at = stack && sourceMap && firstOriginalPosition(stack, sourceMap);
    const shown =
      kind === "object" || kind === "function"
        ? [text("name"), text("message")].filter(Boolean).join(": ")
        : kind === "string"
          ? short(error)
          : String(context.dump(error));
    return {
      message: `${top} threw ${shown || "a value that cannot be shown"}`,
      ...(at && { at }),
    };
  };
  try {
    const evaluated = context.evalCode(code, JS_MODULE_FILE, { type: "module" });
    if (evaluated.error) return failure(evaluated.error);
    let loaded = context.getPromiseState(evaluated.value);
    if (loaded.type === "pending") {
      const jobs = runtime.executePendingJobs(-1);
      if (jobs.error) return failure(jobs.error);
      loaded = context.getPromiseState(evaluated.value);
    }
    if (loaded.type === "rejected") return failure(loaded.error);
    if (loaded.type === "pending") {
      return {
        message: `${top} awaits something that never settles (there are no timers, and no ctx outside a call)`,
      };
    }
    const m = loaded.value;
    const pick = (name: string) => context.getProp(m, name);
    const name = options.exportName;
    const handler = name !== undefined ? pick(name) : pick("default");
    if (context.typeof(handler) === "function") return undefined;
    if (name === undefined && context.typeof(pick("handle")) === "function") return undefined;
    return {
      message:
        name !== undefined
          ? `its export ${name} is not a function (event, ctx) => result`
          : "it exports no function: `export default` a function (event, ctx) => result, or export one named `handle` (an object with a handle method is not one)",
    };
  } catch (error) {
    // QuickJS itself failed: V8's stack limit inside the engine, or a refused grow.
    if (e.refused) return { message: `${top} ran out of memory (${formatBytes(e.capBytes)})` };
    return { message: engineFailure(error).message.replace(/^The handler/, top) };
  }
  // Nothing is disposed: the instance, with everything in it, is left to the garbage collector.
}
