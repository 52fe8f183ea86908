/**
 * A sandbox thread: runs one invocation at a time, on an Extism instance kept
 * per module and given back to its state after start-up between invocations
 * (invocation.ts, instances.ts).
 * Host functions block this thread (Atomics.wait) while the main thread does
 * the real work (a query, a fetch), so handlers stay synchronous and the
 * thread can still be killed at any moment by the pool's timeout.
 */
import { parentPort, workerData } from "node:worker_threads";
// Loaded with the thread, not at its first WebAssembly call (instances.ts
// imports it lazily, for the package's other users): a call's deadline
// should not pay for it.
import "@extism/extism";
import { threadExternalMemory, type HostContext } from "./hostMemory.js";
import { InstanceCache } from "./instances.js";
import { invokeHandler, type HostFunction } from "./invocation.js";
import { invokeJavaScript, warmJavaScript } from "./jsEngine.js";
import { relaySink, type ThreadLogEnd } from "./logRelay.js";
import type { HandlerModule } from "./module.js";
import {
  HOST_HEADER_BYTES,
  MAX_HOST_ARGUMENT_BYTES,
  type HostReply,
  type InvokeMessage,
  type ResultMessage,
} from "./protocol.js";

const port = parentPort!;
const { hostBuffer: shared, warmJavaScript: warm } = workerData as {
  hostBuffer: SharedArrayBuffer;
  warmJavaScript: boolean;
};
// Each log line reaches the pool as it is written: a run killed at its
// deadline, or whose thread dies, keeps them (logRelay.ts).
const logSink = relaySink((workerData as { logs: ThreadLogEnd }).logs);
const header = new Int32Array(shared, 0, 2);
const data = new Uint8Array(shared, HOST_HEADER_BYTES);

let current: InvokeMessage | undefined;
/** The first failed host call of the invocation: a failure after it is the host's fault. */
let hostFailure: { message: string; transient: boolean } | undefined;

function callHost(name: string, payload: unknown): HostReply {
  const msg = current!;
  Atomics.store(header, 0, 0);
  port.postMessage({ type: "host", id: msg.id, name, payload });
  // No timeout of our own: the pool kills this thread at the deadline.
  Atomics.wait(header, 0, 0);
  const reply = JSON.parse(
    new TextDecoder().decode(data.slice(0, Atomics.load(header, 1))),
  ) as HostReply;
  if (!reply.ok)
    hostFailure ??= {
      // Our host functions' messages already say which call failed.
      message: reply.error.message.startsWith(name)
        ? reply.error.message
        : `${name} failed: ${reply.error.message}`,
      transient: reply.error.transient,
    };
  return reply;
}

/** A host function taking and returning JSON in Extism memory. */
function jsonHostFunction(name: string): HostFunction {
  const refuse = (context: HostContext, message: string) => {
    const reply: HostReply = { ok: false, error: { message, transient: false } };
    hostFailure ??= reply.error;
    return context.store(JSON.stringify(reply));
  };
  return (context: HostContext, offset: bigint) => {
    // Checked before it is decoded, parsed and copied to the main thread:
    // the daemon's own heap must not hold whatever a handler passes.
    const length = Number(context.length(offset));
    if (length > MAX_HOST_ARGUMENT_BYTES) {
      return refuse(
        context,
        `${name}: the argument is ${length} bytes; at most ${MAX_HOST_ARGUMENT_BYTES} are accepted`,
      );
    }
    let payload: unknown;
    try {
      payload = JSON.parse(context.read(offset)?.text() ?? "null");
    } catch (error) {
      return refuse(context, `${name}: the argument is not JSON (${(error as Error).message})`);
    }
    return context.store(JSON.stringify(callHost(name, payload)));
  };
}

/** What the handler said about retrying, during the current invocation. */
let retry: { afterMs?: number; never?: boolean } | undefined;

/**
 * pgfn_retry_after(ms: i64): "I failed, but try again, not before ms".
 * pgfn_no_retry(): "I failed, and trying again cannot help". Both only
 * matter if the handler then fails; answered here, without the main thread.
 */
const retryFunctions: Record<string, HostFunction> = {
  pgfn_retry_after: (_context: HostContext, ms: bigint) => {
    retry = { afterMs: Math.max(0, Math.min(Number(ms), 86_400_000)) };
  },
  pgfn_no_retry: () => {
    retry = { never: true };
  },
};

// The modules this thread was sent, by the pool's id. Bounded by the
// thread's life: the pool recycles it after PGFN_SANDBOX_RECYCLE_AFTER runs.
const modules = new Map<number, HandlerModule>();
const instances = new InstanceCache();

port.on("message", async (msg: InvokeMessage) => {
  current = msg;
  if (msg.module) modules.set(msg.moduleId, msg.module);
  const module = modules.get(msg.moduleId)!;
  hostFailure = undefined;
  retry = undefined;
  let recycle = false;
  const userFunctions = {
    ...retryFunctions,
    ...Object.fromEntries(
      msg.hostFunctions.map((name) => [`pgfn_${name}`, jsonHostFunction(name)]),
    ),
  };
  let outcome =
    module instanceof WebAssembly.Module
      ? await invokeHandler(module, msg.input, {
          entry: msg.entry,
          memoryLimitBytes: msg.memoryLimitBytes,
          config: msg.config,
          userFunctions,
          threadMemory: threadExternalMemory,
          onThreadMemoryExceeded: () => (recycle = true),
          instances,
          logSink,
        })
      : await invokeJavaScript(module.code, msg.input, {
          entry: msg.entry,
          memoryLimitBytes: msg.memoryLimitBytes,
          config: msg.config,
          callHost,
          onRetry: (said) => (retry = said),
          logSink,
        });
  // Set by host calls during the invocation; TypeScript cannot see that.
  // A WebAssembly handler that fails after a failed host call failed because
  // of it. A JavaScript handler may catch the rejection and fail for its own
  // reasons: the engine itself says when the host's error is what it threw.
  const failure = hostFailure as { message: string; transient: boolean } | undefined;
  if (
    module instanceof WebAssembly.Module &&
    !outcome.ok &&
    outcome.error?.code === "FUNCTION_ERROR" &&
    failure
  ) {
    outcome = {
      ...outcome,
      error: {
        code: "HOST_FUNCTION_ERROR",
        // The handler may fail with the failed call's own message.
        message:
          outcome.error.message === failure.message
            ? failure.message
            : `${failure.message}; then the handler failed: ${outcome.error.message}`,
        transient: failure.transient,
      },
    };
  }
  const said = retry as { afterMs?: number; never?: boolean } | undefined;
  if (!outcome.ok && said) outcome = { ...outcome, retry: said };
  current = undefined;
  // Past the backstop, whatever grew may still be held: the pool replaces this thread.
  port.postMessage({ type: "result", id: msg.id, outcome, recycle } satisfies ResultMessage);
});

// Loaded and listening: warm() waits for this, not for 'online', which comes
// before this module and Extism are imported. Where JavaScript handlers run,
// the engine is started first: its compile would add ~100 ms to a call.
if (warm) await warmJavaScript();
port.postMessage({ type: "ready" });
