/**
 * The sandbox as the rest of pgfn sees it: memory-guarded compiled modules,
 * cached by hash, and the thread pool that runs them.
 */
import { ModuleCache } from "./module.js";
import { guardMemory } from "./memoryGuard.js";
import { SandboxPool, type SandboxPoolOptions } from "./pool.js";

export interface Sandbox {
  readonly modules: ModuleCache;
  readonly pool: SandboxPool;
  close(): Promise<void>;
}

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
