// What prettier cannot parse (AssemblyScript's decorators), kept apart:
// pgfn's host functions as the handler imports them (Extism's user
// namespace), and the `abort` a handler is built with.
import { Host, LogLevel, Memory } from "@extism/as-pdk";
import { error_set } from "@extism/as-pdk/lib/env";

@external("extism:host/user", "pgfn_db_query")
export declare function pgfn_db_query(offset: u64): u64;

@external("extism:host/user", "pgfn_http_fetch")
export declare function pgfn_http_fetch(offset: u64): u64;

@external("extism:host/user", "pgfn_retry_after")
export declare function pgfn_retry_after(ms: i64): void;

@external("extism:host/user", "pgfn_no_retry")
export declare function pgfn_no_retry(): void;

/**
 * AssemblyScript's `abort` for handlers, built with `--use abort=pgfnAbort`:
 * the default imports env.abort, which Extism does not provide. A thrown
 * error or failed assertion becomes the run's error message instead of a bare
 * trap. Global, so the flag names it the same from any project layout.
 */
@global
export function pgfnAbort(
  message: string | null,
  fileName: string | null,
  line: u32,
  column: u32,
): void {
  const text =
    (message !== null ? message : "abort") +
    (fileName !== null ? " at " + fileName + ":" + line.toString() + ":" + column.toString() : "");
  // A trap discards what error_set said; pgfn reports the last error-level
  // log line with the trap, so log it too.
  Host.log(LogLevel.Error, text);
  error_set(Memory.allocateString(text).offset);
  unreachable();
}
