/**
 * The HTTP face of errors, and the only place a code becomes an HTTP status:
 * every error response is `{ error, message, code }` (docs/design.md section
 * 5) with the status of the failure model. `error` is the short user-facing
 * phrase of the failure spec, `code` the machine-readable code, `message` a
 * full sentence saying what to do.
 */
import { z } from "zod";
import { PgfnError, type ErrorCode } from "../errors.js";
import { fieldName, problemsOf } from "../problems.js";

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
  UNSUPPORTED_MEDIA_TYPE: 415,
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
  UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
});

export interface ErrorBody {
  readonly error: string;
  readonly message: string;
  readonly code: ErrorCode;
}

export function errorBody(code: ErrorCode, message: string): ErrorBody {
  return { error: TITLES[code], message, code };
}

/** The request a fastify error is about: its route and what the client said its body was. */
export interface RequestLine {
  readonly method: string;
  readonly url: string;
  readonly contentType: string | undefined;
}

/** Fastify's own errors (body parsing, limits) in the failure model's terms. */
export function fromFastifyError(
  error: { code?: string; statusCode?: number; message: string },
  request: RequestLine,
): PgfnError | undefined {
  if (error.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return new PgfnError(
      "PAYLOAD_TOO_LARGE",
      "The request body is over this route's limit (deploy: a 10 MiB module as base64; invoke: 1 MiB of JSON).",
    );
  }
  if (error.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
    const route = `${request.method} ${request.url.split("?")[0]}`;
    const given =
      request.contentType === undefined
        ? "the request names no content-type"
        : `its content-type is ${JSON.stringify(request.contentType)}`;
    // curl -d sends application/x-www-form-urlencoded unless told otherwise.
    return new PgfnError(
      "UNSUPPORTED_MEDIA_TYPE",
      `${route} takes a JSON body, but ${given}. Send it with "content-type: application/json" (curl: -H 'content-type: application/json').`,
    );
  }
  if (error.code === "FST_ERR_CTP_INVALID_JSON_BODY") {
    return new PgfnError("INVALID_REQUEST", "The body is not valid JSON.");
  }
  if (error.code === "FST_ERR_CTP_EMPTY_JSON_BODY") {
    return new PgfnError(
      "INVALID_REQUEST",
      "The body is empty, but its content-type says JSON: send a JSON body.",
    );
  }
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    return new PgfnError("INVALID_REQUEST", `Invalid request: ${error.message}.`);
  }
  return undefined;
}

/**
 * A request part (body, query string) that failed its schema, as a 400
 * naming each field as the caller sent it: "timeout_ms must be a whole
 * number between 1000 and 300000 (got 50); unknown field \"foo\" (the
 * fields are name, wasm, ...)".
 */
export function invalidInput(
  part: string | undefined,
  schema: z.ZodType,
  error: z.ZodError,
  data: unknown,
): PgfnError {
  if (part === "body" && (data === undefined || data === null)) {
    return new PgfnError(
      "INVALID_REQUEST",
      'The request has no body: send a JSON object with "content-type: application/json".',
    );
  }
  const problems = problemsOf(error, data, fieldName);
  const unknownField = error.issues.some((i) => i.code === "unrecognized_keys");
  if (unknownField && schema instanceof z.ZodObject) {
    problems.push(`the fields are ${Object.keys(schema.shape).join(", ")}`);
  }
  const text = problems.join("; ");
  const where = part === "querystring" ? "In the query string: " : "";
  return new PgfnError(
    "INVALID_REQUEST",
    `${where}${where ? text : text.replace(/^the /, "The ")}.`,
  );
}
