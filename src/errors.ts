/**
 * One error type for everything a user can be told: a code from the failure
 * model (docs/design.md section 3), the HTTP status it maps to, a full-sentence
 * message and the cause.
 */

/** Error codes of the failure model; also the values of `function_runs.error_code`. */
export type ErrorCode =
  | "FUNCTION_NOT_FOUND"
  | "INVALID_REQUEST"
  | "CONFLICT"
  | "PAYLOAD_TOO_LARGE"
  | "CONCURRENCY_LIMIT"
  | "FUNCTION_ERROR"
  | "HOST_FUNCTION_ERROR"
  | "CIRCUIT_OPEN"
  | "TIMEOUT"
  | "MEMORY_EXCEEDED"
  /** A fault of pgfn or its database, not of the handler or the caller. */
  | "INTERNAL";

/** The one table from code to HTTP status. */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = Object.freeze({
  FUNCTION_NOT_FOUND: 404,
  INVALID_REQUEST: 400,
  CONFLICT: 409,
  PAYLOAD_TOO_LARGE: 413,
  CONCURRENCY_LIMIT: 429,
  FUNCTION_ERROR: 500,
  HOST_FUNCTION_ERROR: 500,
  CIRCUIT_OPEN: 503,
  TIMEOUT: 504,
  MEMORY_EXCEEDED: 507,
  INTERNAL: 500,
});

export class PgfnError extends Error {
  override readonly name = "PgfnError";
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.status = HTTP_STATUS[code];
  }
}

/** Anything caught becomes a PgfnError; unknown faults are INTERNAL. */
export function coerceError(error: unknown): PgfnError {
  if (error instanceof PgfnError) return error;
  if (error instanceof Error) return new PgfnError("INTERNAL", error.message, { cause: error });
  return new PgfnError("INTERNAL", String(error));
}

/** SQLSTATE codes we act on, by name (never match on message text). */
export const SQLSTATE = Object.freeze({
  UNIQUE_VIOLATION: "23505",
  CHECK_VIOLATION: "23514",
  UNDEFINED_TABLE: "42P01",
  INVALID_SCHEMA_NAME: "3F000",
  ADMIN_SHUTDOWN: "57P01",
});

/** The SQLSTATE of a pg error, if it is one. */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}
