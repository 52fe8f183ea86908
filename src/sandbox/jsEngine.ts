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
} from "quickjs-emscripten-core";
import { formatBytes } from "./hostMemory.js";
import { redactAndClip, secretValues } from "./host/redact.js";
import type { InvokeErrorCode, InvokeOutcome } from "./invocation.js";
import { MAX_OUTPUT_BYTES } from "./invocation.js";
import { HANDLER_GLOBAL } from "./jsCompile.js";
import { captureLogger, MAX_MESSAGE_CHARS, type HandlerLog } from "./logs.js";
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
 * Runs after the handler's script, in the same evaluation: builds `ctx`,
 * takes the host functions pgfn put on the global object off it (the
 * handler reaches them only through `ctx`), and calls the handler.
 */
const GLUE = `
;(() => {
  const g = globalThis;
  const host = g.__pgfn_host, log = g.__pgfn_log, done = g.__pgfn_done, fail = g.__pgfn_fail,
    retry = g.__pgfn_retry, input = g.__pgfn_input, envJson = g.__pgfn_env;
  for (const k of ["__pgfn_host", "__pgfn_log", "__pgfn_done", "__pgfn_fail", "__pgfn_retry", "__pgfn_input", "__pgfn_env"]) delete g[k];
  const failWith = (error) => {
    let message, stack;
    try {
      if (error instanceof Error) {
        message = error.name === "Error" ? String(error.message) : error.name + ": " + error.message;
        stack = typeof error.stack === "string" ? error.stack : undefined;
      } else message = "the handler threw " + (typeof error === "string" ? error : JSON.stringify(error) ?? String(error));
    } catch (e) { message = "the handler threw a value that cannot be shown"; }
    fail(JSON.stringify({ message, stack }));
  };
  const settle = (f) => new Promise((resolve) => resolve(f()));
  const call = (name, payload) => {
    const reply = JSON.parse(host(name, JSON.stringify(payload)));
    if (reply.ok) return reply.value;
    throw new Error(reply.error.message);
  };
  const fieldsText = (fields) => {
    if (fields === undefined) return "";
    try { return " " + JSON.stringify(fields); } catch (e) { return " " + String(fields); }
  };
  const level = (name) => (message, fields) => log(name, String(message) + fieldsText(fields));
  const response = (r) => Object.freeze({
    status: r.status,
    ok: r.status >= 200 && r.status < 300,
    headers: Object.freeze(r.headers),
    text: () => Promise.resolve(r.body),
    json: () => settle(() => JSON.parse(r.body)),
  });
  const ctx = Object.freeze({
    env: Object.freeze(JSON.parse(envJson)),
    log: Object.freeze({ debug: level("debug"), info: level("info"), warn: level("warn"), error: level("error") }),
    db: Object.freeze({
      query: (sql, params) => settle(() => call("db_query", { sql, params: params === undefined ? [] : params })),
    }),
    fetch: (url, init) => settle(() => response(call("http_fetch", {
      url: String(url),
      method: init && init.method,
      headers: init && init.headers,
      body: init && init.body !== undefined ? String(init.body) : undefined,
    }))),
    retryAfter: (ms, message) => {
      retry("after", String(Number(ms)));
      return new Error(message === undefined ? "the handler asked to be retried after " + ms + " ms" : String(message));
    },
    noRetry: (message) => {
      retry("never", "0");
      return new Error(message === undefined ? "the handler asked not to be retried" : String(message));
    },
  });
  const m = typeof ${HANDLER_GLOBAL} === "undefined" ? undefined : ${HANDLER_GLOBAL};
  const handler = m && (typeof m.default === "function" ? m.default : m.handle);
  if (typeof handler !== "function") {
    fail(JSON.stringify({ message: "The handler's file exports no function: export default a function (event, ctx) => result, or export one named handle." }));
    return;
  }
  settle(() => handler(JSON.parse(input), ctx)).then((value) => {
    let json;
    try { json = JSON.stringify(value === undefined ? null : value); }
    catch (e) { failWith(new Error("The handler's result cannot be stored as JSON: " + (e && e.message))); return; }
    done(json === undefined ? "null" : json);
  }, failWith);
})();
`;

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
  const logger = captureLogger(logs, clip);
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

  let settled:
    { ok: true; json: string } | { ok: false; message: string; stack?: string } | undefined;
  // Whether the engine may serve the next call: false after anything QuickJS may not have cleaned up after.
  let healthy = true;
  const runtime = e.quickjs.newRuntime();
  const context = runtime.newContext();
  try {
    // The handler's top-level code runs before the glue takes these off the
    // global object and may call them with anything: each takes strings
    // only, and whatever it cannot use ends in an error reply or is ignored.
    const define = (name: string, fn: (...args: string[]) => string | void) => {
      const handle = context.newFunction(name, (...args: QuickJSHandle[]) => {
        let result: string | void;
        try {
          result = fn(
            ...args.map((a) => (context.typeof(a) === "string" ? context.getString(a) : "")),
          );
        } catch {
          return undefined;
        }
        return result === undefined ? undefined : context.newString(result);
      });
      context.setProp(context.global, name, handle);
      handle.dispose();
    };
    const setString = (name: string, value: string) => {
      const handle = context.newString(value);
      context.setProp(context.global, name, handle);
      handle.dispose();
    };
    setString("__pgfn_input", json);
    setString("__pgfn_env", JSON.stringify(config));
    define("__pgfn_host", (name, payload) => {
      const bytes = Buffer.byteLength(payload!);
      if (bytes > MAX_HOST_ARGUMENT_BYTES) {
        return JSON.stringify({
          ok: false,
          error: {
            message: `${name}: the argument is ${bytes} bytes; at most ${MAX_HOST_ARGUMENT_BYTES} are accepted`,
            transient: false,
          },
        } satisfies HostReply);
      }
      let argument: unknown;
      try {
        argument = JSON.parse(payload!);
      } catch {
        return JSON.stringify({
          ok: false,
          error: { message: `${name}: the argument is not JSON`, transient: false },
        } satisfies HostReply);
      }
      const reply: HostReply = options.callHost
        ? options.callHost(name!, argument)
        : { ok: false, error: { message: `${name} is not available here`, transient: false } };
      return JSON.stringify(reply);
    });
    define("__pgfn_log", (level, message) => {
      if (level === "debug" || level === "info" || level === "warn" || level === "error")
        logger[level](message!);
    });
    define("__pgfn_done", (result) => {
      settled ??= { ok: true, json: result! };
    });
    define("__pgfn_fail", (failure) => {
      const f = JSON.parse(failure!) as { message?: unknown; stack?: unknown };
      settled ??= {
        ok: false,
        message: String(f.message),
        ...(typeof f.stack === "string" && { stack: f.stack }),
      };
    });
    define("__pgfn_retry", (kind, ms) => {
      options.onRetry?.(
        kind === "never"
          ? { never: true }
          : { afterMs: Math.max(0, Math.min(Number(ms) || 0, MAX_RETRY_AFTER_MS)) },
      );
    });

    const evaluated = context.evalCode(code + GLUE, "handler.js");
    if (evaluated.error) {
      settled ??= thrown(context, evaluated.error);
      evaluated.error.dispose();
    } else {
      evaluated.value.dispose();
      // Every job the handler's promises queue; host calls settle at once,
      // so when the queue is empty the handler is done or waits for ever.
      const jobs = runtime.executePendingJobs(-1);
      if (jobs.error) {
        settled ??= thrown(context, jobs.error);
        jobs.error.dispose();
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

/** An exception that escaped the glue: the handler's script threw while loading. */
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
