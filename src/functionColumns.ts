/**
 * The columns of `pgfn.functions`, once: for each, its SQL type, whether it
 * may be null, its default, its range, what it means and who may set it.
 * Everything else derives from this table: the Kysely row type
 * (db/database.ts), the columns a run reads and the mapping to SQL
 * (db/functions.ts), deploy validation (deploy.ts), the HTTP bodies and the
 * OpenAPI document (http/schemas.ts, http/functions.ts) and the
 * `pgfn deploy` flags and their help (cli.ts). test/catalog.test.ts compares
 * it with the migrated database, so this table and sql/ cannot drift apart.
 *
 * Names are derived, not listed: the SQL column and the HTTP field are
 * `timeout_ms`, the TypeScript key (deployFunction, updateFunction)
 * `timeoutMs`, the CLI flag `--timeout-ms` unless the column names another.
 *
 * Adding a setting: an entry here (at the end: the column order of the
 * table), and a new migration that adds the column with its default and
 * check constraint and lists it in the view `pgfn.function_info`.
 */
import { z } from "zod";
import { unstorableString } from "./db/jsonb.js";
import { ORDERINGS, RUN_STATUSES, RUNTIMES } from "./interfaces.js";
import {
  describeIssue,
  numberMessage,
  rangeWords,
  type Range as ProblemRange,
} from "./problems.js";

/** A function's name; also what `on_error` names. */
export const FUNCTION_NAME = /^[a-z][a-z0-9_-]{0,63}$/;

/** Who sets a column. */
export type SetBy =
  /** A deploy, a PATCH, and a `pgfn deploy` flag. */
  | "deploy"
  /** A PATCH only (a deploy stores the default). */
  | "patch"
  /** SQL only: `update pgfn.functions set ...`. */
  | "sql"
  /** pgfn itself: the name and module of a deploy, run state, timestamps. */
  | "pgfn";

/** Column types, as `information_schema.columns` reports them (`text[]`: ARRAY of text). */
export type SqlType =
  | "text"
  | "integer"
  | "real"
  | "boolean"
  | "jsonb"
  | "text[]"
  | "bytea"
  | "timestamp with time zone";

/** A number column's check constraint: min..max, both inclusive unless said. */
export type Range = ProblemRange;

/** One column of pgfn.functions. */
export interface ColumnSpec {
  readonly sqlType: SqlType;
  /**
   * What a row may hold, as the database returns it (a timestamp is a Date).
   * A GET shows this, so it is no stricter than the column's constraints:
   * a value set in SQL must still be shown.
   */
  readonly type: z.ZodType;
  /** What a deploy or PATCH may set: `type` with the API's limits (ranges, patterns). */
  readonly input: z.ZodType;
  /** The check constraint's range, for numbers. */
  readonly range?: Range;
  /** May be null. A setting that may be null is cleared by a PATCH with null. */
  readonly nullable?: true;
  /** The column default, as a value. */
  readonly default?: unknown;
  /** The column default, as an SQL expression (`now()`), when it is not a constant. */
  readonly defaultSql?: string;
  readonly setBy: SetBy;
  /** What it means, as a lowercase phrase: CLI help, OpenAPI descriptions. */
  readonly description: string;
  /** Shown by GET /functions/v1/:name. (Default: false) */
  readonly shown?: true;
  /** Read only when needed: left out of pgfn.function_info and FunctionInfo (the module bytes). */
  readonly heavy?: true;
  /**
   * `pgfn deploy`'s flag, for a column set by deploy. (Default: the column
   * name in kebab case, `<value>`; repeatable for arrays and objects)
   */
  readonly cli?: { readonly flag: string; readonly value: string };
}

const WHOLE = "must be a whole number";
const NUMBER = "must be a number";

/** "1000..300000", "at least 1": the compact form, for help and descriptions. */
function rangeText(r: Range): string {
  if (r.min !== undefined && r.max !== undefined && !r.minExclusive) return `${r.min}..${r.max}`;
  return rangeWords(r);
}

/** Every way a number can be wrong (not a number, a fraction, out of range) gets one message. */
function ranged(schema: (message: string) => z.ZodNumber, r: Range, whole: boolean): z.ZodNumber {
  const message = numberMessage(r, whole);
  let s = schema(message);
  if (r.min !== undefined) s = r.minExclusive ? s.gt(r.min, message) : s.min(r.min, message);
  if (r.max !== undefined) s = s.max(r.max, message);
  return s;
}

/** An integer column; `range` is its check constraint. */
function integer<const R extends Range>(range: R) {
  return {
    sqlType: "integer",
    type: z.int(WHOLE),
    input: ranged(z.int, range, true),
    range,
  } as const;
}

/** A real column; `range` is its check constraint. */
function real<const R extends Range>(range: R) {
  return {
    sqlType: "real",
    type: z.number(NUMBER),
    input: ranged(z.number, range, false),
    range,
  } as const;
}

/**
 * `schema`, refusing what Postgres cannot store (U+0000, lone surrogates):
 * refused as a bad setting, not failed as the statement that stores it.
 */
function storable(schema: z.ZodString = z.string("must be a string")): z.ZodString {
  return schema.refine((s) => unstorableString(s) === undefined, {
    error: (issue) =>
      `must not contain ${unstorableString(issue.input as string)}, which Postgres cannot store`,
  });
}

/** A text column; `input` adds what the API refuses (the database may not). */
function text(input: z.ZodString = z.string()) {
  return { sqlType: "text", type: z.string(), input: storable(input) } as const;
}

/** A text column with a check constraint listing its values. */
function oneOf<const V extends readonly [string, ...string[]]>(values: V) {
  const e = z.enum(values, { error: `must be one of ${values.join(", ")}` });
  return { sqlType: "text", type: e, input: e } as const;
}

function timestamp() {
  return { sqlType: "timestamp with time zone", type: z.date(), input: z.date() } as const;
}

function pattern(re: RegExp, what: string): z.ZodString {
  return z.string().regex(re, what);
}

const functionName = pattern(
  FUNCTION_NAME,
  `must match ${FUNCTION_NAME.source} (a lowercase letter first, then letters, digits, _ or -)`,
);

/** What `--env KEY=VALUE` sets and `--unset-env KEY` removes. */
const envKey = pattern(
  /^[A-Za-z_][A-Za-z0-9_]*$/,
  "must be an identifier (letters, digits and _, not a digit first)",
);

/**
 * The table, in the column order of pgfn.functions. Defaults, ranges and
 * values are those of sql/000001_schema.sql and sql/000006_admission.sql
 * (test/catalog.test.ts checks them against the database).
 */
export const FUNCTION_COLUMNS = {
  name: {
    ...text(functionName),
    setBy: "pgfn",
    shown: true,
    description: "function name: a lowercase letter, then up to 63 letters, digits, _ or -",
  },
  description: {
    ...text(z.string().max(1000, "must be at most 1000 characters")),
    default: "",
    setBy: "deploy",
    shown: true,
    description: "what the function does",
    cli: { flag: "--description", value: "text" },
  },
  wasm: {
    sqlType: "bytea",
    type: z.instanceof(Buffer),
    input: z.instanceof(Buffer),
    setBy: "pgfn",
    heavy: true,
    description:
      "the module (an Extism plugin exporting `handle`); for runtime js, the handler compiled to one script",
  },
  wasm_sha256: {
    ...text(),
    setBy: "pgfn",
    shown: true,
    description: "sha256 of the module (for runtime js, of the compiled script), hex",
  },
  entrypoint: {
    ...text(
      pattern(
        /^[A-Za-z_$][A-Za-z0-9_$]{0,62}$/,
        "must be an export's name (letters, digits, _ and $, not a digit first)",
      ),
    ),
    default: "handle",
    setBy: "deploy",
    shown: true,
    description:
      "the export called for each event: 'handle' calls a JavaScript handler's default export (else its export handle), any other name the export of that name",
    cli: { flag: "--entrypoint", value: "export" },
  },
  enabled: {
    sqlType: "boolean",
    type: z.boolean(),
    input: z.boolean("must be true or false"),
    default: true,
    setBy: "patch",
    shown: true,
    description: "a disabled function answers 404 and its events fail",
  },
  timeout_ms: {
    ...integer({ min: 1000, max: 300_000 }),
    default: 10_000,
    setBy: "deploy",
    shown: true,
    description: "wall-clock limit per run, in ms",
    cli: { flag: "--timeout-ms", value: "ms" },
  },
  memory_limit_mb: {
    ...integer({ min: 16, max: 512 }),
    default: 128,
    setBy: "deploy",
    shown: true,
    description: "memory limit, in MiB",
    cli: { flag: "--memory-mb", value: "mb" },
  },
  max_concurrency: {
    ...integer({ min: 1, max: 10_000 }),
    default: 100,
    setBy: "deploy",
    shown: true,
    description: "runs at once across all daemons; a synchronous invoke over it gets 429",
    cli: { flag: "--max-concurrency", value: "n" },
  },
  max_attempts: {
    ...integer({ min: 1, max: 100 }),
    default: 3,
    setBy: "deploy",
    shown: true,
    description: "attempts before dead-lettering",
    cli: { flag: "--max-attempts", value: "n" },
  },
  retry_base_ms: {
    ...integer({ min: 0, max: 86_400_000 }),
    default: 1000,
    setBy: "deploy",
    shown: true,
    description: "backoff base: retry n waits up to base * 2^(n-1) ms",
    cli: { flag: "--retry-base-ms", value: "ms" },
  },
  retry_max_ms: {
    ...integer({ min: 0, max: 86_400_000 }),
    default: 300_000,
    setBy: "deploy",
    shown: true,
    description: "backoff cap, in ms, at least retry_base_ms",
    cli: { flag: "--retry-max-ms", value: "ms" },
  },
  env: {
    sqlType: "jsonb",
    type: z.record(z.string(), z.string()),
    // A bad key is worded from the key's own issue (src/problems.ts).
    input: z.record(
      envKey,
      storable(),
      'must be an object of names to strings, e.g. {"API_URL": "https://..."}',
    ),
    default: {},
    setBy: "deploy",
    shown: true,
    description:
      "values the handler reads as ctx.env (JavaScript) or with config_get (WebAssembly); an update merges the keys given into the stored ones; secret-looking ones are never shown",
    cli: { flag: "--env", value: "KEY=VALUE" },
  },
  allowed_hosts: {
    sqlType: "text[]",
    type: z.array(z.string()),
    input: z.array(
      // What http_fetch's allow-list matches (httpFetch.ts, isAllowed).
      pattern(
        /^(?:(?:\*\.)?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/,
        "must be a host name, *.domain or [IPv6 address], optionally with :port",
      ),
      "must be an array of host names",
    ),
    default: [],
    setBy: "deploy",
    shown: true,
    description:
      "hosts ctx.fetch (JavaScript) or http_fetch (WebAssembly) may reach: host (any port), host:port, or *.domain for its subdomains",
    cli: { flag: "--allow-host", value: "host" },
  },
  db_role: {
    ...text(z.string().min(1, "must not be empty").max(63, "must be at most 63 characters")),
    nullable: true,
    setBy: "deploy",
    shown: true,
    description: "the login role db_query connects as (see README, db_query roles)",
    cli: { flag: "--db-role", value: "role" },
  },
  on_error: {
    // No foreign key (000001): deleting the handler must not delete or block
    // the functions naming it. A deploy or PATCH checks it exists (deploy.ts).
    ...text(functionName),
    nullable: true,
    setBy: "deploy",
    shown: true,
    description: "the function that receives terminal failures: a deployed one, or itself",
    cli: { flag: "--on-error", value: "name" },
  },
  ordering: {
    ...oneOf(ORDERINGS),
    default: "none",
    setBy: "sql",
    shown: true,
    description:
      "none, function (one event of the function at a time, in commit order) or row (per row)",
  },
  circuit_error_rate: {
    ...real({ min: 0, minExclusive: true, max: 1 }),
    default: 0.5,
    setBy: "sql",
    description: "the share of failed runs in the window that opens the circuit",
  },
  circuit_min_volume: {
    ...integer({ min: 1 }),
    default: 20,
    setBy: "sql",
    description: "runs in the window before the circuit may open",
  },
  circuit_window_ms: {
    ...integer({ min: 1000, max: 86_400_000 }),
    default: 60_000,
    setBy: "sql",
    description: "the window the error rate is counted over, in ms",
  },
  circuit_cooldown_ms: {
    ...integer({ min: 100, max: 86_400_000 }),
    default: 30_000,
    setBy: "sql",
    description: "how long an open circuit waits before a probe run, in ms",
  },
  last_run_at: {
    ...timestamp(),
    nullable: true,
    setBy: "pgfn",
    shown: true,
    description: "when a run last finished (to within a second)",
  },
  last_status: {
    ...oneOf(RUN_STATUSES),
    nullable: true,
    setBy: "pgfn",
    shown: true,
    description: "the last run's status",
  },
  created_at: {
    ...timestamp(),
    defaultSql: "now()",
    setBy: "pgfn",
    shown: true,
    description: "when it was first deployed",
  },
  updated_at: {
    ...timestamp(),
    defaultSql: "now()",
    setBy: "pgfn",
    shown: true,
    description: "when it was last deployed or changed",
  },
  runtime: {
    ...oneOf(RUNTIMES),
    default: "wasm",
    setBy: "pgfn",
    shown: true,
    description:
      "what runs it: wasm (an Extism module) or js (a .ts/.mts/.js/.mjs handler in the sandbox's JavaScript engine)",
  },
  source: {
    ...text(),
    nullable: true,
    setBy: "pgfn",
    heavy: true,
    description: "a js function's file as deployed, TypeScript included; null for wasm",
  },
} as const satisfies Record<string, ColumnSpec>;

type Columns = typeof FUNCTION_COLUMNS;

/**
 * How an update (a deploy with update, a PATCH) changes env besides the
 * keys it sets. The keys given with env merge into the stored ones, as every
 * setting left out keeps its value; these remove keys. Named like settings:
 * the HTTP field `unset_env`, the TypeScript key `unsetEnv`, the flag
 * `--unset-env`.
 */
export const ENV_CHANGES = {
  unset_env: {
    // Each bad key quoted in the message, as env's are: an HTTP error names
    // an array element by its index only.
    input: z.array(z.string("must be a string")).superRefine((keys, ctx) => {
      for (const key of keys) {
        const problem = envKey.safeParse(key).error?.issues[0]?.message;
        if (problem)
          ctx.addIssue({ code: "custom", message: `key ${JSON.stringify(key)} ${problem}` });
      }
    }),
    description: "env keys to remove",
    cli: { flag: "--unset-env", value: "KEY" },
  },
  replace_env: {
    input: z.boolean("must be true or false"),
    description:
      "replace the whole env with exactly the env given (none: an empty env) instead of merging into it",
    cli: { flag: "--replace-env" },
  },
} as const;

/** unset_env or replace_env. */
export type EnvChangeName = keyof typeof ENV_CHANGES;
export const ENV_CHANGE_NAMES = Object.keys(ENV_CHANGES) as readonly EnvChangeName[];

/** The env changes of an update, by TypeScript name; absent: none. */
export interface EnvChangeSettings {
  /** Keys to remove from the stored env. */
  readonly unsetEnv?: readonly string[];
  /** The env becomes exactly the env given (or empty) instead of the keys merging into it. */
  readonly replaceEnv?: boolean;
}

/** A column of pgfn.functions. */
export type ColumnName = keyof Columns;

/** `timeout_ms` -> `timeoutMs`. */
export type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<CamelCase<Tail>>}`
  : S;

/** A column's TypeScript name: `timeout_ms` -> `timeoutMs`. */
export function camelCase<S extends string>(column: S): CamelCase<S> {
  return column.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase()) as CamelCase<S>;
}

/** A value of the column, not null. */
export type ColumnValue<K extends ColumnName> = z.output<Columns[K]["type"]>;

/** A value of the column as a row holds it. */
export type RowValue<K extends ColumnName> = Columns[K] extends { nullable: true }
  ? ColumnValue<K> | null
  : ColumnValue<K>;

type Readonly1<T> = T extends readonly (infer E)[]
  ? readonly E[]
  : T extends object
    ? Readonly<T>
    : T;

type ColumnsWhere<P> = { [K in ColumnName]: Columns[K] extends P ? K : never }[ColumnName];

/** Settings a deploy may set (and a PATCH may change). */
export type DeployColumn = ColumnsWhere<{ setBy: "deploy" }>;
/** Settings a PATCH may change. */
export type PatchColumn = ColumnsWhere<{ setBy: "deploy" | "patch" }>;
/** What GET /functions/v1/:name shows. */
export type ShownColumn = ColumnsWhere<{ shown: true }>;
/** Columns a run reads: all but the module. */
export type InfoColumn = Exclude<ColumnName, ColumnsWhere<{ heavy: true }>>;
/** Columns of type timestamptz. */
export type TimestampColumn = ColumnsWhere<{ sqlType: "timestamp with time zone" }>;

/** Every column, in table order. */
export const COLUMN_NAMES = Object.keys(FUNCTION_COLUMNS) as readonly ColumnName[];

function columnsWhere<K extends ColumnName>(test: (spec: ColumnSpec) => boolean): readonly K[] {
  return COLUMN_NAMES.filter((c) => test(FUNCTION_COLUMNS[c])) as K[];
}

export const DEPLOY_COLUMNS = columnsWhere<DeployColumn>((c) => c.setBy === "deploy");
export const PATCH_COLUMNS = columnsWhere<PatchColumn>(
  (c) => c.setBy === "deploy" || c.setBy === "patch",
);
export const SHOWN_COLUMNS = columnsWhere<ShownColumn>((c) => c.shown === true);
export const INFO_COLUMNS = columnsWhere<InfoColumn>((c) => c.heavy !== true);
export const TIMESTAMP_COLUMNS = columnsWhere<TimestampColumn>(
  (c) => c.sqlType === "timestamp with time zone",
);

/** The settings of a deploy, by TypeScript name; absent: the default. */
export type DeploySettings = {
  readonly [K in DeployColumn as CamelCase<K>]?: Readonly1<ColumnValue<K>>;
};

/** The settings of a PATCH, by TypeScript name; absent: unchanged, null: cleared. */
export type PatchSettings = {
  readonly [K in PatchColumn as CamelCase<K>]?: Readonly1<RowValue<K>>;
};

/** The column's spec, typed loosely (for code that goes over every column). */
export function columnSpec(column: ColumnName): ColumnSpec {
  return FUNCTION_COLUMNS[column];
}

/** The flag of a setting on `pgfn deploy`, and what its value is called. */
export function cliFlag(column: DeployColumn): { flag: string; value: string } {
  const spec = columnSpec(column);
  return spec.cli ?? { flag: `--${column.replaceAll("_", "-")}`, value: "value" };
}

/** Whether the setting's flag may be given more than once (arrays and objects). */
export function isRepeatable(column: ColumnName): boolean {
  const { sqlType } = columnSpec(column);
  return sqlType === "text[]" || sqlType === "jsonb";
}

/** The default as a user reads it, or undefined for none or an empty one. */
export function defaultText(column: ColumnName): string | undefined {
  const value = columnSpec(column).default;
  if (value === undefined || value === "") return undefined;
  if (typeof value === "object" && Object.keys(value as object).length === 0) return undefined;
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** "1000..300000", "at least 1", or undefined for a column without a range. */
export function rangeTextOf(column: ColumnName): string | undefined {
  const range = columnSpec(column).range;
  if (!range) return undefined;
  return rangeText(range);
}

/** What a deploy or PATCH takes besides the name and module: settings, env changes, update. */
export type InputName = PatchColumn | EnvChangeName | "update";

/** How a surface names its inputs in messages: a flag, an HTTP field, a TypeScript key. */
export type Naming = (name: InputName) => string;

/** deployFunction's names: `timeoutMs`, `unsetEnv`, `update`. */
export const TS_NAMES: Naming = (name) => (name === "update" ? "update: true" : camelCase(name));
/** The HTTP fields: the columns' names, `unset_env`, `"update": true`. */
export const HTTP_NAMES: Naming = (name) => (name === "update" ? '"update": true' : name);
/** `pgfn deploy`'s flags: `--timeout-ms`, `--unset-env`, `--update`. */
export const CLI_NAMES: Naming = (name) => {
  if (name === "update") return "--update";
  if (name in ENV_CHANGES) return ENV_CHANGES[name as EnvChangeName].cli.flag;
  return cliFlag(name as DeployColumn).flag;
};

/** Settings and env changes, by column or field name. */
type ByColumn = Readonly<Partial<Record<PatchColumn | EnvChangeName, unknown>>>;

/** Every setting a PATCH may change, then the env changes. */
const INPUT_NAMES: readonly (PatchColumn | EnvChangeName)[] = [
  ...PATCH_COLUMNS,
  ...ENV_CHANGE_NAMES,
];

function inputOf(name: PatchColumn | EnvChangeName): { input: z.ZodType; nullable?: true } {
  return name in ENV_CHANGES ? ENV_CHANGES[name as EnvChangeName] : columnSpec(name as PatchColumn);
}

/**
 * Each problem with the given settings and env changes, named by `nameOf`
 * (a flag, a field): "--timeout-ms must be a whole number between 1000 and
 * 300000 (got 50)".
 */
export function settingProblems(settings: ByColumn, nameOf: Naming): string[] {
  const problems: string[] = [];
  for (const name of INPUT_NAMES) {
    const value = settings[name];
    if (value === undefined) continue;
    const spec = inputOf(name);
    if (value === null && spec.nullable) continue;
    const result = spec.input.safeParse(value);
    if (result.success) continue;
    // A repeated flag names each value by the flag (its position means
    // nothing to the user); an env value by its key.
    const at = (path: readonly PropertyKey[]) =>
      path.length === 0 || Array.isArray(value)
        ? nameOf(name)
        : `${nameOf(name)} ${String(path[0])}`;
    for (const issue of result.error.issues) problems.push(describeIssue(issue, value, at));
  }
  return problems;
}

/** Settings and env changes by TypeScript name -> by column; only the ones given. */
export function settingsByColumn(
  settings: PatchSettings & EnvChangeSettings,
): Partial<Record<PatchColumn | EnvChangeName, unknown>> {
  const byColumn: Partial<Record<PatchColumn | EnvChangeName, unknown>> = {};
  for (const name of INPUT_NAMES) {
    const value = (settings as Record<string, unknown>)[camelCase(name)];
    if (value !== undefined) byColumn[name] = value;
  }
  return byColumn;
}

/**
 * Settings and env changes by column (HTTP fields) -> by TypeScript name;
 * only the ones given, other keys (a deploy's name, module) left out.
 */
export function settingsByName<T extends ByColumn>(
  byColumn: T,
): { [K in keyof T & (PatchColumn | EnvChangeName) as CamelCase<K>]: T[K] } {
  const settings: Record<string, unknown> = {};
  for (const name of INPUT_NAMES) {
    const value = byColumn[name];
    if (value !== undefined) settings[camelCase(name)] = value;
  }
  return settings as { [K in keyof T & (PatchColumn | EnvChangeName) as CamelCase<K>]: T[K] };
}

/** The runtime of every function until pgfn.functions has a `runtime` column. */
export const DEFAULT_RUNTIME = "wasm";

/**
 * What runs a function: its `runtime` column once pgfn.functions has one
 * (any query selecting INFO_COLUMNS then reads it), else DEFAULT_RUNTIME.
 */
export function runtimeOf(fn: object): string {
  const runtime = (fn as { runtime?: unknown }).runtime;
  return typeof runtime === "string" ? runtime : DEFAULT_RUNTIME;
}
