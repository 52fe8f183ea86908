/**
 * A TypeScript or JavaScript handler, from the file a user deploys to the
 * module the sandbox's JavaScript engine runs (jsEngine.ts): types stripped,
 * imports flattened into one ES module. Everything that can be wrong with the file is
 * found here, at deploy, and named by its line: never at run time.
 *
 * esbuild does the work: a well-kept transpiler, fast enough to run on every
 * deploy (a few ms), and its TypeScript support elides imports used only as
 * types, so `import type { Handler } from "pgfn"` costs nothing at run time.
 */
import { build, stop, type BuildFailure, type Message, type Plugin } from "esbuild";
import { deepestNesting, MAX_NESTING } from "./jsNesting.js";
import { DEFAULT_ENTRY } from "./module.js";

/** File endings deployed as a JavaScript handler; any other file is a WebAssembly module. */
export const JAVASCRIPT_EXTENSIONS = [".ts", ".mts", ".js", ".mjs"] as const;

/** A file name that deploys as a JavaScript handler. */
export const JAVASCRIPT_FILE = /\.(ts|mts|js|mjs)$/i;

/** The one module a handler may import from: it has types and no values. */
export const PGFN_MODULE = "pgfn";

/** Whether a file name ends like a JavaScript handler. */
export function isJavaScriptFile(name: string): boolean {
  return JAVASCRIPT_FILE.test(name);
}

/** What the sandbox's engine understands; QuickJS has ES2023, with margin. */
const TARGET = "es2020";

/** What every refusal of an import ends with: what the user can do instead. */
const IMPORT_ADVICE = `a handler may import only types (\`import type\`), from "${PGFN_MODULE}" or anywhere else; bundle its dependencies into this one file first`;

/**
 * esbuild's words for a value imported from "pgfn", whose module here is
 * empty (`export {}`): the package exports values for Node (`run`), which
 * type-check, but nothing of them is in the sandbox.
 */
const PGFN_VALUE_IMPORT = /^No matching export in "pgfn:pgfn" for import "(.*)"$/;

/** Imports resolved at deploy: only "pgfn", which exports types and nothing else. */
const onlyPgfn: Plugin = {
  name: "pgfn-imports",
  setup(b) {
    b.onResolve({ filter: /.*/ }, (args) => {
      if (args.kind === "entry-point") return undefined;
      if (args.path === PGFN_MODULE) return { path: PGFN_MODULE, namespace: "pgfn" };
      return { errors: [{ text: `imports "${args.path}": ${IMPORT_ADVICE}` }] };
    });
    b.onLoad({ filter: /.*/, namespace: "pgfn" }, () => ({ contents: "export {};", loader: "js" }));
    // The handler comes from stdin and "pgfn" from the line above: any file
    // esbuild would read is the server's (a glob import, see
    // refuseComputedImports), never the user's. Not reached while that
    // check runs first; kept so a file's contents can never be bundled.
    b.onLoad({ filter: /.*/, namespace: "file" }, (args) => ({
      errors: [{ text: `imports the server's file ${args.path}: ${IMPORT_ADVICE}` }],
    }));
  },
};

/**
 * esbuild's own diagnosis of a load whose name is computed at run time
 * (import(x), a template such as import(`./${y}`), require("./" + y)).
 * It leaves such calls in its output, where QuickJS can only fail them
 * ("could not load module"), so they are made errors, in the user's terms.
 * Not esbuild's "indirect-require": `typeof require` in a bundled UMD
 * wrapper is one, and there it rightly finds no require (a ReferenceError
 * at worst, at run time, for `const r = require`).
 */
const COMPUTED_IMPORTS: Readonly<Record<string, string>> = {
  "unsupported-dynamic-import": `import() of a name computed at run time cannot load anything in the sandbox: ${IMPORT_ADVICE}`,
  "unsupported-require-call": `require() cannot load anything in the sandbox (there is no require there): ${IMPORT_ADVICE}`,
};

/** Those diagnoses as errors (esbuild logs them only at its debug level). */
const COMPUTED_IMPORTS_ARE_ERRORS = Object.fromEntries(
  Object.keys(COMPUTED_IMPORTS).map((id) => [id, "error" as const]),
);

/**
 * Compiles a handler's source to the script the sandbox runs, its source
 * map appended as an inline `//# sourceMappingURL=` comment. Throws an
 * Error naming the file, line and column of each problem (a syntax error, a
 * value import, no handler exported).
 *
 * @param fileName decides the loader (`.ts`/`.mts`: TypeScript) and names
 *   the file in messages and stack traces.
 * @example
 * const code = await compileJavaScript(await readFile("welcome.ts", "utf8"), "welcome.ts");
 */
export async function compileJavaScript(
  source: string,
  fileName: string,
  /** The export a run calls: "handle" (the default export, else handle) or another name. */
  entry = DEFAULT_ENTRY,
): Promise<string> {
  compiling++;
  try {
    return await compile(source, fileName, entry);
  } finally {
    // esbuild's service is a child process: deploys are rare, so it is not
    // kept running between them (a daemon or a CLI would hold it for ever).
    if (--compiling === 0) await stop();
  }
}

/** Compilations under way: the service stops when the last one ends. */
let compiling = 0;

async function compile(source: string, fileName: string, entry: string): Promise<string> {
  const deep = deepestNesting(source);
  if (deep) {
    throw new Error(
      `${fileName}:${deep.line}:${deep.column}: nests more than ${MAX_NESTING} levels deep (brackets, calls, or operators inside one another): split the expression up`,
    );
  }
  const typescript = /\.m?ts$/i.test(fileName);
  const stdin = {
    contents: source,
    loader: typescript ? "ts" : "js",
    sourcefile: fileName,
  } as const;
  await refuseComputedImports(stdin);
  refuseSourceMapFiles(source, fileName);
  let result;
  try {
    // An ES module rather than a script that assigns a global: QuickJS
    // evaluates it without the helpers esbuild adds to convert exports,
    // which cost a third of an echo call (jsEngine.ts).
    result = await build({
      stdin,
      bundle: true,
      write: false,
      format: "esm",
      platform: "neutral",
      target: TARGET,
      // QuickJS evaluates a module's top-level await (the module's promise
      // settles before the handler is called), which esbuild cannot lower.
      supported: { "top-level-await": true },
      metafile: true,
      plugins: [onlyPgfn],
      logLevel: "silent",
      charset: "utf8",
      legalComments: "none",
      // Appended to the module as its trailing comment: stack traces are
      // mapped back to the user's file and lines (sourceMap.ts). The source
      // itself is not copied in: pgfn.functions.source keeps it.
      sourcemap: "inline",
      sourcesContent: false,
    });
  } catch (error) {
    const messages = (error as Partial<BuildFailure>).errors;
    if (!messages) throw error;
    throw new Error(messages.map(describe).join("; "), { cause: error });
  }
  const exports = Object.values(result.metafile.outputs)[0]?.exports ?? [];
  if (entry !== DEFAULT_ENTRY && !exports.includes(entry)) {
    throw new Error(
      `${fileName} does not export ${entry}, the function's entrypoint (pgfn.functions.entrypoint): export it, or set entrypoint to 'handle'`,
    );
  }
  if (entry === DEFAULT_ENTRY && !exports.includes("default") && !exports.includes("handle")) {
    throw new Error(
      `${fileName} exports no handler: \`export default\` a function (event, ctx) => result, or export one named \`handle\` (a bundle: build it as an ES module, esbuild's --format=esm)`,
    );
  }
  return result.outputFiles[0]!.text;
}

/**
 * Throws, naming the line, for a `sourceMappingURL` that is not inline
 * (data:). With source maps on, esbuild reads the one a file names, and a
 * file: URL is a path on the daemon's host: its contents would be read at
 * deploy and its file names put in stack traces. Conservative: the text
 * anywhere, in a comment or not.
 */
function refuseSourceMapFiles(source: string, fileName: string): void {
  const found = /\/[/*][#@][ \t]*sourceMappingURL[ \t]*=[ \t]*(?!data:)/.exec(source);
  if (!found) return;
  const line = source.slice(0, found.index).split("\n").length;
  throw new Error(
    `${fileName}:${line}: names a source map file; a handler's source map may only be inline (data:), so remove the sourceMappingURL comment or inline the map`,
  );
}

/**
 * Throws, naming each position, when the handler loads a module by a name
 * computed at run time. A pass of its own, without bundling, because when
 * bundling esbuild turns a template or concatenation with a "./" or "../"
 * prefix into a glob over the server's file system, relative to the
 * daemon's working directory, with no plugin asked first: `../${y}.json`
 * would list, and read into the handler, every JSON file up to the root.
 * Without bundling nothing is resolved or read, and esbuild reports every
 * such call, globs included, with the same message ids.
 */
async function refuseComputedImports(stdin: {
  contents: string;
  loader: "ts" | "js";
  sourcefile: string;
}): Promise<void> {
  try {
    await build({
      stdin,
      bundle: false,
      write: false,
      format: "esm",
      platform: "neutral",
      target: TARGET,
      logLevel: "silent",
      logOverride: COMPUTED_IMPORTS_ARE_ERRORS,
    });
  } catch (error) {
    const messages = (error as Partial<BuildFailure>).errors;
    if (!messages) throw error;
    const computed = messages.filter((m) => m.id in COMPUTED_IMPORTS);
    // Anything else (a syntax error) the bundling pass reports as before.
    if (computed.length === 0) return;
    throw new Error(computed.map(describe).join("; "), { cause: error });
  }
}

/** "welcome.ts:3:7: message" */
function describe(m: Message): string {
  const at = m.location ? `${m.location.file}:${m.location.line}:${m.location.column + 1}: ` : "";
  const value = PGFN_VALUE_IMPORT.exec(m.text)?.[1];
  if (value !== undefined) {
    return `${at}imports the value ${value} from "${PGFN_MODULE}", which has none in the sandbox: a handler may import only types from "${PGFN_MODULE}" (\`import type { Handler } from "${PGFN_MODULE}"\`)`;
  }
  return `${at}${COMPUTED_IMPORTS[m.id] ?? m.text}`;
}
