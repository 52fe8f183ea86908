/**
 * What a validation problem says to the user: the name they typed (an HTTP
 * field, a `pgfn deploy` flag, an environment variable), what it must be, and
 * what they gave. zod's own words ("Invalid key in record", "expected number,
 * received NaN") and our internal names never reach them.
 *
 * Our schemas' own messages follow the name, lowercase ("must be a whole
 * number between 1000 and 300000"); zod's defaults start with a capital
 * ("Invalid input: ...") and are worded here from the issue instead.
 */
import type { z } from "zod";

/** A number's allowed range, both ends inclusive unless said. */
export interface Range {
  readonly min?: number;
  /** `> min` rather than `>= min`. (Default: false) */
  readonly minExclusive?: boolean;
  readonly max?: number;
}

/** "between 1000 and 300000", "at least 1", "over 0 and at most 1". */
export function rangeWords(r: Range): string {
  const low = r.min === undefined ? undefined : `${r.minExclusive ? "over" : "at least"} ${r.min}`;
  if (r.max === undefined) return low ?? "any";
  if (low === undefined) return `at most ${r.max}`;
  return r.minExclusive ? `${low} and at most ${r.max}` : `between ${r.min} and ${r.max}`;
}

/** "must be a whole number between 0 and 65535": one message for every way a number can be wrong. */
export function numberMessage(r: Range, whole: boolean): string {
  const kind = whole ? "a whole number" : "a number";
  const range = rangeWords(r);
  if (range === "any") return `must be ${kind}`;
  return r.max === undefined ? `must be ${kind}, ${range}` : `must be ${kind} ${range}`;
}

/** A string this long or longer is described by its length, not quoted. */
const QUOTE_UP_TO = 40;

/** A value as the message quotes it: 50, "abc", null, a string of 900 characters, an array. */
export function shown(value: unknown): string {
  if (typeof value === "string") {
    return value.length <= QUOTE_UP_TO ? JSON.stringify(value) : `${value.length} characters`;
  }
  if (Array.isArray(value)) return "an array";
  if (value !== null && typeof value === "object") return "an object";
  return String(value);
}

/** What a value must be, for zod's `expected` types. */
const EXPECTED: Readonly<Record<string, string>> = {
  number: "a number",
  int: "a whole number",
  string: "a string",
  boolean: "true or false",
  object: "an object",
  record: "an object",
  array: "an array",
};

/** How a surface names the value at a path, e.g. `env.API_KEY`, `--env API_KEY`. */
export type Namer = (path: readonly PropertyKey[]) => string;

export interface DescribeOptions {
  /** Quote what was given: not for secrets (tokens, URLs with passwords). (Default: true) */
  readonly showValue?: boolean;
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let value = root;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

/**
 * Our own messages follow the name ("must be ...", "key \"1A\" must be
 * ..."), and start lowercase; zod's defaults start with a capital ("Invalid
 * input: ...").
 */
function isOurs(message: string): boolean {
  return /^[a-z]/.test(message);
}

/** zod's default for an issue, as a predicate: "must be at least 5". */
function predicate(issue: z.core.$ZodIssue): string | undefined {
  switch (issue.code) {
    case "invalid_type":
      return `must be ${EXPECTED[issue.expected] ?? issue.expected}`;
    case "too_small":
    case "too_big": {
      const small = issue.code === "too_small";
      const limit = Number(small ? issue.minimum : issue.maximum);
      const bound = small
        ? `${issue.inclusive === false ? "over" : "at least"} ${limit}`
        : `${issue.inclusive === false ? "under" : "at most"} ${limit}`;
      if (issue.origin === "string") return `must be ${bound} characters long`;
      if (issue.origin === "array" || issue.origin === "set") return `must have ${bound} items`;
      return `must be ${bound}`;
    }
    case "invalid_format":
      if (issue.format === "regex") return `must match ${issue.pattern ?? "the pattern"}`;
      return `must be ${issue.format === "base64" ? "base64" : `a valid ${issue.format}`}`;
    case "invalid_value":
      return issue.values.length === 1
        ? `must be ${JSON.stringify(issue.values[0])}`
        : `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "not_multiple_of":
      return `must be a multiple of ${String(issue.divisor)}`;
    default:
      return undefined;
  }
}

/**
 * One issue in the user's terms: "timeout_ms must be a whole number between
 * 1000 and 300000 (got 50)", "env key \"bad key\" must be an identifier ...",
 * "name is required", "unknown field \"foo\"". `root` is what was validated,
 * `name` names a path in it as the user knows it.
 */
export function describeIssue(
  issue: z.core.$ZodIssue,
  root: unknown,
  name: Namer,
  options: DescribeOptions = {},
): string {
  const { path } = issue;
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.map((k) => JSON.stringify(k)).join(", ");
    const where = path.length > 0 ? ` in ${name(path)}` : "";
    return `unknown field${issue.keys.length > 1 ? "s" : ""} ${keys}${where}`;
  }
  if (issue.code === "invalid_key") {
    // The path ends with the key itself; the problem is the key's, not its value's.
    const key = path[path.length - 1];
    const inner = issue.issues[0];
    const what = inner && isOurs(inner.message) ? inner.message : "is not allowed";
    return `${name(path.slice(0, -1))} key ${JSON.stringify(String(key))} ${what}`;
  }
  const value = valueAt(root, path);
  if (issue.code === "invalid_type" && value === undefined) return `${name(path)} is required`;
  const what = isOurs(issue.message) ? issue.message : predicate(issue);
  if (what === undefined) return `${name(path)}: ${issue.message}`;
  // A refinement of our own words its message from the value already.
  const quote = options.showValue !== false && issue.code !== "custom";
  const got = quote ? ` (got ${shown(value)})` : "";
  return `${name(path)} ${what}${got}`;
}

/** Every issue of a failed parse, in the user's terms. */
export function problemsOf(
  error: z.ZodError,
  root: unknown,
  name: Namer,
  options?: DescribeOptions,
): string[] {
  return error.issues.map((issue) => describeIssue(issue, root, name, options));
}

/**
 * A path as a JSON field: `timeout_ms`, `env.API_KEY`, `env["bad key"]`,
 * `allowed_hosts[0]`.
 */
export function fieldName(path: readonly PropertyKey[]): string {
  let text = "";
  for (const key of path) {
    if (typeof key === "number") text += `[${key}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(String(key)))
      text += `${text ? "." : ""}${String(key)}`;
    else text += `[${JSON.stringify(String(key))}]`;
  }
  return text || "the body";
}
