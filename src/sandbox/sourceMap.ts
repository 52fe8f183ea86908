/**
 * Positions in a JavaScript handler's compiled module, as the user's file
 * and lines: a stack trace names `handler.js:4:20` of what esbuild wrote
 * (jsCompile.ts); the user wants `welcome.ts:7:15`.
 *
 * Deploy appends the source map to the compiled module as the standard
 * trailing `//# sourceMappingURL=data:application/json;base64,...` comment,
 * so the stored bytes (and their sha256) carry both and no column was added.
 * Loading splits it off (splitSourceMap): the engine never parses it, and the
 * sandbox threads are never sent it. A run's logs are mapped on the main
 * thread, only when one names a compiled position (mapLogs), and the map is
 * decoded on that first use and kept with the cached module.
 *
 * The decoder is ours: ~100 lines for the one question asked (generated line
 * and column to source file, line and column), where a library (e.g.
 * @jridgewell/trace-mapping) would be a production dependency, and two of its
 * own, to answer it; and QuickJS's columns need converting first either way
 * (SourceMap.units).
 */

/** The name the engine evaluates a compiled module under: its stack traces name it. */
export const JS_MODULE_FILE = "handler.js";

const INLINE_MAP = "\n//# sourceMappingURL=data:application/json;base64,";

/**
 * The compiled module without its trailing inline source map, and the map;
 * no map for a module deployed before maps were kept (its stacks stay as
 * they are).
 */
export function splitSourceMap(text: string): { code: string; sourceMap?: SourceMap } {
  const at = text.lastIndexOf(INLINE_MAP);
  if (at < 0) return { code: text };
  const base64 = text.slice(at + INLINE_MAP.length).trimEnd();
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(base64)) return { code: text };
  // Cut after the newline: the code's lines keep their numbers.
  const code = text.slice(0, at + 1);
  return { code, sourceMap: new SourceMap(base64, code) };
}

/** A compiled position (1-based line and column) as the user's file and position. */
interface Original {
  readonly file: string;
  readonly line: number;
  readonly column: number;
}

/**
 * A version 3 source map, decoded when first asked. Holds the base64 text
 * until then: most modules never fail.
 */
export class SourceMap {
  private decoded?: { sources: string[] } & ReturnType<typeof decodeMappings>;

  /** Whether `code` has characters beyond UTF-16's first plane; then its lines' starts. */
  private astral?: boolean;
  private codeLines?: Int32Array;

  /**
   * @param code the compiled module, to turn QuickJS's columns (counted in
   *   code points) into the map's (UTF-16 units). (Default: none; columns
   *   are taken as they are)
   */
  constructor(
    private readonly base64: string,
    private readonly code = "",
  ) {}

  /**
   * Where the compiled line and column (both 1-based, as QuickJS prints them)
   * came from: the last mapped segment at or before the column. Undefined
   * when nothing on that line is mapped (code esbuild added), or the map
   * cannot be read.
   */
  original(line: number, column: number): Original | undefined {
    const map = this.decode();
    if (!map || line < 1 || line >= map.lineStarts.length) return undefined;
    column = this.units(line, column);
    const { segments } = map;
    // Binary search: a minified bundle is one line of many segments, and a
    // handler may log as many positions as its logs hold.
    let low = map.lineStarts[line - 1]! / 4;
    let high = map.lineStarts[line]! / 4 - 1;
    let found = -1;
    while (low <= high) {
      const mid = (low + high) >>> 1;
      if (segments[mid * 4]! <= column - 1) {
        found = mid * 4;
        low = mid + 1;
      } else high = mid - 1;
    }
    if (found < 0) return undefined;
    const file = map.sources[segments[found + 1]!];
    if (file === undefined) return undefined;
    return { file, line: segments[found + 2]! + 1, column: segments[found + 3]! + 1 };
  }

  /**
   * QuickJS's column in UTF-16 units: they differ by one for each character
   * beyond the first plane (an emoji) earlier on the line.
   */
  private units(line: number, column: number): number {
    const code = this.code;
    this.astral ??= /[\uD800-\uDBFF]/.test(code);
    if (!this.astral) return column;
    if (!this.codeLines) {
      const starts = [0];
      for (let i = code.indexOf("\n"); i >= 0; i = code.indexOf("\n", i + 1)) starts.push(i + 1);
      this.codeLines = Int32Array.from(starts);
    }
    let i = this.codeLines[line - 1];
    if (i === undefined) return column;
    const start = i;
    for (let point = 1; point < column && i < code.length && code.charCodeAt(i) !== 10; point++) {
      const c = code.charCodeAt(i);
      i += c >= 0xd800 && c <= 0xdbff ? 2 : 1;
    }
    return i - start + 1;
  }

  private decode() {
    if (this.decoded) return this.decoded;
    try {
      const json = JSON.parse(Buffer.from(this.base64, "base64").toString("utf8")) as {
        sources?: unknown;
        sourceRoot?: unknown;
        mappings?: unknown;
      };
      if (!Array.isArray(json.sources) || typeof json.mappings !== "string") return undefined;
      const root = typeof json.sourceRoot === "string" ? json.sourceRoot : "";
      this.decoded = {
        sources: json.sources.map((s) => root + String(s)),
        ...decodeMappings(json.mappings),
      };
      return this.decoded;
    } catch {
      return undefined;
    }
  }
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const DIGIT = new Int8Array(128).fill(-1);
for (let i = 0; i < BASE64.length; i++) DIGIT[BASE64.charCodeAt(i)] = i;

/**
 * The `mappings` field: its segments that name a source, 4 numbers each
 * ([column, source, line, column], 0-based, absolute), sorted by generated
 * line and column; generated line `n`'s are `segments[lineStarts[n] ..
 * lineStarts[n + 1])`. The format: lines split by `;`, segments by `,`, each
 * field a base64 VLQ delta from the previous segment's (the generated column
 * restarts at 0 on each line). One pass into typed arrays: the 2 MB mappings
 * of a 3 MB handler decode in 50-130 ms on the loaded 2-core dev machine,
 * once per cached module; a handler of a few KB, well under 1 ms.
 */
export function decodeMappings(mappings: string): {
  segments: Int32Array;
  lineStarts: Int32Array;
} {
  // A segment with 4 fields takes 4 characters at least.
  const segments = new Int32Array(mappings.length + 4);
  let lines = 1;
  for (let i = 0; i < mappings.length; i++) if (mappings.charCodeAt(i) === 59) lines++;
  const lineStarts = new Int32Array(lines + 1);
  let length = 0;
  let line = 0;
  let column = 0;
  let source = 0;
  let sourceLine = 0;
  let sourceColumn = 0;
  let n = 0; // fields read in the current segment
  let value = 0;
  let shift = 0;
  for (let i = 0; i <= mappings.length; i++) {
    const c = i === mappings.length ? 59 : mappings.charCodeAt(i);
    if (c === 44 || c === 59) {
      // "," or ";": the segment ends; kept if it names a source.
      if (n >= 4) {
        segments[length++] = column;
        segments[length++] = source;
        segments[length++] = sourceLine;
        segments[length++] = sourceColumn;
      }
      n = 0;
      if (c === 59) {
        lineStarts[++line] = length;
        column = 0;
      }
      continue;
    }
    const digit = c < 128 ? DIGIT[c]! : -1;
    if (digit < 0) throw new Error(`not a source map: '${mappings[i]}' in its mappings`);
    // 32-bit values, as every source map tool reads them.
    value |= (digit & 31) << shift;
    shift += 5;
    if (digit & 32) continue;
    // The sign is the lowest bit.
    const delta = value & 1 ? -(value >>> 1) : value >>> 1;
    if (n === 0) column += delta;
    else if (n === 1) source += delta;
    else if (n === 2) sourceLine += delta;
    else if (n === 3) sourceColumn += delta;
    n++;
    value = 0;
    shift = 0;
  }
  return { segments: segments.slice(0, length), lineStarts };
}

/** `handler.js:LINE:COLUMN` (or `handler.js:LINE`) as QuickJS writes a frame's position. */
const COMPILED_POSITION = new RegExp(
  `(?<![\\w./-])${JS_MODULE_FILE.replace(".", "\\.")}:(\\d+)(?::(\\d+))?`,
  "g",
);

/** The text with each compiled position the map knows named as the user's file and position. */
export function mapPositions(text: string, map: SourceMap): string {
  return text.replace(COMPILED_POSITION, (whole, line: string, column: string | undefined) => {
    const o = map.original(Number(line), column === undefined ? 1 : Number(column));
    if (!o) return whole;
    return column === undefined ? `${o.file}:${o.line}` : `${o.file}:${o.line}:${o.column}`;
  });
}

/**
 * The user's line and column ("LINE:COLUMN") of the first compiled position
 * in `text` (a stack, innermost frame first) that the map knows.
 */
export function firstOriginalPosition(text: string, map: SourceMap): string | undefined {
  for (const [, line, column] of text.matchAll(COMPILED_POSITION)) {
    const o = map.original(Number(line), column === undefined ? 1 : Number(column));
    if (o) return `${o.line}:${o.column}`;
  }
  return undefined;
}

/**
 * The outcome with its logs' compiled positions mapped (a failed run's
 * stack, or one the handler logged itself), when the module has a map. A run
 * whose logs name no compiled position costs a substring search per line.
 */
export function mapLogs<O extends { readonly logs: readonly { readonly message: string }[] }>(
  // Shapes rather than module.ts's and invocation.ts's types, which import this file.
  module: WebAssembly.Module | { readonly sourceMap?: SourceMap },
  outcome: O,
): O {
  if (module instanceof WebAssembly.Module || !module.sourceMap) return outcome;
  const map = module.sourceMap;
  if (!outcome.logs.some((l) => l.message.includes(JS_MODULE_FILE))) return outcome;
  return {
    ...outcome,
    logs: outcome.logs.map((l) =>
      l.message.includes(JS_MODULE_FILE) ? { ...l, message: mapPositions(l.message, map) } : l,
    ),
  };
}
