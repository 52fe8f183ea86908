/**
 * One error type for everything a user can be told: a code from the failure
 * model (docs/design.md section 3), a full-sentence message and the cause.
 * Which HTTP status a code answers with is the HTTP layer's business
 * (`HTTP_STATUS` in http/errors.ts).
 */

/**
 * Codes a run can end with; also the values of `function_runs.error_code`
 * (its check constraint; test/catalog.test.ts compares the two). INTERNAL is
 * a fault of pgfn or its database, not of the handler or the caller.
 */
export const RUN_ERROR_CODES = Object.freeze([
  "FUNCTION_NOT_FOUND",
  "INVALID_REQUEST",
  "CONFLICT",
  "PAYLOAD_TOO_LARGE",
  "CONCURRENCY_LIMIT",
  "FUNCTION_ERROR",
  "HOST_FUNCTION_ERROR",
  "CIRCUIT_OPEN",
  "TIMEOUT",
  "MEMORY_EXCEEDED",
  "INTERNAL",
] as const);

/** One of RUN_ERROR_CODES. */
export type RunErrorCode = (typeof RUN_ERROR_CODES)[number];

/**
 * Codes only an HTTP request is refused with: no or a wrong token, an invoke
 * token on a manage route, an unknown route, a body that is not JSON
 * (another content-type, or none). No run ever ends with one.
 */
export type RequestErrorCode =
  "UNAUTHORIZED" | "FORBIDDEN" | "NOT_FOUND" | "UNSUPPORTED_MEDIA_TYPE";

/** Every code of the failure model. */
export type ErrorCode = RunErrorCode | RequestErrorCode;

export class PgfnError extends Error {
  override readonly name = "PgfnError";
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Anything caught becomes a PgfnError; unknown faults are INTERNAL. */
export function coerceError(error: unknown): PgfnError {
  if (error instanceof PgfnError) return error;
  if (error instanceof Error) return new PgfnError("INTERNAL", error.message, { cause: error });
  return new PgfnError("INTERNAL", String(error));
}

/**
 * SQLSTATE codes we act on, by their names in Appendix A of the Postgres
 * manual (never match on message text). The one table: a new one goes here.
 */
export const SQLSTATE = Object.freeze({
  UNIQUE_VIOLATION: "23505",
  CHECK_VIOLATION: "23514",
  /** What pgfn's SQL API raises for a bad argument: a cron, a time zone. */
  INVALID_PARAMETER_VALUE: "22023",
  /** What pgfn's SQL API raises for what is not there: a function, a run. */
  NO_DATA_FOUND: "P0002",
  /** No such role, NOLOGIN, no pg_hba entry. */
  INVALID_AUTHORIZATION_SPECIFICATION: "28000",
  INVALID_PASSWORD: "28P01",
  SERIALIZATION_FAILURE: "40001",
  DEADLOCK_DETECTED: "40P01",
  UNDEFINED_TABLE: "42P01",
  DUPLICATE_SCHEMA: "42P06",
  DUPLICATE_TABLE: "42P07",
  DUPLICATE_OBJECT: "42710",
  /** pgfn.retry / pgfn.replay of an event that was run again already (sql/000016). */
  OBJECT_NOT_IN_PREREQUISITE_STATE: "55000",
  INVALID_SCHEMA_NAME: "3F000",
  /** The database in the URL does not exist. */
  INVALID_CATALOG_NAME: "3D000",
  /** Also what statement_timeout ends a statement with. */
  QUERY_CANCELED: "57014",
  ADMIN_SHUTDOWN: "57P01",
  CRASH_SHUTDOWN: "57P02",
  /** Starting up, or in recovery. */
  CANNOT_CONNECT_NOW: "57P03",
});

/** SQLSTATE classes (the first two characters) we act on as a whole. */
export const SQLSTATE_CLASS = Object.freeze({
  CONNECTION_EXCEPTION: "08",
  /** Too many connections, disk full, out of memory. */
  INSUFFICIENT_RESOURCES: "53",
});

/**
 * The `code` of an error, whatever set it: a SQLSTATE from pg, an errno
 * code such as ECONNREFUSED from Node.
 */
export function errorCodeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * The SQLSTATE of a Postgres error, if it is one: five digits or capitals,
 * and not a Node system error (those name their `syscall`; EPIPE has five
 * capitals too).
 */
export function sqlState(error: unknown): string | undefined {
  const code = errorCodeOf(error);
  const system = typeof (error as { syscall?: unknown } | null)?.syscall === "string";
  return code !== undefined && !system && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}
