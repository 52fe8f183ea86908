// pgfn's library for AssemblyScript handlers, over the Extism AssemblyScript
// PDK (README "Writing a handler"). A handler exports `handle(): i32`: read
// the event with `event()`, answer with `output(json)` and return 0, or
// return `fail(message)`.
import { Config, Host, LogLevel, Memory } from "@extism/as-pdk";
import { error_set, length } from "@extism/as-pdk/lib/env";
import { pgfn_db_query, pgfn_http_fetch, pgfn_no_retry, pgfn_retry_after } from "./host";
import { Json, quote } from "./json";

export { Json, JsonKind, quote } from "./json";
// Compiled into every handler that imports this library, so the abort flag
// always finds it.
export { pgfnAbort } from "./host";

/** The event JSON pgfn passed in, as text. */
export function input(): string {
  return Host.inputString();
}

/**
 * The event, parsed: `event().getObject("new")` is the new row, null for a
 * DELETE; `event().get("id")!.toString()` is the event id as written.
 */
export function event(): Json {
  return Json.parse(Host.inputString());
}

/** Sets the handler's JSON result. */
export function output(json: string): void {
  Host.outputString(json);
}

/** Reports a failure with a message; `return fail("...")` from `handle`. */
export function fail(message: string): i32 {
  error_set(Memory.allocateString(message).offset);
  return 1;
}

/** A line in the run's logs (function_runs.logs) and the daemon's log. */
export function logInfo(message: string): void {
  Host.log(LogLevel.Info, message);
}

// pgfn's host functions (declared in host.ts): JSON in, JSON out. The reply
// is {"ok":true,"value":...} or {"ok":false,"error":{"message":...,"transient":...}},
// the error with "code" (the SQLSTATE) when the server refused a db_query statement.

function callJson(reply: u64): string {
  return new Memory(reply, length(reply)).toString();
}

/**
 * Runs one SQL statement as the function's db_role, in its own transaction.
 * `paramsJson` is a JSON array, e.g. '[42, "x"]'. Returns the reply JSON:
 * {"ok":true,"value":{"rows":[...],"rowCount":n,"fields":[...]}} or {"ok":false,"error":{...}}.
 */
export function dbQuery(sql: string, paramsJson: string = "[]"): string {
  const request = '{"sql":' + quote(sql) + ',"params":' + paramsJson + "}";
  return callJson(pgfn_db_query(Memory.allocateString(request).offset));
}

/** Fetches a URL on one of the function's allowed hosts. Returns the reply JSON. */
export function httpFetch(requestJson: string): string {
  return callJson(pgfn_http_fetch(Memory.allocateString(requestJson).offset));
}

/** A value of the function's env (pgfn deploy --env KEY=VALUE), or null. */
export function env(key: string): string | null {
  return Config.get(key);
}

/** True when a host reply says ok. */
export function replyOk(reply: string): bool {
  return reply.startsWith('{"ok":true');
}

/**
 * Fails, asking pgfn to try again (not before `ms`), under the function's
 * retry policy: `return retryLater("Email service down", 0)`.
 */
export function retryLater(message: string, ms: i64 = 0): i32 {
  pgfn_retry_after(ms);
  return fail(message);
}

/** Fails, telling pgfn that trying again cannot help (no retry, straight to dead letters). */
export function failForGood(message: string): i32 {
  pgfn_no_retry();
  return fail(message);
}
