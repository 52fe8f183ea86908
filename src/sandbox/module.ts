/**
 * A handler's module, from stored bytes to a compiled WebAssembly.Module:
 * what a deploy accepts (validateWasm), the sha256 that ties a run to the
 * bytes it was deployed with (sha256Hex, verifySha256), and the cache of
 * compiled modules by that hash (ModuleCache).
 *
 * Its own file because these change with what pgfn accepts and stores, not
 * with how a module is run: deploy uses them without ever instantiating one.
 */
import { createHash } from "node:crypto";
import type { Runtime } from "../interfaces.js";
import { splitSourceMap, type SourceMap } from "./sourceMap.js";

/** The export called when none is named. */
export const DEFAULT_ENTRY = "handle";

/**
 * A JavaScript handler as deploy compiled it (jsCompile.ts): the script the
 * sandbox's engine evaluates (jsEngine.ts). Stored in place of a module's
 * bytes, hashed and verified the same way.
 */
export interface JsModule {
  readonly runtime: "js";
  /** Without the source map deploy appended to it. */
  readonly code: string;
  /**
   * The map from `code`'s positions to the user's file (sourceMap.ts), kept
   * on the main thread: threadModule leaves it out of what a thread is sent.
   * Absent for a handler deployed before maps were kept.
   */
  readonly sourceMap?: SourceMap;
}

/** What a sandbox thread runs: a compiled WebAssembly module or a JavaScript handler. */
export type HandlerModule = WebAssembly.Module | JsModule;

/**
 * What a sandbox thread is sent of a module: a JavaScript handler's code
 * without its source map, which only the main thread reads (when a run's
 * logs name a compiled position).
 */
export function threadModule(module: HandlerModule): HandlerModule {
  if (module instanceof WebAssembly.Module || !module.sourceMap) return module;
  return { runtime: module.runtime, code: module.code };
}

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
  // V8 would say "BufferSource argument is empty": an empty file or an
  // empty base64 string (a path that did not exist, in a shell).
  if (wasm.byteLength === 0) {
    throw new Error("The module is empty (0 bytes); upload the .wasm file the compiler wrote.");
  }
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
 * const module = await modules.get(fn.wasm_sha256, () => getWasm(db, fn.name, fn.wasm_sha256));
 */
export class ModuleCache {
  // Map iteration order is insertion order: re-inserting on use makes the
  // first key the least recently used.
  private readonly entries = new Map<string, Promise<HandlerModule>>();

  /**
   * @param capacity modules kept compiled. (Default: 64)
   * @param prepare rewrites verified bytes before compiling (the daemon
   *   passes guardMemory). (Default: none)
   */
  constructor(
    private readonly capacity = 64,
    private readonly prepare?: (wasm: Uint8Array) => Promise<Uint8Array>,
  ) {}

  /**
   * The compiled module for `sha256`, calling `load` for its bytes on a miss.
   *
   * @param runtime what the bytes are: a WebAssembly module, or a JavaScript
   *   handler's compiled script. (Default: "wasm")
   */
  get(
    sha256: string,
    load: () => Promise<Uint8Array>,
    runtime: Runtime = "wasm",
  ): Promise<HandlerModule> {
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
        if (runtime === "js")
          return { runtime, ...splitSourceMap(new TextDecoder().decode(wasm)) } satisfies JsModule;
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
 * `read` computed once per compiled module and remembered for the module's
 * life: what a module imports, exports and carries never changes, so it is
 * read on its first invocation, not on every one.
 *
 * @example
 * const importNames = perModule((module) => WebAssembly.Module.imports(module).map((i) => i.name));
 */
export function perModule<T>(
  read: (module: WebAssembly.Module) => T,
): (module: WebAssembly.Module) => T {
  const known = new WeakMap<WebAssembly.Module, { readonly value: T }>();
  return (module) => {
    let entry = known.get(module);
    if (entry === undefined) {
      entry = { value: read(module) };
      known.set(module, entry);
    }
    return entry.value;
  };
}
