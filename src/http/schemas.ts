/**
 * The functions API's bodies, as zod schemas: fastify validates requests and
 * serializes responses with them, and /functions/v1/openapi.json is generated
 * from them, so the document cannot drift from what the server does.
 * Field names are the SQL columns' (snake_case): what `select * from
 * pgfn.functions` shows is what the API takes and returns (a deploy answers
 * with the module's `hash`, its wasm_sha256). The settings' fields, ranges,
 * defaults and descriptions come from their definition, src/functionColumns.ts.
 */
import { JAVASCRIPT_EXTENSIONS, JAVASCRIPT_FILE } from "../sandbox/jsCompile.js";
import { z } from "zod";
import {
  columnSpec,
  DEPLOY_COLUMNS,
  defaultText,
  ENV_CHANGES,
  FUNCTION_COLUMNS,
  PATCH_COLUMNS,
  rangeTextOf,
  SHOWN_COLUMNS,
  type ColumnName,
  type DeployColumn,
  type PatchColumn,
  type ShownColumn,
} from "../functionColumns.js";
import { RECENT_RUNS } from "../db/functions.js";
import { CATCH_UPS, RUN_STATUSES } from "../interfaces.js";
import { numberMessage } from "../problems.js";

type Columns = typeof FUNCTION_COLUMNS;

const functionName = FUNCTION_COLUMNS.name.input.describe(
  "Function name: a lowercase letter, then up to 63 letters, digits, _ or -.",
);
const timestamp = z.iso.datetime().describe("ISO 8601, UTC.");

/** "Wall-clock limit per run, in ms; 1000..300000. (Default: 10000)" */
function describeColumn(column: ColumnName, extra = ""): string {
  const range = rangeTextOf(column);
  const byDefault = defaultText(column);
  const text = columnSpec(column).description;
  return `${text[0]!.toUpperCase()}${text.slice(1)}${range ? `; ${range}` : ""}.${extra}${byDefault === undefined ? "" : ` (Default: ${byDefault})`}`;
}

/** An env change's description, as a field's: on a deploy it needs update: true. */
function sentence({ description: text }: { description: string }): string {
  return `${text[0]!.toUpperCase()}${text.slice(1)}; on a deploy, with update: true.`;
}

/** Settings a deploy may set; absent means the default. */
const deploySettings = Object.fromEntries(
  DEPLOY_COLUMNS.map((c) => [c, FUNCTION_COLUMNS[c].input.optional().describe(describeColumn(c))]),
) as { [K in DeployColumn]: z.ZodOptional<Columns[K]["input"]> };

/** Settings a PATCH may change; absent means "keep", null clears one that may be null. */
const patchSettings = Object.fromEntries(
  PATCH_COLUMNS.map((c) => {
    const spec = columnSpec(c);
    const schema = spec.nullable ? spec.input.nullable() : spec.input;
    return [
      c,
      schema.optional().describe(describeColumn(c, spec.nullable ? " null clears it." : "")),
    ];
  }),
) as {
  [K in PatchColumn]: z.ZodOptional<
    Columns[K] extends { nullable: true } ? z.ZodNullable<Columns[K]["input"]> : Columns[K]["input"]
  >;
};

/** How an update changes env besides the keys it sets: unset_env, replace_env. */
const envChanges = {
  unset_env: ENV_CHANGES.unset_env.input.optional().describe(sentence(ENV_CHANGES.unset_env)),
  replace_env: ENV_CHANGES.replace_env.input.optional().describe(sentence(ENV_CHANGES.replace_env)),
};

/** A column as GET shows it: timestamps as ISO strings. */
type Shown<K extends ShownColumn> = Columns[K] extends { sqlType: "timestamp with time zone" }
  ? Columns[K] extends { nullable: true }
    ? z.ZodNullable<typeof timestamp>
    : typeof timestamp
  : Columns[K] extends { nullable: true }
    ? z.ZodNullable<Columns[K]["type"]>
    : Columns[K]["type"];

const shownColumns = Object.fromEntries(
  SHOWN_COLUMNS.map((c) => {
    const spec = columnSpec(c);
    const type = spec.sqlType === "timestamp with time zone" ? timestamp : spec.type;
    return [c, (spec.nullable ? type.nullable() : type).describe(describeColumn(c))];
  }),
) as { [K in ShownColumn]: Shown<K> };

export const DeployBody = z
  .strictObject({
    name: functionName,
    wasm: z
      .base64()
      .optional()
      .describe(
        "The module (an Extism plugin exporting `handle`), base64; at most 10 MiB decoded. Give this or source.",
      ),
    source: z
      .string()
      .optional()
      .describe(
        "A TypeScript or JavaScript handler, as text: its default export (or `handle`) is (event, ctx) => result; at most 1 MiB. Give this or wasm.",
      ),
    file_name: z
      .string()
      .regex(JAVASCRIPT_FILE, `must end with ${JAVASCRIPT_EXTENSIONS.join(", ")}`)
      .optional()
      .describe(
        "The source's file name: its ending says TypeScript (.ts, .mts) or JavaScript (.js, .mjs), and errors name it. (Default: handler.ts)",
      ),
    ...deploySettings,
    ...envChanges,
    update: z
      .boolean()
      .optional()
      .describe(
        "Replace an existing function of this name instead of failing with 409; settings left out keep their values, env merges.",
      ),
  })
  .meta({ id: "DeployRequest" });

export const DeployResponse = z
  .object({
    name: z.string(),
    hash: z.string().describe("sha256 of the module, hex."),
    created: z.boolean().describe("false when an existing function was replaced (update)."),
    created_at: timestamp,
    updated_at: timestamp,
  })
  .meta({ id: "DeployResponse" });

export const PatchBody = z
  .strictObject({ ...patchSettings, ...envChanges })
  .meta({ id: "PatchRequest" });

export const FunctionView = z
  .object({
    ...shownColumns,
    env: shownColumns.env.describe('Secret-looking keys show "[redacted]".'),
    source: columnSpec("source")
      .type.nullable()
      .optional()
      .describe(describeColumn("source", " Shown by GET, not by PATCH.")),
  })
  .meta({ id: "Function" });

export const FunctionListItem = FunctionView.extend({
  runtime: z
    .string()
    .describe(
      'What runs the function: "wasm" (an Extism plugin) or "js" (a TypeScript or JavaScript handler).',
    ),
  schedule: z
    .object({
      cron: z.string(),
      timezone: z.string(),
      catch_up: z.enum(CATCH_UPS),
      next_run: timestamp.nullable().describe("The next slot; null until a daemon computed it."),
      last_run: timestamp.nullable().describe("The last slot fired."),
      error: z
        .string()
        .nullable()
        .describe("Why the scheduler cannot use it (it does not fire); null when it can."),
    })
    .nullable()
    .describe("Its schedule (pgfn.schedule), or null."),
  recent_runs: z
    .object({
      finished: z.int().describe(`Finished runs counted: the latest ${RECENT_RUNS}, or fewer.`),
      failed: z.int().describe("Of those, failed or abandoned."),
      error_rate: z
        .number()
        .nullable()
        .describe("failed / finished, to 4 decimal places; null without finished runs."),
    })
    .describe(`The function's latest ${RECENT_RUNS} finished runs (attempts).`),
}).meta({ id: "FunctionSummary" });

export const FunctionList = z
  .object({ functions: z.array(FunctionListItem).describe("By name.") })
  .meta({ id: "FunctionList" });

export const DeleteResponse = z
  .object({
    name: z.string(),
    deleted: z.literal(true),
    schedule: z
      .object({ cron: z.string(), timezone: z.string() })
      .nullable()
      .describe(
        "The schedule the function still has, or null: it stays, and each slot fails as FUNCTION_NOT_FOUND until pgfn.unschedule removes it (or the function is deployed again).",
      ),
    error_handler_of: z
      .array(z.string())
      .describe(
        "The functions whose on_error it was: their failures reach no error handler (its events fail as FUNCTION_NOT_FOUND) until it is deployed again or their on_error changes.",
      ),
  })
  .meta({ id: "DeleteResponse" });

export const RunView = z
  .object({
    id: z.int(),
    event_id: z.int(),
    function_name: z.string(),
    wasm_sha256: z.string().nullable().describe("The module this attempt ran."),
    attempt: z.int(),
    status: z.enum(RUN_STATUSES),
    error_code: z.string().nullable(),
    http_status: z.int().nullable(),
    error_message: z.string().nullable(),
    result: z.json().nullable(),
    logs: z.json(),
    duration_ms: z.number().nullable().describe("The handler's time, in ms, to 0.01 ms."),
    memory_peak_bytes: z.number().nullable(),
    started_at: timestamp,
    finished_at: timestamp.nullable(),
    will_retry: z.boolean(),
    next_attempt_at: timestamp.nullable(),
    worker_id: z.string().nullable(),
  })
  .meta({ id: "Run" });

/** Runs per page, at most. */
const RUNS_PAGE = { min: 1, max: 1000 } as const;
const RUNS_PAGE_MESSAGE = numberMessage(RUNS_PAGE, true);
const RUN_ID_MESSAGE = "must be a run id (a whole number over 0)";

export const RunsQuery = z.object({
  limit: z.coerce
    .number(RUNS_PAGE_MESSAGE)
    .int(RUNS_PAGE_MESSAGE)
    .min(RUNS_PAGE.min, RUNS_PAGE_MESSAGE)
    .max(RUNS_PAGE.max, RUNS_PAGE_MESSAGE)
    .default(50)
    .describe("(Default: 50)"),
  before: z.coerce
    .number(RUN_ID_MESSAGE)
    .int(RUN_ID_MESSAGE)
    .positive(RUN_ID_MESSAGE)
    .optional()
    .describe("Only runs with a smaller id: pass the previous page's next_before."),
});

export const RunsResponse = z
  .object({
    runs: z.array(RunView).describe("Newest first."),
    next_before: z.int().nullable().describe("The cursor for the next page; null on the last one."),
  })
  .meta({ id: "RunsPage" });

export const NameParams = z.object({ name: z.string() });

export const ErrorResponse = z
  .object({
    error: z.string().describe('The short user-facing message, e.g. "Function timeout".'),
    message: z.string().describe("What went wrong and what to do, as a sentence."),
    code: z
      .string()
      .describe("FUNCTION_NOT_FOUND, INVALID_REQUEST, TIMEOUT, ... (the README's Failure model)."),
    run_id: z.int().optional().describe("Invoke only: the recorded run that failed."),
  })
  .meta({ id: "Error" });

/** The error responses a route can give, for the OpenAPI document. */
export function errors(...statuses: number[]): Record<number, typeof ErrorResponse> {
  return Object.fromEntries(statuses.map((s) => [s, ErrorResponse]));
}
