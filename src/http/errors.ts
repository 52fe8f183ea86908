/**
 * The HTTP face of errors: every error response is `{ error, message, code }`
 * (docs/design.md section 5) with the status of the failure model. `error` is the
 * short user-facing phrase of the failure spec, `code` the machine-readable
 * code, `message` a full sentence saying what to do.
 */
import { HTTP_STATUS, PgfnError, type ErrorCode } from "../errors.js";

/** The failure model's codes, plus the ones only HTTP has (authentication, routing). */
export type ApiErrorCode = ErrorCode | "UNAUTHORIZED" | "FORBIDDEN" | "NOT_FOUND";

const API_ONLY_STATUS = { UNAUTHORIZED: 401, FORBIDDEN: 403, NOT_FOUND: 404 } as const;

/** The failure spec's user-facing messages, one per code. */
const TITLES: Readonly<Record<ApiErrorCode, string>> = Object.freeze({
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
  readonly code: ApiErrorCode;
}

/** An error only the HTTP layer raises (authentication, unknown routes). */
export class ApiError extends Error {
  override readonly name = "ApiError";
  readonly code: ApiErrorCode;
  readonly status: number;

  constructor(code: keyof typeof API_ONLY_STATUS, message: string) {
    super(message);
    this.code = code;
    this.status = API_ONLY_STATUS[code];
  }
}

export function statusOf(code: ApiErrorCode): number {
  return code in API_ONLY_STATUS
    ? API_ONLY_STATUS[code as keyof typeof API_ONLY_STATUS]
    : HTTP_STATUS[code as ErrorCode];
}

export function errorBody(code: ApiErrorCode, message: string): ErrorBody {
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
