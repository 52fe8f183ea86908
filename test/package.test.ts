// The package as a user gets it: `npm pack`, installed into an empty project
// (dependencies from the npm cache, else the registry), then its CLI, its
// API and its types used from there, as on a machine that never saw this
// repository. The tarball is packed from the build in dist/ (rebuilt first
// if src/ is newer).
import { existsSync, statSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { useTestDatabase } from "./fixture.js";
import { exampleWasm } from "./helpers.js";
import {
  ROOT,
  runCommand,
  runNode,
  SPAWNING_TEST_TIMEOUT_MS,
  type ChildEnv,
  type ChildResult,
} from "./processes.js";

// Unmigrated: the installed package's migrate() brings its own sql/.
const t = useTestDatabase("package", { migrated: false });

const NPM = process.platform === "win32" ? "npm.cmd" : "npm";
const VERSION = (createRequire(import.meta.url)("../package.json") as { version: string }).version;

/**
 * Variables npm sets for a script it runs (`npm test`): passed on, they
 * would configure the npm below as the outer one (its prefix, its command).
 */
const WITHOUT_NPM_VARIABLES: ChildEnv = Object.fromEntries(
  Object.keys(process.env)
    .filter((key) => /^npm_/i.test(key))
    .map((key) => [key, undefined]),
);

function npm(args: string[], cwd: string, deadlineMs = 240_000): Promise<ChildResult> {
  return runCommand(NPM, args, { cwd, env: WITHOUT_NPM_VARIABLES, deadlineMs });
}

function expectSuccess(result: ChildResult, what: string): void {
  if (result.code !== 0) {
    throw new Error(`${what} exited ${result.code}:\n${result.stdout}\n${result.stderr}`);
  }
}

/** The newest modification time of the files under `dir`. */
async function newestMtime(dir: string): Promise<number> {
  let newest = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) {
      newest = Math.max(newest, statSync(path.join(entry.parentPath, entry.name)).mtimeMs);
    }
  }
  return newest;
}

let work: string;
let tarball: string;
let packedFiles: string[];

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "package-"));
  const index = path.join(ROOT, "dist", "index.js");
  if (!existsSync(index) || statSync(index).mtimeMs < (await newestMtime(path.join(ROOT, "src")))) {
    expectSuccess(await npm(["run", "build"], ROOT), "npm run build");
  }
  // --ignore-scripts: `prepare` would build again what was just checked.
  const packed = await npm(
    ["pack", "--ignore-scripts", "--json", "--pack-destination", work],
    ROOT,
  );
  expectSuccess(packed, "npm pack");
  const [info] = JSON.parse(packed.stdout) as [{ filename: string; files: { path: string }[] }];
  tarball = path.join(work, info.filename);
  packedFiles = info.files.map((f) => f.path);
}, SPAWNING_TEST_TIMEOUT_MS);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe("the packed package", () => {
  it("holds the build, the migrations and the demo, and no tests, sources or source maps", () => {
    for (const file of [
      "package.json",
      "README.md",
      "bin/pgfn.js",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/main.js",
      "dist/sandbox/thread.js",
      "sql/000001_schema.sql",
      "examples/demo/demo.wasm",
    ]) {
      expect(packedFiles).toContain(file);
    }
    const junk = packedFiles.filter(
      (f) =>
        /^(src|test|bench|docs|deploy|node_modules|coverage|\.ci|\.pgfn)\//.test(f) ||
        /\.(test\.[cm]?[jt]s|map|log|tgz)$/.test(f) ||
        /^(tsconfig.*|vitest\.config\.ts|eslint\.config\.js|Dockerfile|docker-compose\.yml)$/.test(
          f,
        ),
    );
    expect(junk).toEqual([]);
  });

  it("holds every file the README points to under node_modules/pgfn/", async () => {
    const readme = await readFile(path.join(ROOT, "README.md"), "utf8");
    const named = [...readme.matchAll(/node_modules\/pgfn\/([\w./-]*[\w/])/g)].map((m) => m[1]!);
    expect(named.length).toBeGreaterThan(0);
    expect(named.filter((file) => !packedFiles.includes(file))).toEqual([]);
  });

  it(
    "installs into an empty project, where its CLI, its API and its types work",
    { timeout: SPAWNING_TEST_TIMEOUT_MS },
    async () => {
      const project = path.join(work, "project");
      await mkdir(project);
      await writeFile(
        path.join(project, "package.json"),
        JSON.stringify({ name: "uses-pgfn", private: true, type: "module" }),
      );
      // --loglevel=warn whatever the machine's npm config says: the warnings
      // are what a user sees.
      const installed = await npm(
        ["install", tarball, "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=warn"],
        project,
      );
      expectSuccess(installed, "npm install of the tarball");
      // We promise Node 20.19+ (engines), so nothing in the tree the user
      // gets may ask for more. The repository's own overrides and lockfile do
      // not reach this install: only pgfn's dependencies steer it.
      expect(installed.stdout + installed.stderr).not.toMatch(/EBADENGINE/);

      const version = await npm(["exec", "--no", "--", "pgfn", "--version"], project, 60_000);
      expectSuccess(version, "npx pgfn --version");
      expect(version.stdout.trim()).toBe(VERSION);

      // A CommonJS project's require() loads the ES module (Node 20.19+).
      await writeFile(
        path.join(project, "use.cjs"),
        `const { makeUtils, run, PgfnError } = require("pgfn");
console.log([typeof makeUtils, typeof run, typeof PgfnError].join(" "));
`,
      );
      const required = await runNode(["use.cjs"], { cwd: project, deadlineMs: 60_000 });
      expectSuccess(required, "node use.cjs");
      expect([required.stdout.trim(), required.stderr]).toEqual(["function function function", ""]);

      // The API from the installed copy: migrate, deploy, invoke, and a
      // daemon started and stopped; the process must then exit by itself.
      await writeFile(
        path.join(project, "use.mjs"),
        `import { readFile } from "node:fs/promises";
import { makeUtils, run } from "pgfn";
const [url, wasm] = process.argv.slice(2);
const utils = await makeUtils({ connectionString: url, env: {} });
const out = {};
try {
  out.applied = (await utils.migrate()).applied.length;
  await utils.deploy("echo", await readFile(wasm));
  const r = await utils.invoke("echo", { from: "package" });
  out.status = r.status;
  out.payload = r.result.payload;
} finally {
  await utils.release();
}
const runner = await run({ connectionString: url, env: { PGFN_LOG_LEVEL: "silent" } });
await runner.stop();
await runner.promise;
console.log(JSON.stringify(out));
`,
      );
      const used = await runNode(["use.mjs", t.url, exampleWasm("echo")], {
        cwd: project,
        deadlineMs: 120_000,
      });
      expectSuccess(used, "node use.mjs");
      // Nothing on the user's stderr: no warning of Node's about WASI, which
      // Extism imports, from merely using the package.
      expect(used.stderr).toBe("");
      const out = JSON.parse(used.stdout) as Record<string, unknown>;
      expect(out).toMatchObject({ status: "succeeded", payload: { from: "package" } });
      expect(out.applied).toBeGreaterThan(0);

      // The types, resolved through package.json's exports as a user's
      // compiler does. The @ts-expect-error fails the check if they
      // resolved to `any`.
      await writeFile(
        path.join(project, "check.ts"),
        `import { makeUtils, run, PgfnError, type Event, type Handler, type Runner } from "pgfn";
interface User { id: number; email: string }
// A TypeScript handler, as a user deploys one (README): ctx typed, event.new without narrowing.
export const greet: Handler<User> = async (event, ctx) => {
  if (!event.new) return { skipped: true };
  const { rows } = await ctx.db.query<{ n: number }>("select $1::int as n", [event.new.id]);
  if (rows.length === 0) throw ctx.retryAfter(1000);
  return { n: rows[0]!.n, from: ctx.env.SENDER };
};
export function describe(event: Event<User>): string | null {
  switch (event.trigger) {
    case "database": return event.new?.email ?? null;
    case "schedule": return event.scheduled_time;
    case "http":
    case "manual": return JSON.stringify(event.payload);
    case "error_handler": return event.payload.error.message;
  }
}
export async function use(url: string): Promise<void> {
  const utils = await makeUtils({ connectionString: url });
  const r = await utils.invoke("echo", {});
  // @ts-expect-error a run's status is a string union, not a number
  const n: number = r.status;
  void n;
  const runner: Runner = await run({ connectionString: url, http: { port: 0 } });
  await runner.stop();
  if (!(new Error() instanceof PgfnError)) await utils.release();
}
`,
      );
      await writeFile(
        path.join(project, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            strict: true,
            noEmit: true,
            skipLibCheck: true,
            types: [],
          },
          files: ["check.ts"],
        }),
      );
      const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
      const checked = await runNode([tsc, "-p", project], { cwd: project, deadlineMs: 120_000 });
      expect(checked.stdout + checked.stderr).toBe("");
      expect(checked.code).toBe(0);
    },
  );
});
