/** The error every host function (db_query, http_fetch) throws. */
import { PgfnError } from "../../errors.js";

/**
 * A failed host call: code `HOST_FUNCTION_ERROR` plus whether retrying the
 * invocation could succeed. The failure model retries only the transient ones
 * (a dropped connection, a deadlock, a timeout), never a permission error or a
 * bad request, which would fail the same way every time.
 *
 * @example
 * throw new HostFunctionError("http_fetch to example.com timed out", true, { cause });
 */
export class HostFunctionError extends PgfnError {
  /** The SQLSTATE of a statement the server refused (db_query), for the handler to act on. */
  readonly sqlState?: string;

  constructor(
    message: string,
    /** Whether the same call could succeed if the invocation is retried. */
    readonly transient: boolean,
    options?: { cause?: unknown; sqlState?: string },
  ) {
    super("HOST_FUNCTION_ERROR", message, options);
    if (options?.sqlState) this.sqlState = options.sqlState;
  }
}
