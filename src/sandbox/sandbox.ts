/**
 * The sandbox as the rest of pgfn sees it: memory-guarded compiled modules,
 * cached by hash, and the thread pool that runs them.
 */
import { ModuleCache } from "./module.js";
import { guardMemory } from "./memoryGuard.js";
import { SandboxPool, type SandboxPoolOptions } from "./pool.js";

/** What the daemon holds of the sandbox: its module cache and its thread pool. */
export interface Sandbox {
  /** Compiled, memory-guarded modules by sha256. */
  readonly modules: ModuleCache;
  /** The sandbox threads that run them. */
  readonly pool: SandboxPool;
  /** Stops the pool's threads. */
  close(): Promise<void>;
}

/**
 * A pool and a module cache that guards every module it compiles.
 *
 * @param options the pool's, and `cachedModules`: modules kept compiled. (Default: 64)
 */
export function createSandbox(
  options: SandboxPoolOptions & { readonly cachedModules?: number } = {},
): Sandbox {
  const pool = new SandboxPool(options);
  return {
    modules: new ModuleCache(options.cachedModules ?? 64, guardMemory),
    pool,
    close: () => pool.close(),
  };
}
