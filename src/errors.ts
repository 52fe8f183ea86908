/**
 * One error type for everything a user can be told: a code from the failure
 * model (docs/design.md section 3), a full-sentence message and the cause.
 * Which HTTP status a code answers with is the HTTP layer's business
 * (`HTTP_STATUS` in http/errors.ts).
 */

/** Codes a run can end with; also the values of `function_runs.error_code` (its check constraint). */
export type RunErrorCode =
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

/**
 * Codes only an HTTP request is refused with: no or a wrong token, an invoke
 * token on a manage route, an unknown route. No run ever ends with one.
 */
export type RequestErrorCode = "UNAUTHORIZED" | "FORBIDDEN" | "NOT_FOUND";

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
