/**
 * How deeply a handler's source nests, measured before esbuild sees it.
 * esbuild's parser and its later passes recurse once per level of nesting,
 * in a Go child process without a depth limit of its own: 500,000 levels
 * (1 MiB of `[`, `!`, `a=`, `a=>`, `a?a:`, `.a` or `()`) ran it for 15 to 20
 * seconds and then crashed it past Go's 1 GB stack, failing every compile
 * under way at the time. Real code nests tens of levels; a thousand is
 * refused here in a few milliseconds, naming the line.
 *
 * Approximate by design: a lexer without a grammar (strings, comments,
 * templates and regular expressions skipped; a `/` is a regular expression
 * where an operand is expected). What it counts, per bracket level:
 * - each open bracket, template `${`, call or index `(`/`[` after an operand;
 * - a run of prefix operators (`!`, `-`, `typeof`, `new`, `await`...), which
 *   an operand ends;
 * - operators that nest to the right (assignments, `=>`, `? :`, `**`), and
 *   suffixes (`.a`, `(...)`, `[...]`) chained on one operand: a `,`, a `;`
 *   or a new line that starts a statement (automatic semicolon insertion)
 *   ends the count, as any binary operator ends a chain of suffixes.
 * Everything a miscount could add up is ended by the next line or bracket,
 * so only code that truly nests deeply reaches the limit.
 */

/** The deepest nesting a handler's source may have. */
export const MAX_NESTING = 1000;

/** One bracket level: what it opened and what is counted inside it. */
interface Level {
  readonly template: boolean;
  right: number;
  suffix: number;
}

const PUNCTUATORS = [
  ">>>=",
  "...",
  "===",
  "!==",
  "**=",
  "<<=",
  ">>=",
  ">>>",
  "&&=",
  "||=",
  "??=",
  "=>",
  "==",
  "!=",
  "<=",
  ">=",
  "&&",
  "||",
  "??",
  "?.",
  "++",
  "--",
  "+=",
  "-=",
  "*=",
  "/=",
  "%=",
  "&=",
  "|=",
  "^=",
  "**",
  "<<",
  ">>",
];
const RIGHT_NESTING = new Set([
  "=",
  "+=",
  "-=",
  "*=",
  "/=",
  "%=",
  "&=",
  "|=",
  "^=",
  "**=",
  "<<=",
  ">>=",
  ">>>=",
  "&&=",
  "||=",
  "??=",
  "=>",
  "?",
  "**",
]);
const PREFIX = new Set(["!", "~", "+", "-", "++", "--", "..."]);
const PREFIX_WORDS = new Set(["typeof", "void", "delete", "await", "new", "yield"]);
/** Words a `(` after is not a call: `if (`, `function f(`. */
const STATEMENT_WORDS = new Set(["if", "for", "while", "switch", "catch", "with"]);
/** Words after which an operand is expected (so a `/` starts a regular expression). */
const OPERATOR_WORDS = new Set([
  "return",
  "throw",
  "case",
  "do",
  "else",
  "in",
  "of",
  "instanceof",
  "extends",
  "export",
  "default",
  ...PREFIX_WORDS,
]);

/** Where the source first nests deeper than `max`: its 1-based line and column. */
export function deepestNesting(
  source: string,
  max = MAX_NESTING,
): { line: number; column: number } | undefined {
  const stack: Level[] = [{ template: false, right: 0, suffix: 0 }];
  // Σ over the stack of (1 + right + suffix), less the file's own level, plus `prefix`.
  let total = 0;
  let prefix = 0;
  let line = 1;
  let lineStart = 0;
  let operandEnded = false;
  let afterDot = false;
  // After `function` or `class`: the next word is a name, not an operand.
  let declaring = false;
  // The last token closed a block or a literal.
  let braceClosed = false;
  let i = 0;
  const n = source.length;
  const top = () => stack[stack.length - 1]!;
  const newline = (at: number) => {
    line += 1;
    lineStart = at + 1;
  };
  const endChains = () => {
    const l = top();
    total -= l.right + l.suffix;
    l.right = 0;
    l.suffix = 0;
  };
  const endSuffix = () => {
    const l = top();
    total -= l.suffix;
    l.suffix = 0;
  };
  const operand = () => {
    total -= prefix;
    prefix = 0;
    operandEnded = true;
  };
  /** From inside a template (after its `` ` `` or a `}`) to its end or its next `${`. */
  const template = () => {
    while (i < n) {
      const c = source[i]!;
      if (c === "\\") i += 2;
      else if (c === "`") {
        i += 1;
        operand();
        return;
      } else if (c === "$" && source[i + 1] === "{") {
        i += 2;
        stack.push({ template: true, right: 0, suffix: 0 });
        total += 1;
        operandEnded = false;
        return;
      } else {
        if (c === "\n") newline(i);
        i += 1;
      }
    }
  };
  const over = () => total > max;
  while (i < n) {
    const c = source[i]!;
    const start = i;
    if (c === "\n") {
      newline(i);
      i += 1;
      // A new line after an operand, before the next operand: a statement ends (ASI).
      while (i < n && /[ \t\r\n]/.test(source[i]!)) {
        if (source[i] === "\n") newline(i);
        i += 1;
      }
      if ((operandEnded || braceClosed) && i < n && /[\w$"'\u0080-\uffff]/.test(source[i]!)) {
        endChains();
        operandEnded = false;
      }
      continue;
    }
    if (c === " " || c === "\t" || c === "\r") {
      i += 1;
      continue;
    }
    braceClosed = false;
    if (c === "/" && source[i + 1] === "/") {
      while (i < n && source[i] !== "\n") i += 1;
      continue;
    }
    if (c === "/" && source[i + 1] === "*") {
      const end = source.indexOf("*/", i + 2);
      const stop = end < 0 ? n : end + 2;
      for (let j = i; j < stop; j++) if (source[j] === "\n") newline(j);
      i = stop;
      continue;
    }
    if (c === '"' || c === "'") {
      i += 1;
      while (i < n && source[i] !== c && source[i] !== "\n") i += source[i] === "\\" ? 2 : 1;
      i += 1;
      if (operandEnded) endSuffix();
      operand();
      afterDot = false;
      continue;
    }
    if (c === "`") {
      // After an operand, a tagged template: a suffix.
      if (operandEnded) {
        top().suffix += 1;
        total += 1;
      }
      i += 1;
      template();
      afterDot = false;
      if (over()) return { line, column: start - lineStart + 1 };
      continue;
    }
    if (c === "/" && !operandEnded) {
      i += 1;
      let inClass = false;
      while (i < n && source[i] !== "\n") {
        const r = source[i]!;
        if (r === "\\") i += 1;
        else if (r === "[") inClass = true;
        else if (r === "]") inClass = false;
        else if (r === "/" && !inClass) break;
        i += 1;
      }
      i += 1;
      while (i < n && /[\w$]/.test(source[i]!)) i += 1;
      operand();
      continue;
    }
    if (/[\w$\\\u0080-\uffff]/.test(c)) {
      while (i < n && /[\w$\\\u0080-\uffff]/.test(source[i]!)) i += 1;
      // A number's fraction or exponent sign: `1.5`, `1e-3`.
      if (/\d/.test(c)) {
        while (i < n && /[\w.]/.test(source[i]!)) {
          i += 1;
          if (/[eE]/.test(source[i - 1]!) && /[+-]/.test(source[i] ?? "")) i += 1;
        }
      }
      const word = source.slice(start, i);
      if (declaring) {
        declaring = false;
        operandEnded = false;
      } else if (!afterDot && (word === "function" || word === "class")) {
        endSuffix();
        declaring = word === "class" || source[i] !== "(";
        operandEnded = false;
      } else if (!afterDot && STATEMENT_WORDS.has(word)) {
        endSuffix();
        operandEnded = false;
      } else if (!afterDot && PREFIX_WORDS.has(word)) {
        prefix += 1;
        total += 1;
        operandEnded = false;
      } else if (!afterDot && OPERATOR_WORDS.has(word)) {
        endSuffix();
        operandEnded = false;
      } else operand();
      afterDot = false;
      if (over()) return { line, column: start - lineStart + 1 };
      continue;
    }
    afterDot = false;
    const p = PUNCTUATORS.find((q) => source.startsWith(q, i)) ?? c;
    i += p.length;
    if (p === "(" || p === "[" || p === "{") {
      if (operandEnded && p !== "{") {
        top().suffix += 1;
        total += 1;
      } else if (p !== "{") endSuffix();
      stack.push({ template: false, right: 0, suffix: 0 });
      total += 1;
      operandEnded = false;
    } else if (p === ")" || p === "]" || p === "}") {
      if (stack.length > 1) {
        const l = stack.pop()!;
        total -= 1 + l.right + l.suffix + prefix;
        prefix = 0;
        if (l.template && p === "}") {
          template();
          continue;
        }
      }
      operandEnded = p !== "}";
      if (p === "}") {
        // A chain of suffixes has at most one literal `{...}` at its level: a method, a block or a function before.
        endSuffix();
        braceClosed = true;
      }
    } else if (p === "." || p === "?.") {
      if (operandEnded) {
        top().suffix += 1;
        total += 1;
      }
      afterDot = true;
      operandEnded = false;
    } else if (p === "," || p === ";") {
      endChains();
      operandEnded = false;
    } else if (RIGHT_NESTING.has(p)) {
      endSuffix();
      top().right += 1;
      total += 1;
      operandEnded = false;
    } else if (!operandEnded && PREFIX.has(p)) {
      prefix += 1;
      total += 1;
    } else if ((p === "++" || p === "--") && operandEnded) {
      // A postfix update: the operand goes on.
    } else {
      endSuffix();
      operandEnded = false;
    }
    if (over()) return { line, column: start - lineStart + 1 };
  }
  return undefined;
}
