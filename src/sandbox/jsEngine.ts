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
import { redactAndClip, secretValues } from "./host/redact.js";
import type { InvokeErrorCode, InvokeOutcome } from "./invocation.js";
import { inputJson, MAX_OUTPUT_BYTES } from "./invocation.js";
import { captureLogger, MAX_MESSAGE_CHARS, type HandlerLog, type LogSink } from "./logs.js";
import { MAX_HOST_ARGUMENT_BYTES, type HostReply } from "./protocol.js";

/** Options of {@link invokeJavaScript}. */
export interface JsInvokeOptions {
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
 * Describes what the handler threw, as `{ message, stack }` JSON: evaluated
 * only when a call fails, so that a call that succeeds parses no glue.
 */
const DESCRIBE = `(error) => {
  let message, stack;
  try {
    if (error instanceof Error) {
      message = error.name === "Error" ? String(error.message) : error.name + ": " + error.message;
      stack = typeof error.stack === "string" ? error.stack : undefined;
    } else message = "the handler threw " + (typeof error === "string" ? error : JSON.stringify(error) ?? String(error));
  } catch (e) { message = "the handler threw a value that cannot be shown"; }
  return JSON.stringify({ message, stack });
}`;

/** A failed run, as the handler's code or the engine left it. */
type Failure = { ok: false; message: string; stack?: string };

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
  const runtime = e.quickjs.newRuntime();
  const context = runtime.newContext();
  // Handles to dispose before the context is: each of the context's own
  // values, taken before the handler's code runs, so that `ctx` works
  // whatever that code does to the global object.
  const owned: QuickJSHandle[] = [];
  try {
    const keep = (h: QuickJSHandle) => (owned.push(h), h);
    const get = (object: QuickJSHandle, key: string) => keep(context.getProp(object, key));
    const JSON_ = get(context.global, "JSON");
    const parse = get(JSON_, "parse");
    const stringify = get(JSON_, "stringify");
    const freeze = get(get(context.global, "Object"), "freeze");
    const Promise_ = get(context.global, "Promise");
    const resolve = get(Promise_, "resolve");
    const reject = get(Promise_, "reject");
    const String_ = get(context.global, "String");

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
    const fromJson = (text: string | undefined) =>
      text === undefined
        ? context.undefined
        : context.newString(text).consume((s) => call(parse, s));
    /** JSON.stringify in the context: undefined where it gives undefined. */
    const toJson = (h: QuickJSHandle) =>
      call(stringify, h).consume((r) =>
        context.typeof(r) === "string" ? context.getString(r) : undefined,
      );
    const toHost = (h: QuickJSHandle): unknown => {
      const text = context.typeof(h) === "undefined" ? undefined : toJson(h);
      return text === undefined ? undefined : JSON.parse(text);
    };
    const str = (h: QuickJSHandle) =>
      context.typeof(h) === "string"
        ? context.getString(h)
        : call(String_, h).consume((s) => context.getString(s));
    const frozen = (h: QuickJSHandle) => (call(freeze, h).dispose(), h);
    const object = (props: Record<string, QuickJSHandle>) => {
      const o = context.newObject();
      for (const [key, value] of Object.entries(props)) {
        context.setProp(o, key, value);
        value.dispose();
      }
      return frozen(o);
    };
    const fn = (name: string, body: (...args: QuickJSHandle[]) => QuickJSHandle | undefined) =>
      context.newFunction(name, (...args) => {
        try {
          return body(...args);
        } catch (error) {
          if (error instanceof Lifetime) throw error;
          throw context.newError(`pgfn: ${(error as Error).message ?? String(error)}`);
        }
      });
    /** `new Promise((resolve) => resolve(f()))`: what `f` throws is the rejection. */
    const settle = (f: () => QuickJSHandle) => {
      let value: QuickJSHandle;
      try {
        value = f();
      } catch (error) {
        const reason =
          error instanceof Lifetime
            ? (error as QuickJSHandle)
            : context.newError(`pgfn: ${(error as Error).message ?? String(error)}`);
        return reason.consume((r) => callOn(Promise_, reject, r));
      }
      return value.consume((v) => callOn(Promise_, resolve, v));
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
      if (!reply.ok) throw context.newError(reply.error.message);
      return reply.value;
    };
    const level = (name: "debug" | "info" | "warn" | "error") =>
      fn(name, (message, fields) => {
        let suffix = "";
        if (fields !== undefined && context.typeof(fields) !== "undefined") {
          try {
            suffix = ` ${toJson(fields)}`;
          } catch (error) {
            if (error instanceof Lifetime) error.dispose();
            suffix = ` ${str(fields)}`;
          }
        }
        logger[name](str(message ?? context.undefined) + suffix);
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
            (r.body === undefined ? context.undefined : context.newString(r.body)).consume((b) =>
              call(parse, b),
            ),
          ),
        ),
      });
    const retryError = (message: QuickJSHandle | undefined, otherwise: () => string) =>
      context.newError(
        message === undefined || context.typeof(message) === "undefined"
          ? otherwise()
          : str(message),
      );
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
                    sql: toHost(sql ?? context.undefined),
                    params:
                      params === undefined || context.typeof(params) === "undefined"
                        ? []
                        : toHost(params),
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
                ? context.getProp(init, key)
                : context.undefined;
            const body = field("body").consume((b) =>
              context.typeof(b) === "undefined" ? undefined : str(b),
            );
            return response(
              host("http_fetch", {
                url: str(url ?? context.undefined),
                method: field("method").consume(toHost),
                headers: field("headers").consume(toHost),
                body,
              }) as { status: number; headers?: unknown; body?: string },
            );
          }),
        ),
        retryAfter: fn("retryAfter", (ms, message) => {
          const after = ms === undefined ? NaN : context.getNumber(ms);
          options.onRetry?.({ afterMs: Math.max(0, Math.min(after || 0, MAX_RETRY_AFTER_MS)) });
          return retryError(
            message,
            () => `the handler asked to be retried after ${str(ms ?? context.undefined)} ms`,
          );
        }),
        noRetry: fn("noRetry", (message) => {
          options.onRetry?.({ never: true });
          return retryError(message, () => "the handler asked not to be retried");
        }),
      }),
    );
    const input = keep(fromJson(json));

    const failWith = (error: QuickJSHandle): Failure => {
      const described = context.evalCode(DESCRIBE, "pgfn.js");
      if (described.error) return described.error.consume((d) => thrown(context, d));
      const f = JSON.parse(
        described.value.consume((d) => call(d, error).consume((s) => context.getString(s))),
      ) as { message?: unknown; stack?: unknown };
      return {
        ok: false,
        message: String(f.message),
        ...(typeof f.stack === "string" && { stack: f.stack }),
      };
    };

    // The module's evaluation: its namespace, or a promise for it when the
    // module awaits at top level (settled, if ever, by the pending jobs).
    const evaluated = context.evalCode(code, "handler.js", { type: "module" });
    let m: QuickJSHandle | undefined;
    if (evaluated.error) {
      settled = thrown(context, evaluated.error);
      evaluated.error.dispose();
    } else {
      let loaded = context.getPromiseState(keep(evaluated.value));
      if (loaded.type === "pending") {
        runtime.executePendingJobs(-1).dispose();
        loaded = context.getPromiseState(evaluated.value);
      }
      if (loaded.type === "rejected") settled = loaded.error.consume(failWith);
      else if (loaded.type === "fulfilled")
        m = loaded.notAPromise ? loaded.value : keep(loaded.value);
    }
    if (m) {
      const kind = context.typeof(m);
      let handler: QuickJSHandle | undefined;
      if (kind === "object" || kind === "function") {
        const d = get(m, "default");
        handler = context.typeof(d) === "function" ? d : get(m, "handle");
      }
      if (!handler || context.typeof(handler) !== "function") {
        settled = {
          ok: false,
          message:
            "The handler's file exports no function: export default a function (event, ctx) => result, or export one named handle.",
        };
      } else {
        const result = context.callFunction(handler, context.undefined, input, ctx);
        const promise = keep(
          result.error
            ? result.error.consume((r) => callOn(Promise_, reject, r))
            : result.value.consume((v) => callOn(Promise_, resolve, v)),
        );
        // Every job the handler's promises queue; host calls settle at once,
        // so when the queue is empty the handler is done or waits for ever.
        const jobs = runtime.executePendingJobs(-1);
        if (jobs.error) {
          settled = thrown(context, jobs.error);
          jobs.error.dispose();
        } else {
          const state = context.getPromiseState(promise);
          if (state.type === "rejected") settled = state.error.consume(failWith);
          else if (state.type === "fulfilled") {
            settled = state.value.consume((value): NonNullable<typeof settled> => {
              if (context.typeof(value) === "undefined") return { ok: true, json: "null" };
              try {
                return { ok: true, json: toJson(value) ?? "null" };
              } catch (error) {
                if (!(error instanceof Lifetime)) throw error;
                const reason = (error as QuickJSHandle).consume(
                  (h) => context.dump(h) as { message?: unknown } | null,
                );
                return {
                  ok: false,
                  message: `The handler's result cannot be stored as JSON: ${reason && typeof reason === "object" ? String(reason.message) : String(reason)}`,
                };
              }
            });
          }
        }
      }
    }
  } catch (error) {
    // QuickJS itself failed: V8's stack limit inside the engine, or an abort.
    healthy = false;
    const message = (error as Error).message ?? String(error);
    settled ??= {
      ok: false,
      message: /call stack/i.test(message)
        ? "The handler overflowed the stack (unbounded recursion?)."
        : `The JavaScript engine failed: ${message}`,
    };
  } finally {
    peak = e.memory.buffer.byteLength;
    if (e.refused || peak > e.initialBytes) healthy = false;
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

  const result = settled;
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
    if (result.stack) logger.error(`${result.message}\n${result.stack}`);
    return failed(result.message);
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

/** What the handler's script threw while loading, or QuickJS while running its jobs. */
function thrown(context: QuickJSContext, handle: QuickJSHandle) {
  const value = context.dump(handle) as { name?: string; message?: string; stack?: string } | null;
  if (value && typeof value === "object" && typeof value.message === "string") {
    return {
      ok: false as const,
      message:
        value.name && value.name !== "Error" ? `${value.name}: ${value.message}` : value.message,
      ...(typeof value.stack === "string" && { stack: value.stack }),
    };
  }
  return {
    ok: false as const,
    message: `the handler threw ${JSON.stringify(value) ?? "undefined"}`,
  };
}
