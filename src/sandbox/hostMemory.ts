/**
 * Host memory a handler makes the sandbox allocate, counted against its
 * `memory_limit_mb` together with its linear memory, and refused before it
 * is allocated.
 *
 * Why: Extism keeps "blocks" (ArrayBuffers on the host) for what a handler
 * passes through its kernel functions. @extism/extism 2.0.0-rc13's `alloc`
 * allocates and pushes the block before it compares the total with
 * `maxPages`, returns 0 but leaves the block addressable, and the fast path
 * that stores strings and exact-sized buffers (config_get, var_get, host
 * function replies) is never checked at all. A 200-byte module asking for
 * 64 MB blocks in a loop grew the daemon by a gigabyte at a 16 MB limit.
 *
 * So pgfn answers every `extism:host/env` import that creates a block or a
 * var itself (alloc, config_get, var_get, var_set; Extism lets a host
 * function of that namespace replace its own), and pgfn's own host functions
 * store their replies through {@link HostMemory.store}. Each reserves the
 * bytes first; past the limit the import throws, the handler traps, and the
 * run is MEMORY_EXCEEDED. The rest of the namespace allocates nothing a
 * handler can grow: loads, stores, input_*, output_set, error_set, free,
 * length, and the log_* functions (which decode a block the handler already
 * paid for, into the thread's JavaScript heap, capped by resourceLimits);
 * http_request refuses every host, since pgfn never passes allowedHosts to
 * Extism (pgfn_http_fetch is the way out).
 *
 * Frees are not reported to us: Extism's `free` and `log_*` drop a block
 * without a hook. A block we counted is looked up again (`length` of its
 * address is 0 once freed) when the total would pass the limit and every time
 * the number of counted blocks doubles, so a handler that allocates and
 * frees in a loop is never refused for memory it gave back.
 */
import v8 from "node:v8";
import type { CallContext } from "@extism/extism";

/**
 * What a block costs besides its bytes: Extism's Block, DataView and
 * ArrayBuffer objects and our bookkeeping, on the thread's heap. A flood of
 * empty allocations is refused too.
 */
export const BLOCK_OVERHEAD_BYTES = 256;

/**
 * Up to this many counted blocks, frees are looked for at every reservation;
 * beyond, only near the limit, so memoryPeakBytes may count a freed block.
 */
const EXACT_BLOCKS = 32;

/**
 * How far the thread's memory outside the JavaScript heap (ArrayBuffers and
 * wasm memories: V8's external memory) may grow during one invocation before
 * the backstop stops it: twice the limit (what is live, and as much again of
 * garbage not yet collected) plus this slack. (64 MiB)
 */
export const BACKSTOP_SLACK_BYTES = 64 * 1024 * 1024;

/** The part of Extism's call context pgfn's host functions use; `store` is counted. */
export interface HostContext {
  /** The block at `address`, or null. */
  read(address: bigint): { text(): string; bytes(): Uint8Array } | null;
  /** The length of the block at `address` (0 when there is none). */
  length(address: bigint): bigint;
  /** Copies `value` into a new block, counted against the limit; returns its address. */
  store(value: string | Uint8Array): bigint;
}

/** Thrown from an import to stop the handler; the run becomes MEMORY_EXCEEDED. */
export class MemoryRefused extends Error {}

/** Why a run was stopped for memory, for its MEMORY_EXCEEDED message. */
export type MemoryRefusal =
  | { readonly kind: "grow"; readonly fromBytes: number; readonly deltaBytes: number }
  | { readonly kind: "host"; readonly what: string; readonly bytes: number }
  | { readonly kind: "thread"; readonly grownBytes: number; readonly boundBytes: number };

/**
 * One invocation's memory: the linear memory (read from the instance) and the
 * host blocks and vars the handler made Extism keep, under one limit.
 *
 * @example
 * const budget = new HostMemory(16 * 2 ** 20, () => memory?.buffer.byteLength ?? 0);
 * functions["extism:host/env"] = budget.kernelFunctions(config, logger);
 */
export class HostMemory {
  /** Bytes counted for live blocks and vars. */
  private hostBytes = 0;
  /** Counted blocks by index (the top 16 bits of an Extism address): bytes charged. */
  private readonly blocks = new Map<number, number>();
  /** Bytes charged per var name. */
  private readonly vars = new Map<string, number>();
  /**
   * The vars themselves, here rather than in Extism's plugin, which keeps
   * them for its life: an instance outlives an invocation (instances.ts), its
   * vars must not.
   */
  private readonly varValues = new Map<string, Uint8Array>();
  private recheckAt = 1024;
  private peak = 0;
  private threadStart: number | undefined;
  /** The first refusal: what the MEMORY_EXCEEDED message names. */
  refusal: MemoryRefusal | undefined;
  /** Set once a refusal was thrown into the handler; every later reservation is refused too. */
  private threw = false;

  /**
   * @param limitBytes the handler's memory_limit_mb in bytes (Infinity: none).
   * @param linearBytes the size of the handler's linear memory now (0 until known).
   * @param threadMemory the thread's memory outside the JavaScript heap, for
   *   the backstop; pass it only where one invocation runs per thread.
   *   (Default: no backstop)
   */
  constructor(
    readonly limitBytes: number,
    private readonly linearBytes: () => number,
    private readonly threadMemory?: () => number,
  ) {}

  /**
   * Starts the backstop's clock, just before the plugin is made. `inputBytes`:
   * the input, which Extism copies into a block of its own; pgfn's doing, not
   * the handler's, so not counted, but allowed for.
   */
  begin(inputBytes: number): void {
    if (this.threadMemory) this.threadStart = this.threadMemory() + inputBytes;
  }

  /** Linear memory plus counted host memory, at its largest so far. */
  get peakBytes(): number {
    return Math.max(this.peak, this.linearBytes() + this.hostBytes);
  }

  /** Host bytes counted now (blocks and vars). */
  get hostBytesInUse(): number {
    return this.hostBytes;
  }

  /**
   * Whether the linear memory may grow by `deltaBytes`; records the refusal
   * when not. The handler sees a failed memory.grow (-1), as on a full machine.
   */
  mayGrow(context: CallContext, deltaBytes: number): boolean {
    this.checkThread();
    const fromBytes = this.linearBytes();
    if (!this.stopped && this.fits(context, fromBytes + deltaBytes)) {
      this.peak = Math.max(this.peak, fromBytes + deltaBytes + this.hostBytes);
      return true;
    }
    this.refusal ??= { kind: "grow", fromBytes, deltaBytes };
    return false;
  }

  /**
   * Whether the run must end MEMORY_EXCEEDED even if the handler returned
   * normally: a refused host allocation or the backstop threw into it, and
   * a module can catch that (wasm exception handling). A refused grow is
   * not: the handler saw -1, as on a full machine, and may cope.
   */
  get stopped(): boolean {
    return this.threw;
  }

  /**
   * Counts `bytes` more of host memory, or throws MemoryRefused (recording
   * why) if they would pass the limit. Call it before allocating.
   */
  reserve(context: CallContext, bytes: number, what: string): void {
    this.checkThread();
    if (this.threw) throw new MemoryRefused(`${what}: the memory limit was already reached`);
    if (!this.fits(context, this.linearBytes() + bytes)) {
      // After a refused grow, that grow is the cause to report (a handler
      // failing for want of memory then cannot log why, either).
      this.refusal ??= { kind: "host", what, bytes };
      this.threw = true;
      throw new MemoryRefused(`${what}: memory limit exceeded`);
    }
    this.hostBytes += bytes;
    this.peak = Math.max(this.peak, this.linearBytes() + this.hostBytes);
  }

  /**
   * Call just before the plugin's call: Extism's call() drops every block
   * but the null page (start-up code's too) and reuses their indices, so
   * what was counted for them is given back. Vars survive; so do their bytes.
   */
  startCall(): void {
    for (const charge of this.blocks.values()) this.hostBytes -= charge;
    this.blocks.clear();
    this.recheckAt = 1024;
  }

  /** Gives back bytes reserved for something that did not happen or was dropped. */
  release(bytes: number): void {
    this.hostBytes -= bytes;
  }

  /** Remembers the block at `address` as holding `bytes` already reserved. */
  track(context: CallContext, address: bigint, bytes: number): void {
    this.blocks.set(Number(address >> 48n), bytes);
    if (this.blocks.size >= this.recheckAt) {
      this.forgetFreed(context);
      this.recheckAt = this.blocks.size * 2 + 1024;
    }
  }

  /** Copies `value` into a new counted block; the counted `store` of {@link HostContext}. */
  store(context: CallContext, value: string | Uint8Array, what: string): bigint {
    const bytes = typeof value === "string" ? new TextEncoder().encode(value) : value;
    const charge = bytes.byteLength + BLOCK_OVERHEAD_BYTES;
    this.reserve(context, charge, what);
    const address = context.store(bytes);
    this.track(context, address, charge);
    return address;
  }

  /** A {@link HostContext} over `context` whose `store` is counted as `what`. */
  hostContext(context: CallContext, what: string): HostContext {
    return {
      read: (address) => context.read(address),
      length: (address) => context.length(address),
      store: (value) => this.store(context, value, what),
    };
  }

  /**
   * Replacements for the `extism:host/env` functions that create blocks or
   * vars, with Extism's behaviour (rc13, call-context.ts) and counted. Two
   * differences: config_get and var_get leave the key's block to the handler
   * (Extism frees it; nothing public does), so it stays counted until freed;
   * vars live in this object, for one invocation.
   *
   * @param config what config_get answers: the function's env.
   * @param logger where Extism's own complaints go.
   */
  kernelFunctions(
    config: Readonly<Record<string, string>>,
    logger: Console,
  ): Record<string, (context: CallContext, ...args: bigint[]) => unknown> {
    return {
      alloc: (context, size) => {
        // i64 from the handler: a negative size is a huge unsigned one.
        const bytes = Number(BigInt.asUintN(64, size!));
        const charge = bytes + BLOCK_OVERHEAD_BYTES;
        this.reserve(context, charge, "alloc");
        const address = context.alloc(bytes);
        this.track(context, address, charge);
        return address;
      },
      config_get: (context, keyAddress) => {
        const key = context.read(keyAddress!)?.string();
        if (key === undefined || !Object.hasOwn(config, key)) return 0n;
        return this.store(context, config[key]!, `config_get of ${quoteKey(key)}`);
      },
      var_get: (context, keyAddress) => {
        const key = context.read(keyAddress!)?.string();
        const value = key === undefined ? undefined : this.varValues.get(key);
        if (!value) return 0n;
        // A copy: the var's own buffer in a block would stay alive, uncounted,
        // after a later var_set replaced it.
        return this.store(context, value.slice(), `var_get of ${quoteKey(key!)}`);
      },
      var_set: (context, keyAddress, valueAddress) => {
        const key = context.read(keyAddress!)?.string();
        if (key === undefined) {
          logger.error(
            `attempted to set variable using invalid key address (addr="${keyAddress!.toString(16)}H")`,
          );
          return;
        }
        const old = this.vars.get(key) ?? 0;
        if (valueAddress === 0n) {
          this.varValues.delete(key);
          this.vars.delete(key);
          this.release(old);
          return;
        }
        const value = context.read(valueAddress!);
        if (!value) {
          logger.error(
            `attempted to set variable to invalid address (key="${key}"; addr="${valueAddress!.toString(16)}H")`,
          );
          return;
        }
        const charge = Number(context.length(valueAddress!)) + key.length + BLOCK_OVERHEAD_BYTES;
        this.reserve(context, charge, `var_set of ${quoteKey(key)}`);
        // Copied, as Extism does: a var outlives the block it was set from.
        this.varValues.set(key, value.bytes().slice());
        this.vars.set(key, charge);
        this.release(old);
      },
    };
  }

  /** Whether `linear` bytes of linear memory and the host memory fit the limit. */
  private fits(context: CallContext, linear: number): boolean {
    // Few blocks (most handlers): looked at every time, so the peak is exact.
    if (this.blocks.size <= EXACT_BLOCKS) this.forgetFreed(context);
    if (linear + this.hostBytes <= this.limitBytes) return true;
    // Maybe the handler freed some: look again before saying no.
    this.forgetFreed(context);
    return linear + this.hostBytes <= this.limitBytes;
  }

  /** Uncounts the blocks Extism no longer holds (freed, or dropped by log_*). */
  private forgetFreed(context: CallContext): void {
    for (const [index, charge] of this.blocks) {
      // A zero-length block cannot be told from a freed one: it stays counted.
      if (charge > BLOCK_OVERHEAD_BYTES && context.length(BigInt(index) << 48n) === 0n) {
        this.blocks.delete(index);
        this.hostBytes -= charge;
      }
    }
  }

  /**
   * The backstop, for whatever the counting above misses: the thread's
   * memory outside the heap may not grow during one invocation by more than
   * twice the limit plus BACKSTOP_SLACK_BYTES.
   */
  private checkThread(): void {
    if (this.threadStart === undefined || !Number.isFinite(this.limitBytes)) return;
    const grownBytes = this.threadMemory!() - this.threadStart;
    const boundBytes = 2 * this.limitBytes + BACKSTOP_SLACK_BYTES;
    if (grownBytes > boundBytes) {
      this.refusal = { kind: "thread", grownBytes, boundBytes };
      this.threw = true;
      throw new MemoryRefused("the sandbox thread's memory passed its bound");
    }
  }

  /** The MEMORY_EXCEEDED message for the refusal, if there was one. */
  refusalMessage(): string | undefined {
    const r = this.refusal;
    if (!r) return undefined;
    const limit = formatBytes(this.limitBytes);
    const host =
      this.hostBytes >= 2 ** 20 ? ` with ${formatBytes(this.hostBytes)} held in host memory` : "";
    switch (r.kind) {
      case "grow":
        // In whole MB even when small, as this message always was.
        return (
          `Memory limit exceeded: the handler asked to grow its memory from ${Math.round(r.fromBytes / 2 ** 20)} MB ` +
          `by ${Math.round(r.deltaBytes / 2 ** 20)} MB, past its limit of ${limit}${host}; the instance was stopped.`
        );
      case "host":
        return (
          `Memory limit exceeded: the handler asked the host for ${formatBytes(r.bytes)} (${r.what}) ` +
          `with ${formatBytes(this.linearBytes() + this.hostBytes)} in use, past its limit of ${limit}; ` +
          `the instance was stopped.`
        );
      case "thread":
        return (
          `Memory limit exceeded: the sandbox thread's memory grew by ${formatBytes(r.grownBytes)} during ` +
          `the run, past the ${formatBytes(r.boundBytes)} a limit of ${limit} allows; ` +
          `the instance was stopped and the thread replaced.`
        );
    }
  }
}

/** The thread's memory outside the JavaScript heap: ArrayBuffers and wasm memories. */
export function threadExternalMemory(): number {
  return v8.getHeapStatistics().external_memory;
}

/** A key for a message: quoted, and cut, since a handler chooses it. */
function quoteKey(key: string): string {
  return JSON.stringify(key.length > 100 ? `${key.slice(0, 100)}…` : key);
}

/** "16 MB", or "300 KB" / "12 bytes" below a megabyte. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return "no limit";
  if (bytes >= 2 ** 20) return `${Math.round(bytes / 2 ** 20)} MB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${bytes} bytes`;
}
