// `pgfn deploy NAME file.ts` as a user runs it: the file's ending makes it a
// JavaScript handler, `pgfn invoke` runs it, and a file that does not
// compile is one line on stderr naming file:line:column.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { useTestDatabase } from "./fixture.js";
import { PGFN_MAIN, runTs, SPAWNING_TEST_TIMEOUT_MS, type ChildResult } from "./processes.js";

const t = useTestDatabase("js_cli");
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "pgfn-js-cli-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function pgfn(args: string[]): Promise<ChildResult> {
  return runTs(PGFN_MAIN, args, { env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "warn" } });
}

describe("pgfn deploy of a .ts file", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("deploys it as runtime js and invokes it", async () => {
    const file = path.join(dir, "hello.ts");
    await writeFile(
      file,
      `import type { Handler } from "pgfn";
const handle: Handler = (event, ctx) => ({ hi: ctx.env.WHO, trigger: event.trigger });
export default handle;
`,
    );
    const deployed = await pgfn(["deploy", "hello", file, "--env", "WHO=Ada"]);
    expect(deployed.stderr).toBe("");
    expect(deployed.stdout).toMatch(
      /^deployed hello \(JavaScript, sha256 [0-9a-f]{64}, \d+ bytes\)$/m,
    );
    const { rows } = await t.pool.query(`select runtime from pgfn.functions where name = 'hello'`);
    expect(rows).toEqual([{ runtime: "js" }]);
    const invoked = await pgfn(["invoke", "hello", "{}"]);
    expect(invoked.stdout).toMatch(/attempt 1: succeeded in/);
    expect(invoked.stdout).toContain('"hi": "Ada"');
    const source = await pgfn(["source", "hello"]);
    expect(source.stdout).toBe(await readFile(file, "utf8"));
  });

  it("source refuses a wasm function and an unknown name, in one line", async () => {
    await t.deploy("echo", { example: "echo" });
    const wasm = await pgfn(["source", "echo"]);
    expect([wasm.code, wasm.stderr.trim()]).toEqual([
      1,
      'pgfn: Function "echo" is a WebAssembly module; it has no source to print.',
    ]);
    const missing = await pgfn(["source", "nosuch"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim()).toMatch(/^pgfn: Function "nosuch" is not deployed/);
  });

  it("refuses a file that does not compile, in one line naming the line", async () => {
    const file = path.join(dir, "broken.mts");
    await writeFile(file, `export default () => {\n  return 1 +;\n};\n`);
    const r = await pgfn(["deploy", "broken", file]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^pgfn: Invalid handler for "broken": .*broken\.mts:2:\d+: /);
  });

  it("refuses a file that is neither a module nor a handler by its name, naming the endings it takes", async () => {
    const file = path.join(dir, "handler.cjs");
    await writeFile(file, `module.exports = () => 1;\n`);
    const r = await pgfn(["deploy", "cjs", file]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `pgfn: ${file} is neither a WebAssembly module (.wasm) nor a .ts/.mts/.js/.mjs handler: pgfn deploy takes one of those.`,
    );
  });
});
