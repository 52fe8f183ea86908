/**
 * The functions API's bodies, as zod schemas: fastify validates requests and
 * serializes responses with them, and /functions/v1/openapi.json is generated
 * from them, so the document cannot drift from what the server does.
 * Field names are the SQL columns' (snake_case): what `select * from
 * pgfn.functions` shows is what the API takes and returns (a deploy answers
 * with the module's `hash`, its wasm_sha256).
 */
import { z } from "zod";
import { FUNCTION_NAME } from "../deploy.js";

const functionName = z
  .string()
  .regex(FUNCTION_NAME, "must match ^[a-z][a-z0-9_-]{0,63}$")
  .describe("Function name: a lowercase letter, then up to 63 letters, digits, _ or -.");
const timestamp = z.iso.datetime().describe("ISO 8601, UTC.");

/** Settings a deploy may set and a PATCH may change; absent means "keep" (or the default). */
const settings = {
  description: z.string().max(1000).optional(),
  timeout_ms: z.int().min(1000).max(300_000).optional().describe("(Default: 10000)"),
  memory_limit_mb: z.int().min(16).max(512).optional().describe("(Default: 128)"),
  max_concurrency: z
    .int()
    .min(1)
    .max(10_000)
    .optional()
    .describe(
      "Runs at once across all daemons; a synchronous invoke over it gets 429. (Default: 100)",
    ),
  max_attempts: z.int().min(1).max(100).optional().describe("(Default: 3)"),
  retry_base_ms: z.int().min(0).max(86_400_000).optional().describe("(Default: 1000)"),
  retry_max_ms: z.int().min(0).max(86_400_000).optional().describe("(Default: 300000)"),
  env: z
    .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string())
    .optional()
    .describe(
      "Values the handler reads with config_get; secret-looking keys are never shown back.",
    ),
  allowed_hosts: z
    .array(z.string().regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$/))
    .optional()
    .describe("Hosts http_fetch may reach."),
};

export const DeployBody = z
  .strictObject({
    name: functionName,
    wasm: z
      .base64()
      .describe(
        "The module (an Extism plugin exporting `handle`), base64; at most 10 MiB decoded.",
      ),
    ...settings,
    db_role: z.string().min(1).max(63).optional(),
    on_error: functionName.optional(),
    update: z
      .boolean()
      .optional()
      .describe("Replace an existing function of this name instead of failing with 409."),
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
  .strictObject({
    ...settings,
    enabled: z
      .boolean()
      .optional()
      .describe("A disabled function answers 404 and its events fail."),
    db_role: z.string().min(1).max(63).nullable().optional().describe("null clears it."),
    on_error: functionName.nullable().optional().describe("null clears it."),
  })
  .meta({ id: "PatchRequest" });

export const FunctionView = z
  .object({
    name: z.string(),
    description: z.string(),
    wasm_sha256: z.string(),
    enabled: z.boolean(),
    timeout_ms: z.int(),
    memory_limit_mb: z.int(),
    max_concurrency: z.int(),
    max_attempts: z.int(),
    retry_base_ms: z.int(),
    retry_max_ms: z.int(),
    env: z.record(z.string(), z.string()).describe('Secret-looking keys show "[redacted]".'),
    allowed_hosts: z.array(z.string()),
    db_role: z.string().nullable(),
    on_error: z.string().nullable(),
    ordering: z.enum(["none", "function", "row"]),
    last_run_at: timestamp.nullable(),
    last_status: z.enum(["running", "succeeded", "failed", "abandoned"]).nullable(),
    created_at: timestamp,
    updated_at: timestamp,
  })
  .meta({ id: "Function" });

export const DeleteResponse = z
  .object({ name: z.string(), deleted: z.literal(true) })
  .meta({ id: "DeleteResponse" });

export const RunView = z
  .object({
    id: z.int(),
    event_id: z.int(),
    function_name: z.string(),
    wasm_sha256: z.string().nullable().describe("The module this attempt ran."),
    attempt: z.int(),
    status: z.enum(["running", "succeeded", "failed", "abandoned"]),
    error_code: z.string().nullable(),
    http_status: z.int().nullable(),
    error_message: z.string().nullable(),
    result: z.json().nullable(),
    logs: z.json(),
    duration_ms: z.number().nullable(),
    memory_peak_bytes: z.number().nullable(),
    started_at: timestamp,
    finished_at: timestamp.nullable(),
    will_retry: z.boolean(),
    next_attempt_at: timestamp.nullable(),
    worker_id: z.string().nullable(),
  })
  .meta({ id: "Run" });

export const RunsQuery = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(50).describe("(Default: 50)"),
  before: z.coerce
    .number()
    .int()
    .positive()
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
