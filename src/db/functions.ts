/** Queries on `pgfn.functions`. */
import { sql, type RawBuilder, type Selectable, type Updateable } from "kysely";
import type { Db, FunctionsTable, SchedulesTable } from "./database.js";
import { PgfnError, SQLSTATE, sqlState } from "../errors.js";
import type { Runtime } from "../interfaces.js";
import {
  camelCase,
  columnSpec,
  INFO_COLUMNS,
  PATCH_COLUMNS,
  TIMESTAMP_COLUMNS,
  type DeploySettings,
  type EnvChangeSettings,
  type InfoColumn,
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

export interface DeployInput extends DeploySettings, EnvChangeSettings {
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

/** What a deploy or PATCH did to env, by key; never the values (they may be secrets). */
export interface EnvOutcome {
  /** Keys given, in the order given. */
  readonly set: readonly string[];
  /** Keys stored before and still there, not given. */
  readonly kept: readonly string[];
  /** Keys stored before and gone now. */
  readonly removed: readonly string[];
  /** Keys asked to be removed that were not there. */
  readonly absent: readonly string[];
}

export interface DeployResult {
  readonly name: string;
  readonly wasmSha256: string;
  readonly created: boolean;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly env: EnvOutcome;
  /**
   * Hosts an update's allowed_hosts left out that were allowed before: a
   * list given replaces the stored one, which a user adding one host may
   * not expect, so the CLI names them.
   */
  readonly allowedHostsRemoved: readonly string[];
}

type Env = Record<string, string>;

/**
 * Stores a function. Options not given keep their defaults on create and
 * their current values on update; on update env given merges into the
 * stored env unless `replaceEnv`, and `unsetEnv` removes keys. CONFLICT if
 * it exists and `update` is not set.
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
  const { env: _given, ...withoutEnv } = values;
  try {
    return await db.transaction().execute(async (trx) => {
      // Read only to say what happened; the row lock makes that exact, the
      // merge itself is SQL (envUpdate), as atomic as any other update.
      const before = input.update ? await lockedBefore(trx, input.name) : undefined;
      const row = await trx
        .insertInto("pgfn.functions")
        .values({ name: input.name, ...values })
        .$if(Boolean(input.update), (q) =>
          q.onConflict((oc) =>
            oc.column("name").doUpdateSet({ ...withoutEnv, ...envUpdate(input) }),
          ),
        )
        .returning([
          "name",
          "wasm_sha256",
          "created_at",
          "updated_at",
          "env",
          "allowed_hosts",
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
        env: envOutcome(before?.env, row.env, input),
        allowedHostsRemoved: (before?.allowed_hosts ?? []).filter(
          (h) => !row.allowed_hosts.includes(h),
        ),
      };
    });
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
export type FunctionPatch = PatchSettings & EnvChangeSettings;

/** The columns a deploy or a patch sets: only the settings it names, env as given. */
function settingColumns(s: FunctionPatch): Updateable<FunctionsTable> {
  const values: Record<string, unknown> = {};
  for (const column of PATCH_COLUMNS) {
    const value = (s as Record<string, unknown>)[camelCase(column)];
    if (value === undefined) continue;
    const { sqlType } = columnSpec(column);
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
 * env of an update, computed by Postgres from the stored row: the keys
 * given merge in (`||`) after `unsetEnv` is removed (`-`), or replace it all.
 * In one statement, so that two updates at once each keep the other's keys.
 */
function envUpdate(s: FunctionPatch): { env?: RawBuilder<string> } {
  // Typed as the column is written (JSON text; see settingColumns).
  const given = JSON.stringify(s.env ?? {});
  if (s.replaceEnv) return { env: sql<string>`${given}::jsonb` };
  if (s.env === undefined && !s.unsetEnv?.length) return {};
  // Qualified: in an upsert, a bare env could also be the proposed row's (excluded.env).
  const stored = sql.ref("functions.env");
  return { env: sql<string>`(${stored} - ${[...(s.unsetEnv ?? [])]}::text[]) || ${given}::jsonb` };
}

/** The stored env, its row locked until the transaction ends; undefined when there is no row. */
async function lockedBefore(
  trx: Db,
  name: string,
): Promise<{ env: Env; allowed_hosts: string[] } | undefined> {
  return trx
    .selectFrom("pgfn.functions")
    .select(["env", "allowed_hosts"])
    .where("name", "=", name)
    .forUpdate()
    .executeTakeFirst();
}

function envOutcome(before: Env | undefined, after: Env, change: FunctionPatch): EnvOutcome {
  const given = Object.keys(change.env ?? {});
  const old = Object.keys(before ?? {});
  const now = Object.keys(after);
  return {
    set: given,
    kept: now.filter((k) => !given.includes(k)).sort(),
    removed: old.filter((k) => !now.includes(k)).sort(),
    absent: (change.unsetEnv ?? []).filter((k) => !old.includes(k)),
  };
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
  return (await changeFunction(db, name, patch))?.fn;
}

/**
 * Applies `patch` (env given merges in, as in a deploy with update) and
 * says what happened to env; undefined when there is no such function.
 */
export async function changeFunction(
  db: Db,
  name: string,
  patch: FunctionPatch,
): Promise<{ fn: FunctionInfo; env: EnvOutcome } | undefined> {
  const { env: _given, ...values } = settingColumns(patch);
  try {
    return await db.transaction().execute(async (trx) => {
      const before = (await lockedBefore(trx, name))?.env;
      if (before === undefined) return undefined;
      const fn = await trx
        .updateTable("pgfn.functions")
        .set({ ...values, ...envUpdate(patch), updated_at: sql<Date>`now()` })
        .where("name", "=", name)
        .returning(INFO_COLUMNS)
        .executeTakeFirstOrThrow();
      return { fn, env: envOutcome(before, fn.env, patch) };
    });
  } catch (error) {
    throw refusedSettings(name, error) ?? error;
  }
}

/**
 * Deletes a function; its events and runs stay (they are history). Events
 * that arrive for it later fail as FUNCTION_NOT_FOUND. Undefined when there
 * was none; else what still names it, for the caller to say: its schedule,
 * which has no foreign key (sql/000007_schedules.sql), so each slot fails
 * that way until pgfn.unschedule removes it; and the functions whose
 * on_error it was, whose failures then reach no error handler.
 */
export async function deleteFunction(
  db: Db,
  name: string,
): Promise<
  { schedule: { cron: string; timezone: string } | null; errorHandlerOf: string[] } | undefined
> {
  const result = await db.deleteFrom("pgfn.functions").where("name", "=", name).executeTakeFirst();
  if (result.numDeletedRows === 0n) return undefined;
  const schedule = await db
    .selectFrom("pgfn.schedules")
    .select(["cron", "timezone"])
    .where("function_name", "=", name)
    .executeTakeFirst();
  const handled = await db
    .selectFrom("pgfn.functions")
    .select("name")
    .where("on_error", "=", name)
    .orderBy("name")
    .execute();
  return { schedule: schedule ?? null, errorHandlerOf: handled.map((f) => f.name) };
}

/**
 * How many of a function's latest finished runs (attempts) its error rate is
 * counted over, in `pgfn functions` and GET /functions/v1. A count, not a
 * time window: the index on (function_name, id desc) reads exactly these
 * rows, however busy the function, and a function idle for a week still
 * shows how its last runs went. (100)
 */
export const RECENT_RUNS = 100;

/** A function's latest finished runs: how many there are (up to RECENT_RUNS) and how many failed. */
export interface RecentRuns {
  /** Succeeded, failed or abandoned, at most RECENT_RUNS. */
  readonly finished: number;
  /** Failed or abandoned. */
  readonly failed: number;
}

/** A function with what `pgfn functions` and GET /functions/v1 show beside its settings. */
export interface FunctionSummary {
  readonly fn: FunctionInfo;
  readonly schedule: Selectable<SchedulesTable> | undefined;
  readonly recent: RecentRuns;
}

/** Every function, by name, with its schedule and how its recent runs went. */
export async function listFunctions(db: Db): Promise<FunctionSummary[]> {
  const [functions, schedules, recent] = await Promise.all([
    db.selectFrom("pgfn.functions").select(INFO_COLUMNS).orderBy("name").execute(),
    db.selectFrom("pgfn.schedules").selectAll().execute(),
    sql<{ name: string; finished: number; failed: number }>`
      select f.name, r.finished, r.failed
      from pgfn.functions f
      cross join lateral (
        select count(*)::int as finished,
               count(*) filter (where last.status in ('failed', 'abandoned'))::int as failed
        from (
          select status from pgfn.function_runs
          where function_name = f.name and status <> 'running'
          order by id desc
          limit ${RECENT_RUNS}
        ) last
      ) r`.execute(db),
  ]);
  const scheduleOf = new Map(schedules.map((s) => [s.function_name, s]));
  const recentOf = new Map(recent.rows.map((r) => [r.name, r]));
  return functions.map((fn) => ({
    fn,
    schedule: scheduleOf.get(fn.name),
    recent: {
      finished: recentOf.get(fn.name)?.finished ?? 0,
      failed: recentOf.get(fn.name)?.failed ?? 0,
    },
  }));
}
