// A small helper over the Extism AssemblyScript PDK for pgfn handlers.
// Handlers export `handle(): i32`: read the event with `input()`, answer with
// `output(json)` and return 0, or return `fail(message)`.
import { Config, Host, LogLevel, Memory } from "@extism/as-pdk";
import { error_set, length } from "@extism/as-pdk/lib/env";
import { pgfn_db_query, pgfn_http_fetch, pgfn_no_retry, pgfn_retry_after } from "./host";

/** The event JSON pgfn passed in. */
export function input(): string {
  return Host.inputString();
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

export function logInfo(message: string): void {
  Host.log(LogLevel.Info, message);
}

/**
 * Used as AssemblyScript's `abort` (see build.js: --use abort=...): a thrown
 * error or failed assertion becomes the run's error message instead of a
 * bare trap.
 */
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

/**
 * The string value of `"key": "..."` at or after `from`, or null. Enough for
 * the examples, which must not pull in a JSON library; real handlers would
 * use one (json-as) or another PDK.
 */
export function stringField(json: string, key: string, from: i32 = 0): string | null {
  const at = json.indexOf('"' + key + '"', from);
  if (at < 0) return null;
  let i = json.indexOf(":", at) + 1;
  while (i < json.length && json.charCodeAt(i) == 32) i++;
  if (i >= json.length || json.charAt(i) != '"') return null;
  let out = "";
  for (let j = i + 1; j < json.length; j++) {
    const c = json.charAt(j);
    if (c == "\\") {
      j++;
      out += json.charAt(j);
    } else if (c == '"') {
      return out;
    } else {
      out += c;
    }
  }
  return null;
}

/** The raw (unquoted) value of `"key": 123` at or after `from`, or null. */
export function numberField(json: string, key: string, from: i32 = 0): string | null {
  const at = json.indexOf('"' + key + '"', from);
  if (at < 0) return null;
  let i = json.indexOf(":", at) + 1;
  while (i < json.length && json.charCodeAt(i) == 32) i++;
  let j = i;
  while (j < json.length && "-0123456789.eE+".indexOf(json.charAt(j)) >= 0) j++;
  return j > i ? json.substring(i, j) : null;
}

/** The string with JSON escaping, quotes included. */
export function quote(s: string): string {
  return '"' + s.replaceAll("\\", "\\\\").replaceAll('"', '\\"') + '"';
}

// pgfn's host functions (declared in host.ts): JSON in, JSON out. The reply
// is {"ok":true,"value":...} or {"ok":false,"error":{"message":...,"transient":...}}.

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
