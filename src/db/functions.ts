/** Queries on `pgfn.functions`. */
import { sql, type Selectable, type Updateable } from "kysely";
import type { Db, FunctionsTable } from "./database.js";
import { PgfnError, SQLSTATE, sqlState } from "../errors.js";
import type { Runtime } from "../interfaces.js";
import {
  columnSpec,
  INFO_COLUMNS,
  settingsByColumn,
  TIMESTAMP_COLUMNS,
  type DeploySettings,
  type InfoColumn,
  type PatchColumn,
  type PatchSettings,
} from "../functionColumns.js";

/** A function as the worker needs it: everything but the module bytes. */
export type FunctionInfo = Pick<Selectable<FunctionsTable>, InfoColumn>;

export async function getFunction(db: Db, name: string): Promise<FunctionInfo | undefined> {
  return db
    .selectFrom("pgfn.functions")
    .select(INFO_COLUMNS)
    .where("name", "=", name)
    .executeTakeFirst();
}

/** The module bytes, if the function still has this hash (it may have been redeployed). */
export async function getWasm(
  db: Db,
  name: string,
  sha256: string,
): Promise<Uint8Array | undefined> {
  const row = await db
    .selectFrom("pgfn.functions")
    .select("wasm")
    .where("name", "=", name)
    .where("wasm_sha256", "=", sha256)
    .executeTakeFirst();
  return row?.wasm;
}

/** A js function's file as deployed; null for a wasm function, undefined for none of that name. */
export async function getSource(db: Db, name: string): Promise<string | null | undefined> {
  const row = await db
    .selectFrom("pgfn.functions")
    .select("source")
    .where("name", "=", name)
    .executeTakeFirst();
  return row?.source;
}

export interface DeployInput extends DeploySettings {
  readonly name: string;
  /** The module, or for runtime js the compiled script. */
  readonly wasm: Uint8Array;
  readonly wasmSha256: string;
  /** (Default: "wasm") */
  readonly runtime?: Runtime;
  /** For runtime js: the file as deployed. */
  readonly source?: string;
  /** Replace an existing function of this name instead of failing with CONFLICT. */
  readonly update?: boolean;
}

export interface DeployResult {
  readonly name: string;
  readonly wasmSha256: string;
  readonly created: boolean;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/**
 * Stores a function. Options not given keep their defaults on create and
 * their current values on update. CONFLICT if it exists and `update` is not set.
 */
export async function upsertFunction(db: Db, input: DeployInput): Promise<DeployResult> {
  const values = {
    wasm: Buffer.from(input.wasm),
    wasm_sha256: input.wasmSha256,
    // Both, always: a redeploy may change the runtime.
    runtime: input.runtime ?? "wasm",
    source: input.source ?? null,
    updated_at: sql<Date>`now()`,
    ...settingColumns(input),
  };
  try {
    const row = await db
      .insertInto("pgfn.functions")
      .values({ name: input.name, ...values })
      .$if(Boolean(input.update), (q) =>
        q.onConflict((oc) => oc.column("name").doUpdateSet(values)),
      )
      .returning([
        "name",
        "wasm_sha256",
        "created_at",
        "updated_at",
        // xmax = 0 only for a freshly inserted row.
        sql<boolean>`(xmax = 0)`.as("created"),
      ])
      .executeTakeFirstOrThrow();
    return {
      name: row.name,
      wasmSha256: row.wasm_sha256,
      created: row.created,
      createdAt: row.created_at,
      updatedAt: row.updated_at,
    };
  } catch (error) {
    if (sqlState(error) === SQLSTATE.UNIQUE_VIOLATION) {
      throw new PgfnError(
        "CONFLICT",
        `Function "${input.name}" already exists. Deploy it as an update to replace it (\`pgfn deploy --update\`, or \`"update": true\` over HTTP).`,
        { cause: error },
      );
    }
    throw refusedSettings(input.name, error) ?? error;
  }
}

/**
 * A check constraint that refused a deploy or PATCH, in the user's terms. The
 * ranges are checked before the database sees them (functionColumns.ts); what
 * is left is the one rule between two settings, where one of them may be the
 * stored value.
 */
function refusedSettings(name: string, error: unknown): PgfnError | undefined {
  if (sqlState(error) !== SQLSTATE.CHECK_VIOLATION) return undefined;
  const constraint = (error as { constraint?: string }).constraint ?? "a check";
  const message =
    constraint === "functions_retry_bounds"
      ? `Function "${name}": retry_max_ms must be at least retry_base_ms, the first retry's delay (flags --retry-max-ms, --retry-base-ms).`
      : `Function "${name}" would violate ${constraint}.`;
  return new PgfnError("INVALID_REQUEST", message, { cause: error });
}

/** Settings that can change without a new module (`PATCH /functions/v1/:name`). */
export type FunctionPatch = PatchSettings;

/** The columns a deploy or a patch sets: only the settings it names. */
function settingColumns(s: FunctionPatch): Updateable<FunctionsTable> {
  const values: Record<string, unknown> = {};
  for (const [column, value] of Object.entries(settingsByColumn(s))) {
    const { sqlType } = columnSpec(column as PatchColumn);
    // jsonb as JSON text: pg would send an array as a Postgres array.
    values[column] =
      sqlType === "jsonb"
        ? JSON.stringify(value)
        : Array.isArray(value)
          ? [...(value as unknown[])]
          : value;
  }
  return values as Updateable<FunctionsTable>;
}

/**
 * A function as `to_jsonb(pgfn.function_info)` carries it (pgfn.begin_run):
 * jsonb has no timestamps, so those come back as strings.
 */
export function functionInfoFromJson(json: Record<string, unknown>): FunctionInfo {
  const fn: Record<string, unknown> = { ...json };
  for (const column of TIMESTAMP_COLUMNS) {
    const value = json[column];
    fn[column] = typeof value === "string" ? new Date(value) : null;
  }
  return fn as FunctionInfo;
}

/** Applies `patch`; undefined when there is no such function. */
export async function updateFunction(
  db: Db,
  name: string,
  patch: FunctionPatch,
): Promise<FunctionInfo | undefined> {
  const values = settingColumns(patch);
  try {
    return await db
      .updateTable("pgfn.functions")
      .set({ ...values, updated_at: sql<Date>`now()` })
      .where("name", "=", name)
      .returning(INFO_COLUMNS)
      .executeTakeFirst();
  } catch (error) {
    throw refusedSettings(name, error) ?? error;
  }
}

/**
 * Deletes a function; its events and runs stay (they are history). Events
 * that arrive for it later fail as FUNCTION_NOT_FOUND. False when there was none.
 */
export async function deleteFunction(db: Db, name: string): Promise<boolean> {
  const result = await db.deleteFrom("pgfn.functions").where("name", "=", name).executeTakeFirst();
  return result.numDeletedRows > 0n;
}
