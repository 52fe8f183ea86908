// Compiles the AssemblyScript examples to Extism plugins: examples/NAME/index.ts
// -> examples/NAME/NAME.wasm (gitignored). Run by `npm run build:examples`, and
// so by `npm run build` and `npm ci`; tests call buildExamples().
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * The asc flags a handler using pgfn's AssemblyScript library is built with,
 * as README "Writing a handler" gives them.
 */
export const HANDLER_FLAGS = [
  // -Os: half the compile time of -O3 and a smaller module; these handlers
  // are not compute-bound.
  "-Os",
  // No garbage collector: an instance lives for one call, then goes.
  "--runtime",
  "stub",
  // AssemblyScript's default abort imports env.abort, which Extism does not
  // provide; the library's global pgfnAbort reports the message instead.
  "--use",
  "abort=pgfnAbort",
];

/** Names of the examples: folders holding an index.ts. */
export function exampleNames() {
  return readdirSync(here, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .filter((d) => existsSync(path.join(here, d.name, "index.ts")))
    .map((d) => d.name)
    .sort();
}

/** Absolute path of an example's compiled module, examples/NAME/NAME.wasm. */
export function examplePath(name) {
  return path.join(here, name, `${name}.wasm`);
}

/**
 * Compiles every example, one line per module unless `quiet`. Throws with the
 * compiler's diagnostics when one does not compile.
 */
export async function buildExamples({ quiet = false } = {}) {
  // The compiler's JS API, in-process: spawning `asc` costs a Node start-up
  // (about a second) per module.
  const { default: asc } = await import("assemblyscript/asc");
  for (const name of exampleNames()) {
    const started = performance.now();
    const { error, stderr } = await asc.main(
      [
        path.join(here, name, "index.ts"),
        "--outFile",
        examplePath(name),
        ...HANDLER_FLAGS,
        "--baseDir",
        path.dirname(here),
      ],
      { stdout: asc.createMemoryStream(), stderr: asc.createMemoryStream() },
    );
    if (error) throw new Error(`building examples/${name} failed:\n${stderr.toString()}`);
    if (!quiet) {
      const ms = (performance.now() - started).toFixed(0);
      console.log(`built examples/${name}/${name}.wasm in ${ms} ms`);
    }
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await buildExamples();
}
