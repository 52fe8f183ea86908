/**
 * Deploy: validate a module and its settings, then store it. Nothing is
 * stored unless every check passes. Shared by the CLI and the HTTP API.
 */
import { z } from "zod";
import type { Db } from "./db/database.js";
import { upsertFunction, type DeployInput, type DeployResult } from "./db/functions.js";
import { PgfnError } from "./errors.js";
import { sha256Hex, validateWasm } from "./sandbox/module.js";
import { guardMemory } from "./sandbox/memoryGuard.js";

/** The failure spec's limit for a module: 10 MiB. */
export const MAX_WASM_BYTES = 10 * 1024 * 1024;

export const FUNCTION_NAME = /^[a-z][a-z0-9_-]{0,63}$/;

const settings = z.object({
  name: z
    .string()
    .regex(
      FUNCTION_NAME,
      "must match ^[a-z][a-z0-9_-]{0,63}$ (lowercase letter first; letters, digits, _ and -)",
    ),
  description: z.string().max(1000).optional(),
  timeoutMs: z.number().int().min(1000).max(300000).optional(),
  memoryLimitMb: z.number().int().min(16).max(512).optional(),
  maxConcurrency: z.number().int().min(1).max(10000).optional(),
  maxAttempts: z.number().int().min(1).max(100).optional(),
  retryBaseMs: z.number().int().min(0).max(86_400_000).optional(),
  retryMaxMs: z.number().int().min(0).max(86_400_000).optional(),
  env: z
    .record(
      z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "env keys must be identifiers"),
      z.string(),
    )
    .optional(),
  allowedHosts: z
    .array(
      z.string().regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, "must be a host name, optionally with :port"),
    )
    .optional(),
  dbRole: z.string().min(1).max(63).optional(),
  onError: z.string().regex(FUNCTION_NAME, "must be a function name").optional(),
  update: z.boolean().optional(),
});

export type DeployRequest = Omit<DeployInput, "wasmSha256">;

/** Checks a function name, with the same message everywhere. */
export function assertFunctionName(name: string): void {
  if (!FUNCTION_NAME.test(name)) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid function name "${name}": use ^[a-z][a-z0-9_-]{0,63}$ (a lowercase letter first, then letters, digits, _ or -).`,
    );
  }
}

export async function deployFunction(db: Db, request: DeployRequest): Promise<DeployResult> {
  const { wasm, ...rest } = request;
  assertFunctionName(rest.name);
  const parsed = settings.safeParse(rest);
  if (!parsed.success) {
    const problems = parsed.error.issues.map(
      (i) => `${i.path.join(".") || "settings"} ${i.message}`,
    );
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid settings for "${rest.name}": ${problems.join("; ")}.`,
    );
  }
  if (wasm.byteLength > MAX_WASM_BYTES) {
    throw new PgfnError(
      "PAYLOAD_TOO_LARGE",
      `The module for "${rest.name}" is ${wasm.byteLength} bytes; the limit is ${MAX_WASM_BYTES} bytes (10 MiB).`,
    );
  }
  try {
    await validateWasm(wasm, "handle");
    // The memory limit depends on rewriting the module (memoryGuard.ts): a
    // module that cannot be rewritten cannot run, so it is refused now.
    await guardMemory(wasm);
  } catch (error) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid WebAssembly for "${rest.name}": ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  return upsertFunction(db, { ...request, wasmSha256: sha256Hex(wasm) });
}
