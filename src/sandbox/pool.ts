/**
 * The sandbox: a pool of sandbox threads that run handlers, each invocation on
 * an instance in its state after start-up (thread.ts, invocation.ts). An
 * invocation's deadline counts from the moment a thread starts it, so a
 * caller may queue many at once. A thread that runs past its deadline is killed
 * (Worker.terminate() stops even a `loop br 0 end`) and replaced; threads
 * are also replaced after a number of invocations, so nothing a handler
 * leaks can build up. One stuck handler holds one thread: the others keep
 * serving (the bulkhead).
 */
import { Worker } from "node:worker_threads";
import type { InvokeErrorCode, InvokeOutcome } from "./invocation.js";
import { LogRelay } from "./logRelay.js";
import type { HandlerLog } from "./logs.js";
import { threadModule, type HandlerModule } from "./module.js";
import {
  HOST_BUFFER_BYTES,
  HOST_HEADER_BYTES,
  type HostCallMessage,
  type HostReply,
  type InvokeMessage,
  type ResultMessage,
} from "./protocol.js";
import { mapLogs } from "./sourceMap.js";

/** A host function's main-thread half. Throw to fail the call; `transient` on the error says a retry may help. */
export type HostBinding = (payload: unknown) => Promise<unknown>;

/** Host functions by name; the handler imports them as `extism:host/user` `pgfn_<name>`. */
export type HostBindings = Readonly<Record<string, HostBinding>>;

/** One invocation for {@link SandboxPool.invoke}. */
export interface SandboxRequest {
  /** Compiled with guardMemory() applied, or a JavaScript handler (see ModuleCache). */
  readonly module: HandlerModule;
  readonly input: unknown;
  /** (Default: "handle") */
  readonly entry?: string;
  /** From the moment a thread starts the invocation; time queued for a thread does not count. */
  readonly timeoutMs: number;
  readonly memoryLimitBytes: number;
  /** The function's env, read by the handler with Extism's config_get. */
  readonly config?: Readonly<Record<string, string>>;
  /**
   * Host functions, or a function the pool calls with the invocation's
   * deadline (Date.now() by which it is killed) when a thread starts it, so
   * the host functions can hold to the same deadline. (Default: none)
   */
  readonly host?: HostBindings | ((deadline: number) => HostBindings);
}

/** Options of {@link SandboxPool}. */
export interface SandboxPoolOptions {
  /** Threads at most; each runs one invocation at a time. (Default: 4) */
  readonly size?: number;
  /** A thread is replaced after this many invocations. (Default: 1000) */
  readonly maxInvocationsPerThread?: number;
  /** Each thread's JavaScript heap limit, MB (Extism's bookkeeping, not wasm memory). (Default: 128) */
  readonly threadHeapMb?: number;
}

interface Slot {
  readonly thread: Worker;
  readonly header: Int32Array;
  readonly data: Uint8Array;
  invocations: number;
  job: Job | undefined;
  /** Loaded and listening: only then is it given a job, whose clock starts then. */
  ready: boolean;
  retired: boolean;
  /** Modules this thread already holds (recycling the thread forgets them). */
  readonly modules: Set<number>;
  /** The lines its run logged so far, for when no outcome comes (logRelay.ts). */
  readonly logs: LogRelay;
}

interface Job {
  readonly id: number;
  readonly request: SandboxRequest;
  /** When it was queued. */
  readonly queued: number;
  /** Set when a thread starts it: when, by when it must be done, and its host functions. */
  running?: { readonly started: number; readonly deadline: number; readonly host: HostBindings };
  resolve(outcome: InvokeOutcome): void;
  timer?: NodeJS.Timeout;
}

/**
 * The compiled sandbox thread (thread.js) next to this file. Under a
 * TypeScript loader (tests, scripts) there is no thread.js: a small bootstrap
 * registers tsx in the new thread, then loads thread.ts.
 */
function threadSource(): { source: string | URL; eval: boolean } {
  if (!import.meta.url.endsWith(".ts"))
    return { source: new URL("./thread.js", import.meta.url), eval: false };
  const ts = new URL("./thread.ts", import.meta.url).href;
  return {
    source: `import("tsx/esm/api").then(({ register }) => { register(); return import(${JSON.stringify(ts)}); })`,
    eval: true,
  };
}

/**
 * The sandbox threads and the invocations queued for them (see the top of
 * this file).
 *
 * @example
 * const pool = new SandboxPool({ size: 2 });
 * const outcome = await pool.invoke({ module, input, timeoutMs: 5000, memoryLimitBytes: 16 << 20 });
 * await pool.close();
 */
export class SandboxPool {
  private readonly size: number;
  private readonly maxInvocations: number;
  private readonly heapMb: number;
  private readonly slots = new Set<Slot>();
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closed = false;
  /** A JavaScript handler has run: new threads start the JS engine before they say ready. */
  private ranJavaScript = false;
  /** Threads started, killed at a deadline, crashed, and recycled (replaced after maxInvocationsPerThread or past the memory backstop), since the pool was made. */
  readonly counters = { started: 0, killed: 0, crashed: 0, recycled: 0 };

  constructor(options: SandboxPoolOptions = {}) {
    this.size = options.size ?? 4;
    this.maxInvocations = options.maxInvocationsPerThread ?? 1000;
    this.heapMb = options.threadHeapMb ?? 128;
  }

  /** Starts `n` threads now, so the first invocations do not pay for it. */
  async warm(n = this.size): Promise<void> {
    const started: Promise<void>[] = [];
    while (this.slots.size < Math.min(n, this.size)) {
      const slot = this.spawn();
      slot.thread.ref();
      started.push(
        new Promise<void>((resolve, reject) => {
          slot.thread.on("message", (msg: { type: string }) => {
            if (msg.type === "ready") resolve();
          });
          slot.thread.once("error", reject);
        }).finally(() => {
          // Referenced while it runs a job (schedule() may have given it one).
          if (!slot.job) slot.thread.unref();
        }),
      );
    }
    await Promise.all(started);
  }

  /**
   * Runs one invocation, once a thread is free. Never rejects for the
   * handler's faults: a handler past its deadline comes back as TIMEOUT, a
   * crashed thread as FUNCTION_ERROR (or MEMORY_EXCEEDED when the thread ran
   * out of heap), each with the lines the handler logged before. Still
   * queued when the pool closes, it comes back as FUNCTION_ERROR.
   */
  invoke(request: SandboxRequest): Promise<InvokeOutcome> {
    if (this.closed) return Promise.reject(new Error("the sandbox pool is closed"));
    return new Promise((resolve) => {
      this.queue.push({ id: this.nextId++, request, queued: Date.now(), resolve });
      this.schedule();
    });
  }

  /** Threads alive and invocations waiting for one. */
  get stats() {
    return {
      threads: this.slots.size,
      busy: [...this.slots].filter((s) => s.job).length,
      queued: this.queue.length,
    };
  }

  /** Stops every thread; invocations still running come back as errors. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0))
      this.finish(job, this.failure(job, "INTERNAL_SHUTDOWN"));
    for (const slot of this.slots) {
      // A retired thread's exit is not a crash: its job is answered here.
      if (slot.job)
        this.finish(
          slot.job,
          this.failure(
            slot.job,
            "FUNCTION_ERROR",
            "The sandbox shut down during the run.",
            slot.logs.take(),
          ),
        );
      slot.job = undefined;
    }
    await Promise.all([...this.slots].map((slot) => this.retire(slot)));
  }

  private spawn(): Slot {
    const { source, eval: isEval } = threadSource();
    const hostBuffer = new SharedArrayBuffer(HOST_HEADER_BYTES + HOST_BUFFER_BYTES);
    const logs = new LogRelay();
    const thread = new Worker(source, {
      eval: isEval,
      workerData: { hostBuffer, warmJavaScript: this.ranJavaScript, logs: logs.threadEnd },
      transferList: [logs.threadEnd.port],
      resourceLimits: { maxOldGenerationSizeMb: this.heapMb },
      // Handler output never reaches the daemon's own stdout/stderr.
      stdout: true,
      stderr: true,
    });
    const slot: Slot = {
      thread,
      header: new Int32Array(hostBuffer, 0, 2),
      data: new Uint8Array(hostBuffer, HOST_HEADER_BYTES),
      invocations: 0,
      modules: new Set(),
      logs,
      job: undefined,
      ready: false,
      retired: false,
    };
    // Read and dropped: unread, they would buffer without bound.
    thread.stdout.resume();
    thread.stderr.resume();
    this.counters.started++;
    thread.on("message", (msg: ResultMessage | HostCallMessage | { type: "ready" }) =>
      this.onMessage(slot, msg),
    );
    thread.on("error", (error) => this.onCrash(slot, error));
    thread.on("messageerror", (error) => this.onUnreadable(slot, error));
    thread.on("exit", (code) => {
      this.onCrash(slot, new Error(`the sandbox thread exited with code ${code}`));
      logs.close();
    });
    thread.unref();
    this.slots.add(slot);
    return slot;
  }

  private readonly moduleIds = new WeakMap<HandlerModule, number>();
  private nextModuleId = 1;

  private moduleId(module: HandlerModule): number {
    let id = this.moduleIds.get(module);
    if (id === undefined) this.moduleIds.set(module, (id = this.nextModuleId++));
    return id;
  }

  private schedule(): void {
    while (this.queue.length > 0) {
      const slot = [...this.slots].find((s) => s.ready && !s.job && !s.retired);
      if (!slot) {
        // A thread for each waiting job, up to the size; each takes the
        // queue's head when it is ready.
        const starting = [...this.slots].filter((s) => !s.ready).length;
        if (starting >= this.queue.length || this.slots.size >= this.size) return;
        // Referenced until ready: a job waits for it.
        this.spawn().thread.ref();
        continue;
      }
      const job = this.queue.shift()!;
      const { request } = job;
      // The clock starts now, when a thread takes the job: time queued
      // behind other invocations is not the handler's.
      const started = Date.now();
      const deadline = started + request.timeoutMs;
      let host: HostBindings;
      try {
        host = typeof request.host === "function" ? request.host(deadline) : (request.host ?? {});
      } catch (error) {
        this.finish(
          job,
          failedOutcome(
            "HOST_FUNCTION_ERROR",
            `The host functions could not be prepared: ${hostError(error).message}`,
            0,
            false,
          ),
        );
        continue;
      }
      job.running = { started, deadline, host };
      job.timer = setTimeout(() => this.expire(job), request.timeoutMs);
      slot.job = job;
      slot.invocations++;
      slot.thread.ref();
      if (!(request.module instanceof WebAssembly.Module)) this.ranJavaScript = true;
      const moduleId = this.moduleId(request.module);
      const known = slot.modules.has(moduleId);
      slot.modules.add(moduleId);
      const message: InvokeMessage = {
        type: "invoke",
        id: job.id,
        moduleId,
        ...(!known && { module: threadModule(request.module) }),
        input: request.input,
        entry: request.entry ?? "handle",
        memoryLimitBytes: request.memoryLimitBytes,
        config: request.config ?? {},
        hostFunctions: Object.keys(host),
        deadline,
      };
      try {
        slot.thread.postMessage(message);
      } catch (error) {
        // The copy to the thread was refused: an event nested thousands of
        // levels deep (jsonb allows 10,000) overflows the structured clone's
        // stack. The thread never got the job. Thrown on, this would end the
        // daemon, from inside a thread's message listener.
        slot.job = undefined;
        slot.invocations--;
        if (!known) slot.modules.delete(moduleId);
        slot.thread.unref();
        this.finish(
          job,
          failedOutcome(
            "INVALID_REQUEST",
            `The event could not be passed to the sandbox (${(error as Error).message}): is its JSON nested thousands of levels deep?`,
            0,
            false,
          ),
        );
      }
    }
  }

  private onMessage(slot: Slot, msg: ResultMessage | HostCallMessage | { type: "ready" }): void {
    if (msg.type === "ready") {
      slot.ready = true;
      this.schedule();
      if (!slot.job) slot.thread.unref();
      return;
    }
    const job = slot.job;
    if (!job || msg.id !== job.id) return; // a late answer for a job already given up on
    if (msg.type === "host") {
      // serveHostCall does not reject; the catch is the last line of defence.
      this.serveHostCall(slot, job, msg).catch(() => undefined);
      return;
    }
    slot.job = undefined;
    slot.thread.unref();
    // The outcome carries the lines the relay holds.
    slot.logs.clear();
    this.finish(job, msg.outcome);
    if (msg.recycle || slot.invocations >= this.maxInvocations) {
      this.counters.recycled++;
      void this.retire(slot);
      this.replace();
    }
    this.schedule();
  }

  /**
   * Answers a host call. Never rejects: whatever fails (the binding, turning
   * its value into JSON, a reply too big for the buffer) becomes the call's
   * error, because an unhandled rejection here would take down the daemon
   * with every run in flight.
   */
  private async serveHostCall(slot: Slot, job: Job, call: HostCallMessage): Promise<void> {
    let reply: HostReply;
    try {
      const bindings = job.running?.host;
      const binding =
        bindings && Object.hasOwn(bindings, call.name) ? bindings[call.name] : undefined;
      if (!binding)
        throw Object.assign(new Error(`no host function ${call.name}`), { transient: false });
      reply = { ok: true, value: await binding(call.payload) };
    } catch (error) {
      reply = { ok: false, error: hostError(error) };
    }
    if (slot.job !== job) return; // killed meanwhile
    const bytes = encodeHostReply(call.name, reply, slot.data.byteLength);
    slot.data.set(bytes);
    Atomics.store(slot.header, 1, bytes.byteLength);
    Atomics.store(slot.header, 0, 1);
    Atomics.notify(slot.header, 0);
  }

  /** The deadline passed: kill the thread running the job. */
  private expire(job: Job): void {
    const slot = [...this.slots].find((s) => s.job === job);
    // Taken before the kill: the lines logged up to the deadline.
    const logs = slot?.logs.take() ?? [];
    if (slot) {
      this.counters.killed++;
      slot.job = undefined;
      void this.retire(slot);
      this.replace();
    }
    this.finish(job, this.failure(job, "TIMEOUT", undefined, logs));
    this.schedule();
  }

  /**
   * A message of the thread's that cannot be read here: a result or a host
   * call's argument nested thousands of levels deep (the thread's copy
   * succeeded, this side's overflowed). The run cannot go on, and would
   * otherwise wait for its deadline; the thread is replaced, its state being
   * unknown.
   */
  private onUnreadable(slot: Slot, error: Error): void {
    const job = slot.job;
    if (!job || slot.retired) return;
    const logs = slot.logs.take();
    slot.job = undefined;
    void this.retire(slot);
    this.replace();
    this.finish(
      job,
      this.failure(
        job,
        "FUNCTION_ERROR",
        `The handler's result or host call could not be passed back from the sandbox (${error.message}): is it nested thousands of levels deep?`,
        logs,
      ),
    );
    this.schedule();
  }

  private onCrash(slot: Slot, error: Error): void {
    if (!this.slots.has(slot)) return;
    this.slots.delete(slot);
    const job = slot.job;
    slot.job = undefined;
    if (slot.retired) return;
    this.counters.crashed++;
    // A thread that could not even start fails the job it would have taken,
    // so a broken thread fails jobs one by one rather than respawning for ever.
    const next = slot.ready ? undefined : this.queue.shift();
    if (next) {
      this.finish(
        next,
        this.failure(next, "FUNCTION_ERROR", `The sandbox thread crashed: ${error.message}`),
      );
    }
    // A thread that had started is replaced; one that could not start is
    // not: that would respawn for ever.
    if (slot.ready) this.replace();
    if (job) {
      const oom = (error as { code?: string }).code === "ERR_WORKER_OUT_OF_MEMORY";
      // Everything the thread posted before it died is in the relay.
      const logs = slot.logs.take();
      this.finish(
        job,
        oom
          ? this.failure(
              job,
              "MEMORY_EXCEEDED",
              `The sandbox thread ran out of heap (${error.message}); the instance was stopped.`,
              logs,
            )
          : this.failure(
              job,
              "FUNCTION_ERROR",
              `The sandbox thread crashed: ${error.message}`,
              logs,
            ),
      );
    }
    this.schedule();
  }

  /**
   * Starts a thread in place of one killed, recycled or crashed, before any
   * invocation asks for it: a thread takes hundreds of ms to start (and the
   * JS engine its first compile), which the next invocation would otherwise
   * wait for, on top of its own time. Only ever replaces, so a pool never
   * grows past the threads it was warmed or asked for.
   */
  private replace(): void {
    if (!this.closed && this.slots.size < this.size) this.spawn();
  }

  private async retire(slot: Slot): Promise<void> {
    slot.retired = true;
    this.slots.delete(slot);
    await slot.thread.terminate();
  }

  private finish(job: Job, outcome: InvokeOutcome): void {
    clearTimeout(job.timer);
    // Every way a job ends: a stopped run's relayed lines may hold positions too.
    job.resolve(mapLogs(job.request.module, outcome));
  }

  private failure(
    job: Job,
    code: "TIMEOUT" | "MEMORY_EXCEEDED" | "FUNCTION_ERROR" | "INTERNAL_SHUTDOWN",
    message?: string,
    /** What the handler logged before it was stopped. */
    logs: readonly HandlerLog[] = [],
  ): InvokeOutcome {
    const durationMs = job.running ? Date.now() - job.running.started : 0;
    if (code === "TIMEOUT") {
      return failedOutcome(
        "TIMEOUT",
        `The handler ran past its ${job.request.timeoutMs} ms limit and was stopped.`,
        durationMs,
        undefined,
        logs,
      );
    }
    if (code === "INTERNAL_SHUTDOWN") {
      return failedOutcome(
        "FUNCTION_ERROR",
        "The sandbox shut down before the handler ran.",
        durationMs,
      );
    }
    return failedOutcome(code, message ?? code, durationMs, undefined, logs);
  }
}

/** An outcome for a handler the pool stopped or never ran: no output, the lines it logged before. */
function failedOutcome(
  code: InvokeErrorCode,
  message: string,
  durationMs: number,
  transient?: boolean,
  logs: readonly HandlerLog[] = [],
): InvokeOutcome {
  return {
    ok: false,
    output: null,
    error: { code, message, ...(transient !== undefined && { transient }) },
    durationMs,
    logs,
  };
}

/** A thrown value as a host call's error, without trusting it (its getters or toString may throw). */
function hostError(error: unknown): { message: string; transient: boolean; code?: string } {
  try {
    const e = error as { message?: unknown; transient?: unknown; sqlState?: unknown };
    return {
      message: typeof e.message === "string" ? e.message : String(error),
      transient: e.transient === true,
      ...(typeof e.sqlState === "string" && { code: e.sqlState }),
    };
  } catch {
    return { message: "the host function failed", transient: false };
  }
}

/**
 * The reply as UTF-8 JSON that fits in `capacity` bytes; a value that cannot
 * be serialised (too big for a string, a BigInt, a cycle) or does not fit
 * becomes an error reply instead.
 */
function encodeHostReply(name: string, reply: HostReply, capacity: number): Uint8Array {
  const encode = (r: HostReply) => new TextEncoder().encode(JSON.stringify(r));
  let failure: string;
  try {
    const bytes = encode(reply);
    if (bytes.byteLength <= capacity) return bytes;
    failure = `${name}'s result is ${bytes.byteLength} bytes; at most ${capacity} fit`;
  } catch (error) {
    failure = `${name}'s result could not be sent to the handler (${hostError(error).message})`;
  }
  return encode({ ok: false, error: { message: failure, transient: false } });
}
