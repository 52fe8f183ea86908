/**
 * Deploy: validate a module and its settings, then store it. Nothing is
 * stored unless every check passes. Shared by the CLI and the HTTP API.
 */
import type { Db } from "./db/database.js";
import { upsertFunction, type DeployInput, type DeployResult } from "./db/functions.js";
import { PgfnError } from "./errors.js";
import { camelCase, FUNCTION_NAME, settingProblems, settingsByColumn } from "./functionColumns.js";
import { compileJavaScript } from "./sandbox/jsCompile.js";
import { sha256Hex, validateWasm } from "./sandbox/module.js";
import { guardMemory } from "./sandbox/memoryGuard.js";

/** The failure spec's limit for a module: 10 MiB. The same holds for a JavaScript file. */
export const MAX_WASM_BYTES = 10 * 1024 * 1024;

/**
 * A function to store: a WebAssembly module (`wasm`), or a JavaScript or
 * TypeScript handler's `source` with the `fileName` that says which (see
 * jsCompile.ts).
 */
export type DeployRequest = Omit<DeployInput, "wasmSha256" | "wasm" | "runtime" | "source"> &
  (
    | { readonly wasm: Uint8Array; readonly source?: undefined }
    | { readonly source: string; readonly fileName: string; readonly wasm?: undefined }
  );

/** Checks a function name, with the same message everywhere. */
export function assertFunctionName(name: string): void {
  if (!FUNCTION_NAME.test(name)) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid function name "${name}": use ${FUNCTION_NAME.source} (a lowercase letter first, then letters, digits, _ or -).`,
    );
  }
}

export async function deployFunction(db: Db, request: DeployRequest): Promise<DeployResult> {
  const { wasm, source, ...rest } = request;
  assertFunctionName(rest.name);
  // By the names the caller used; the CLI and the HTTP API check theirs first.
  const problems = settingProblems(settingsByColumn(rest), camelCase);
  if (problems.length > 0) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid settings for "${rest.name}": ${problems.join("; ")}.`,
    );
  }
  if (source !== undefined) return deployJavaScript(db, { ...request, source });
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

/** The JavaScript half of deployFunction: settings already checked. */
async function deployJavaScript(
  db: Db,
  request: DeployRequest & { readonly source: string; readonly fileName: string },
): Promise<DeployResult> {
  const { source, fileName, name } = request;
  const bytes = Buffer.byteLength(source);
  if (bytes > MAX_WASM_BYTES) {
    throw new PgfnError(
      "PAYLOAD_TOO_LARGE",
      `The handler ${fileName} for "${name}" is ${bytes} bytes; the limit is ${MAX_WASM_BYTES} bytes (10 MiB).`,
    );
  }
  let code: string;
  try {
    code = await compileJavaScript(source, fileName);
  } catch (error) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid handler for "${name}": ${(error as Error).message}`,
      { cause: error },
    );
  }
  const compiled = Buffer.from(code);
  const { fileName: _, ...input } = request;
  return upsertFunction(db, {
    ...input,
    wasm: compiled,
    wasmSha256: sha256Hex(compiled),
    runtime: "js",
    source,
  });
}
