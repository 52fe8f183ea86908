/**
 * What Postgres cannot store. A JavaScript string may hold U+0000 and lone
 * UTF-16 surrogates; Postgres text refuses the first ("invalid byte
 * sequence"), and jsonb refuses both as JSON escapes ("unsupported Unicode
 * escape sequence", "Unicode low surrogate must follow a high surrogate").
 * Anything a handler or a client sends is checked or cleaned with these
 * before it reaches a statement, so that no such value can fail the statement
 * that records a run.
 */

/** U+0000 anywhere, or a surrogate that is not half of a pair. */
const UNSTORABLE_SOURCE =
  "\\u0000|[\\uD800-\\uDBFF](?![\\uDC00-\\uDFFF])|(?<![\\uD800-\\uDBFF])[\\uDC00-\\uDFFF]";
const UNSTORABLE = new RegExp(UNSTORABLE_SOURCE);
const UNSTORABLE_ALL = new RegExp(UNSTORABLE_SOURCE, "g");

/** U+FFFD, what a decoder writes for what it cannot decode. */
const REPLACEMENT = "\uFFFD";

/**
 * `text` storable in a text or jsonb column: each U+0000 and lone surrogate
 * replaced by U+FFFD. Returns `text` itself when there is nothing to replace.
 *
 * @example
 * storableText("a\u0000b") // "a\uFFFDb"
 */
export function storableText(text: string): string {
  return UNSTORABLE.test(text) ? text.replace(UNSTORABLE_ALL, REPLACEMENT) : text;
}

/**
 * Nesting deeper than this is refused. JSON.stringify overflows its stack
 * at about 5000 levels and Postgres ("stack depth limit exceeded", default
 * max_stack_depth) not far above; no real document comes near either.
 */
export const MAX_JSON_DEPTH = 1000;

/**
 * Why Postgres cannot store `value` (parsed JSON) as jsonb, in words for a
 * message ("\u0000 (a NUL character)", "a lone surrogate (\ud800)", "arrays
 * or objects nested deeper than 1000 levels"), or undefined when it can.
 * Keys count as well as string values. Iterative: a deeply nested value
 * cannot overflow the stack here.
 *
 * @example
 * unstorableJson({ text: "a\u0000b" }) // "\\u0000 (a NUL character)"
 */
export function unstorableJson(value: unknown): string | undefined {
  const stack: { readonly item: unknown; readonly depth: number }[] = [{ item: value, depth: 0 }];
  while (stack.length > 0) {
    const { item, depth } = stack.pop()!;
    if (typeof item === "string") {
      const problem = unstorableString(item);
      if (problem) return problem;
    } else if (item !== null && typeof item === "object") {
      if (depth >= MAX_JSON_DEPTH) {
        return `arrays or objects nested deeper than ${MAX_JSON_DEPTH} levels`;
      }
      if (Array.isArray(item)) {
        for (const element of item) stack.push({ item: element, depth: depth + 1 });
      } else {
        for (const [key, element] of Object.entries(item)) {
          stack.push({ item: key, depth }, { item: element, depth: depth + 1 });
        }
      }
    }
  }
  return undefined;
}

/**
 * Why Postgres cannot store `text`, in words for a message, or undefined
 * when it can.
 *
 * @example
 * unstorableString("a\u0000b") // "\\u0000 (a NUL character)"
 */
export function unstorableString(text: string): string | undefined {
  const found = UNSTORABLE.exec(text)?.[0];
  if (found === undefined) return undefined;
  if (found === "\u0000") return "\\u0000 (a NUL character)";
  return `a lone surrogate (\\u${found.charCodeAt(0).toString(16)})`;
}
