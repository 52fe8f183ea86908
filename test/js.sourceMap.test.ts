// A JavaScript handler's source map (sourceMap.ts): deploy keeps it in the
// stored module, loading splits it off so the engine and the sandbox threads
// never get it, and the decoder reads what esbuild writes.
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";
import { compileJavaScript } from "../src/sandbox/jsCompile.js";
import { ModuleCache, sha256Hex, threadModule, type JsModule } from "../src/sandbox/module.js";
import { invokeJavaScript } from "../src/sandbox/jsEngine.js";
import {
  decodeMappings,
  mapLogs,
  mapPositions,
  SourceMap,
  splitSourceMap,
} from "../src/sandbox/sourceMap.js";

const SOURCE = `import type { Handler } from "pgfn";

interface Order { id: number }

const check = (order: Order) => {
  if (order.id > 0) throw new Error("bad");
};
export default ((event) => check({ id: 1 })) as Handler;
`;

describe("the stored module", () => {
  it("ends with the map; loaded, the code is without it and keeps its lines", async () => {
    const compiled = await compileJavaScript(SOURCE, "orders.ts");
    expect(compiled).toMatch(/\n\/\/# sourceMappingURL=data:application\/json;base64,[\w+/=]+\n?$/);
    const bytes = Buffer.from(compiled);
    const module = (await new ModuleCache().get(
      sha256Hex(bytes),
      () => Promise.resolve(bytes),
      "js",
    )) as JsModule;
    expect(module.code).not.toMatch(/sourceMappingURL/);
    expect(compiled.startsWith(module.code)).toBe(true);
    expect(module.sourceMap).toBeDefined();
    // What a sandbox thread is sent: the code alone.
    expect(threadModule(module)).toEqual({ runtime: "js", code: module.code });
  });

  it("maps a compiled position to the file and line it came from", async () => {
    const { code, sourceMap } = splitSourceMap(await compileJavaScript(SOURCE, "orders.ts"));
    const line = code.split("\n").findIndex((l) => l.includes("throw")) + 1;
    const column = code.split("\n")[line - 1]!.indexOf("new Error") + 1;
    expect(mapPositions(`at check (handler.js:${line}:${column})`, sourceMap!)).toBe(
      "at check (orders.ts:6:27)",
    );
    // A position the map does not know, and another file's, stay as they are.
    expect(mapPositions("at x (handler.js:999:1) at y (myhandler.js:1:1)", sourceMap!)).toBe(
      "at x (handler.js:999:1) at y (myhandler.js:1:1)",
    );
  });

  it("a module without a map (deployed before maps were kept) loads as it is", () => {
    expect(splitSourceMap("export default () => 1;\n")).toEqual({
      code: "export default () => 1;\n",
    });
  });
});

describe("deploy", () => {
  it("refuses a source map file named by the handler (esbuild would read it from the host), not an inline one", async () => {
    await expect(
      compileJavaScript(
        "export default () => 1;\n//# sourceMappingURL=file:///etc/pgfn.map\n",
        "a.js",
      ),
    ).rejects.toThrow(/^a\.js:2: names a source map file/);
    const inline = Buffer.from(
      JSON.stringify({ version: 3, sources: ["orig.ts"], mappings: "AAAA" }),
    ).toString("base64");
    await expect(
      compileJavaScript(
        `export default () => 1;\n//# sourceMappingURL=data:application/json;base64,${inline}\n`,
        "a.js",
      ),
    ).resolves.toMatch(/sourceMappingURL=data:/);
  });

  it("maps a bundle esbuild wrote with its map inline (the README's command) to the files bundled", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "bundle-"));
    try {
      await mkdir(path.join(dir, "handlers"));
      await writeFile(
        path.join(dir, "handlers", "util.ts"),
        `export function shout(text: string): string {\n  if (!text) throw new Error("nothing to shout");\n  return text.toUpperCase();\n}\n`,
      );
      await writeFile(
        path.join(dir, "handlers", "signup.ts"),
        `import type { Handler } from "pgfn";\nimport { shout } from "./util";\n\nexport default (() => shout("")) as Handler;\n`,
      );
      // npx esbuild handlers/signup.ts --bundle --format=esm --sourcemap=inline --outfile=build/signup.js
      const bundled = await build({
        absWorkingDir: dir,
        entryPoints: ["handlers/signup.ts"],
        bundle: true,
        format: "esm",
        sourcemap: "inline",
        outfile: "build/signup.js",
        write: false,
        logLevel: "silent",
      });
      const { code, sourceMap } = splitSourceMap(
        await compileJavaScript(bundled.outputFiles[0]!.text, "build/signup.js"),
      );
      const outcome = await invokeJavaScript(code, {});
      const stack = mapLogs({ runtime: "js", code, sourceMap }, outcome).logs.at(-1)!.message;
      // Relative to build/, where esbuild wrote the map.
      expect(stack).toMatch(
        /^nothing to shout\n\s+at shout \(\.\.\/handlers\/util\.ts:2:\d+\)\n\s+at \S+ \(\.\.\/handlers\/signup\.ts:4:\d+\)/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("SourceMap", () => {
  it("counts columns as QuickJS does, in code points, past emoji on the line", async () => {
    const source = `function boom(): string { throw new Error("x"); }
export default () => "🎉🎉🎉🎉🎉🎉" + String(1) + boom();
`;
    const { code, sourceMap } = splitSourceMap(await compileJavaScript(source, "party.ts"));
    const outcome = await invokeJavaScript(code, {});
    const mapped = mapLogs({ runtime: "js", code, sourceMap }, outcome).logs[0]!.message;
    const column = source.split("\n")[1]!.indexOf("boom") + 1;
    expect(mapped).toMatch(new RegExp(`at \\w+ \\(party\\.ts:2:${column}\\)`));
  });

  it("finds the segment at or before a column on a long (minified) line", () => {
    // One line: a segment at column 3, then one every 10 columns, column c
    // coming from source column c.
    const mappings = "GAAG" + ",UAAU".repeat(5000);
    const map = new SourceMap(
      Buffer.from(JSON.stringify({ version: 3, sources: ["min.js"], mappings })).toString("base64"),
    );
    const at = (column: number) => map.original(1, column);
    expect(at(1)).toBeUndefined(); // before the first segment
    expect(at(4)).toEqual({ file: "min.js", line: 1, column: 4 });
    expect(at(4 + 10 * 1234 + 7)).toEqual({ file: "min.js", line: 1, column: 4 + 10 * 1234 });
    expect(at(10 ** 6)).toEqual({ file: "min.js", line: 1, column: 4 + 10 * 5000 });
    expect(map.original(2, 1)).toBeUndefined();
  });
});

describe("decodeMappings", () => {
  it("reads multi-digit and negative VLQ deltas, per line", () => {
    // Line 1: col 0 -> source 0 line 0 col 0; col 16 -> line 1 col 16.
    // Line 2 empty. Line 3: col 16 -> line 2 col 0 (a -16 delta).
    const { segments, lineStarts } = decodeMappings("AAAA,gBACgB;;gBAChB");
    expect([...segments]).toEqual([0, 0, 0, 0, 16, 0, 1, 16, 16, 0, 2, 0]);
    expect([...lineStarts]).toEqual([0, 8, 8, 12]);
  });
});
