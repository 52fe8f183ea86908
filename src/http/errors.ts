/**
 * The HTTP face of errors, and the only place a code becomes an HTTP status:
 * every error response is `{ error, message, code }` (docs/design.md section
 * 5) with the status of the failure model. `error` is the short user-facing
 * phrase of the failure spec, `code` the machine-readable code, `message` a
 * full sentence saying what to do.
 */
import { PgfnError, type ErrorCode } from "../errors.js";

/**
 * The one table from code to HTTP status (docs/design.md section 3). Runs
 * record theirs too (`function_runs.http_status`), for `POST invoke`.
 */
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
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
});

/** The failure spec's user-facing messages, one per code. */
const TITLES: Readonly<Record<ErrorCode, string>> = Object.freeze({
  FUNCTION_NOT_FOUND: "Function not found",
  INVALID_REQUEST: "Invalid request",
  CONFLICT: "Function already exists",
  PAYLOAD_TOO_LARGE: "Payload too large",
  CONCURRENCY_LIMIT: "Too many concurrent invocations",
  FUNCTION_ERROR: "Function error",
  HOST_FUNCTION_ERROR: "Host function error",
  CIRCUIT_OPEN: "Circuit open",
  TIMEOUT: "Function timeout",
  MEMORY_EXCEEDED: "Memory exceeded",
  INTERNAL: "Internal error",
  UNAUTHORIZED: "Unauthorized",
  FORBIDDEN: "Forbidden",
  NOT_FOUND: "Not found",
});

export interface ErrorBody {
  readonly error: string;
  readonly message: string;
  readonly code: ErrorCode;
}

export function errorBody(code: ErrorCode, message: string): ErrorBody {
  return { error: TITLES[code], message, code };
}

/** Fastify's own errors (body parsing, limits, validation) in the failure model's terms. */
export function fromFastifyError(error: {
  code?: string;
  statusCode?: number;
  message: string;
}): PgfnError | undefined {
  if (error.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return new PgfnError(
      "PAYLOAD_TOO_LARGE",
      "The request body is over this route's limit (deploy: a 10 MiB module as base64; invoke: 1 MiB of JSON).",
    );
  }
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    return new PgfnError("INVALID_REQUEST", `Invalid request: ${error.message}.`);
  }
  return undefined;
}
