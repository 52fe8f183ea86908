/**
 * Deploy: validate a module and its settings, then store it. Nothing is
 * stored unless every check passes. Shared by the CLI and the HTTP API, as
 * is the PATCH of settings (`patchFunction`).
 */
import { CompiledQuery } from "kysely";
import { parseIntoClientConfig } from "pg-connection-string";
import type { Db } from "./db/database.js";
import {
  changeFunction,
  getFunction,
  upsertFunction,
  type DeployInput,
  type DeployResult,
  type EnvOutcome,
  type FunctionInfo,
  type FunctionPatch,
} from "./db/functions.js";
import { PgfnError } from "./errors.js";
import {
  FUNCTION_NAME,
  settingProblems,
  settingsByColumn,
  TS_NAMES,
  type Naming,
} from "./functionColumns.js";
import { dbRoleProblem, refusalText, sqlIdent } from "./sandbox/host/dbRole.js";
import { compileJavaScript } from "./sandbox/jsCompile.js";
import { checkJavaScript } from "./sandbox/jsEngine.js";
import { DEFAULT_ENTRY, sha256Hex, validateWasm } from "./sandbox/module.js";
import { guardMemory } from "./sandbox/memoryGuard.js";

/** The failure spec's limit for a module: 10 MiB. */
export const MAX_WASM_BYTES = 10 * 1024 * 1024;

/**
 * The limit for a JavaScript or TypeScript handler's source: 1 MiB. Real
 * handlers, dependencies bundled in, are a few to a few hundred KiB; esbuild
 * spends CPU and memory at deploy in proportion to what it is given, in the
 * daemon's host for an HTTP deploy (jsNesting.ts).
 */
export const MAX_SOURCE_BYTES = 1024 * 1024;

/** What deploy lets a handler's top-level code use when it evaluates it, without a memory_limit_mb given. */
const CHECK_MEMORY_MB = 128;

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

/** How a deploy or PATCH is checked, by whom it is asked. */
export interface DeployOptions {
  /** How the caller names its inputs in messages (CLI_NAMES, HTTP_NAMES). (Default: TS_NAMES) */
  readonly names?: Naming;
  /**
   * Check db_role against the roles of this database: it exists, may log
   * in, and db_query would not refuse it. Off when db_query connects to
   * another database (see `checksDbRole`), which it then judges at run time
   * only. (Default: true)
   */
  readonly checkDbRole?: boolean;
}

/**
 * Whether deploy can judge db_role here: db_query (`dbQueryUrl`,
 * PGFN_DB_QUERY_URL) connects to the same server and database as pgfn
 * (`databaseUrl`), so the roles and grants it judges at run time are the
 * ones deploy sees.
 */
export function checksDbRole(dbQueryUrl: string | undefined, databaseUrl: string): boolean {
  if (dbQueryUrl === undefined || dbQueryUrl === databaseUrl) return true;
  const where = (url: string) => {
    const c = parseIntoClientConfig(url);
    return `${c.host ?? ""}:${c.port ?? ""}/${c.database ?? ""}`;
  };
  try {
    return where(dbQueryUrl) === where(databaseUrl);
  } catch {
    return false;
  }
}

/** Checks a function name, with the same message everywhere. */
export function assertFunctionName(name: string): void {
  if (!FUNCTION_NAME.test(name)) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid function name "${name}": use ${FUNCTION_NAME.source} (a lowercase letter first, then letters, digits, _ or -).`,
    );
  }
}

export async function deployFunction(
  db: Db,
  request: DeployRequest,
  options: DeployOptions = {},
): Promise<DeployResult> {
  const { wasm, source, ...rest } = request;
  const names = options.names ?? TS_NAMES;
  assertFunctionName(rest.name);
  assertSettings(rest.name, rest, Boolean(rest.update), names);
  // The export runs will call: the one given, else an update keeps the
  // function's, so the new code is checked for that one.
  const entry =
    rest.entrypoint ??
    ((rest.update && (await getFunction(db, rest.name))?.entrypoint) || DEFAULT_ENTRY);
  if (source !== undefined) {
    const compiled = await compileSource(
      rest.name,
      source,
      request.fileName,
      entry,
      (rest.memoryLimitMb ?? CHECK_MEMORY_MB) * 1024 * 1024,
    );
    await assertReferences(db, rest.name, rest, names, options);
    const { fileName: _, ...input } = request;
    return upsertFunction(db, {
      ...input,
      wasm: compiled,
      wasmSha256: sha256Hex(compiled),
      runtime: "js",
      source,
    });
  }
  if (wasm.byteLength > MAX_WASM_BYTES) {
    throw new PgfnError(
      "PAYLOAD_TOO_LARGE",
      `The module for "${rest.name}" is ${wasm.byteLength} bytes; the limit is ${MAX_WASM_BYTES} bytes (10 MiB).`,
    );
  }
  try {
    await validateWasm(wasm, entry);
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
  await assertReferences(db, rest.name, rest, names, options);
  return upsertFunction(db, { ...request, wasmSha256: sha256Hex(wasm) });
}

/** A JavaScript or TypeScript handler compiled for the sandbox (jsCompile.ts), or the refusal. */
async function compileSource(
  name: string,
  source: string,
  fileName: string,
  entry: string,
  memoryLimitBytes: number,
): Promise<Buffer> {
  const bytes = Buffer.byteLength(source);
  if (bytes > MAX_SOURCE_BYTES) {
    throw new PgfnError(
      "PAYLOAD_TOO_LARGE",
      `The handler ${fileName} for "${name}" is ${bytes} bytes; a TypeScript/JavaScript source may be at most ${MAX_SOURCE_BYTES} bytes (1 MiB).`,
    );
  }
  const invalid = (message: string, cause?: unknown) =>
    new PgfnError("INVALID_REQUEST", `Invalid handler for "${name}": ${message}`, { cause });
  let code: string;
  try {
    code = await compileJavaScript(source, fileName, entry);
  } catch (error) {
    throw invalid((error as Error).message, error);
  }
  // What would fail every run, found now: the file evaluated once, as a run
  // would before calling its handler (not called here).
  const problem = await checkJavaScript(code, {
    memoryLimitBytes,
    ...(entry !== DEFAULT_ENTRY && { exportName: entry }),
  });
  // Named as a syntax error is (file:line:column), when the stack says where.
  if (problem !== undefined) {
    throw invalid(`${fileName}:${problem.at ? `${problem.at}:` : ""} ${problem.message}.`);
  }
  return Buffer.from(code);
}

/**
 * Changes a deployed function's settings (`PATCH /functions/v1/:name`),
 * checked as a deploy's are; env given merges in. Undefined when there is
 * no such function.
 */
export async function patchFunction(
  db: Db,
  name: string,
  patch: FunctionPatch,
  options: DeployOptions = {},
): Promise<{ fn: FunctionInfo; env: EnvOutcome } | undefined> {
  const names = options.names ?? TS_NAMES;
  assertFunctionName(name);
  assertSettings(name, patch, true, names);
  await assertReferences(db, name, patch, names, options);
  if (patch.entrypoint !== undefined) await assertStoredEntry(db, name, patch.entrypoint, names);
  return changeFunction(db, name, patch);
}

/**
 * A new entrypoint without new code: the stored code is checked for it, as
 * a deploy checks new code, so that no run fails for want of it.
 */
async function assertStoredEntry(db: Db, name: string, entry: string, n: Naming): Promise<void> {
  const stored = await db
    .selectFrom("pgfn.functions")
    .select(["runtime", "wasm", "memory_limit_mb"])
    .where("name", "=", name)
    .executeTakeFirst();
  // No such function: the change says so.
  if (!stored) return;
  let problem: string | undefined;
  if (stored.runtime === "js") {
    problem = (
      await checkJavaScript(stored.wasm.toString("utf8"), {
        memoryLimitBytes: stored.memory_limit_mb * 1024 * 1024,
        ...(entry !== DEFAULT_ENTRY && { exportName: entry }),
      })
    )?.message;
  } else {
    problem = await validateWasm(stored.wasm, entry).then(
      () => undefined,
      (error: Error) => error.message,
    );
  }
  if (problem !== undefined) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `${n("entrypoint")} ${entry} does not fit "${name}"'s code: ${problem}`,
    );
  }
}

/** The settings' values, and env changes that do not contradict themselves or the deploy. */
function assertSettings(name: string, s: FunctionPatch, update: boolean, n: Naming): void {
  // By the names the caller used; the CLI and the HTTP API check theirs first.
  const problems = settingProblems(settingsByColumn(s), n);
  if (problems.length > 0) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `Invalid settings for "${name}": ${problems.join("; ")}.`,
    );
  }
  const conflicts: string[] = [];
  const unset = s.unsetEnv ?? [];
  const newEnv = `a new function's env is exactly what ${n("env")} gives`;
  if (unset.length > 0 && !update) {
    conflicts.push(
      `${n("unset_env")} removes keys from a deployed function's env: add ${n("update")} (${newEnv}).`,
    );
  }
  if (s.replaceEnv && !update) {
    conflicts.push(
      `${n("replace_env")} replaces a deployed function's env: add ${n("update")} (${newEnv}).`,
    );
  }
  if (unset.length > 0 && s.replaceEnv) {
    conflicts.push(
      `${n("unset_env")} and ${n("replace_env")} together: ${n("replace_env")} already removes every key not given in ${n("env")}; leave out ${n("unset_env")}.`,
    );
  }
  const both = unset.filter((key) => s.env !== undefined && Object.hasOwn(s.env, key));
  if (both.length > 0) {
    conflicts.push(
      `${n("unset_env")} and ${n("env")} both name ${both.join(", ")}: set ${both.length > 1 ? "each" : "it"} or remove ${both.length > 1 ? "each" : "it"}, not both.`,
    );
  }
  if (conflicts.length > 0) throw new PgfnError("INVALID_REQUEST", conflicts.join(" "));
}

/**
 * What db_role and on_error name exists and can serve: checked at deploy so
 * that a typo is a 400 now, not a failed run later. A role db_query would
 * refuse is refused with db_query's own reason. (Both can still change
 * afterwards; db_query checks the role again on each connection.)
 */
async function assertReferences(
  db: Db,
  name: string,
  s: FunctionPatch,
  n: Naming,
  options: DeployOptions,
): Promise<void> {
  const problems: string[] = [];
  const role = s.dbRole;
  if (typeof role === "string" && options.checkDbRole !== false) {
    const problem = await db.connection().execute(async (connection) => {
      const client = {
        query: async <R>(text: string, values: readonly unknown[]) =>
          connection.executeQuery<R>(CompiledQuery.raw(text, [...values])),
      };
      // Whoever deploys connects as the daemon does (the same DATABASE_URL).
      const { rows } = await client.query<{ role: string }>("select current_user as role", []);
      return dbRoleProblem(client, role, rows[0]?.role);
    });
    const flag = `${n("db_role")} ${role}`;
    const id = sqlIdent(role);
    if (problem === "missing") {
      problems.push(
        `${flag}: there is no role ${role}. Create it (create role ${id} login password '...'; see the README, "db_query roles") or name an existing one.`,
      );
    } else if (problem === "nologin") {
      problems.push(
        `${flag}: role ${role} cannot log in, and db_query logs in as the function's db_role. Run: alter role ${id} login;`,
      );
    } else if (problem) {
      problems.push(`${flag}: db_query would refuse it: ${refusalText(role, problem)}`);
    }
  }
  const handler = s.onError;
  // A function may handle its own failures: the runtime hands an error
  // handler's own failure no further, so this cannot loop.
  if (typeof handler === "string" && handler !== name) {
    const found = await db
      .selectFrom("pgfn.functions")
      .select("name")
      .where("name", "=", handler)
      .executeTakeFirst();
    if (!found) {
      problems.push(
        `${n("on_error")} ${handler}: there is no function ${handler} to receive "${name}"'s failures. Deploy it first, or name a deployed one.`,
      );
    }
  }
  if (problems.length > 0) throw new PgfnError("INVALID_REQUEST", problems.join(" "));
}

/**
 * What happened to env, for people: "env: set API_URL; kept API_KEY;
 * removed OLD". Undefined when env was and stays empty.
 */
export function describeEnvOutcome(env: EnvOutcome): string | undefined {
  const parts = [
    env.set.length > 0 && `set ${env.set.join(", ")}`,
    env.kept.length > 0 && `kept ${env.kept.join(", ")}`,
    env.removed.length > 0 && `removed ${env.removed.join(", ")}`,
    env.absent.length > 0 &&
      `${env.absent.join(", ")} ${env.absent.length > 1 ? "were" : "was"} not set`,
  ].filter(Boolean);
  return parts.length > 0 ? `env: ${parts.join("; ")}` : undefined;
}
