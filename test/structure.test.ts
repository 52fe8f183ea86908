/**
 * The shape of the tree, checked like any other guarantee: src/ has no import
 * cycles (a cycle makes one module's load order depend on the other's).
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Every file under `dir` (relative to the repository) whose name matches `pattern`. */
function filesUnder(dir: string, pattern: RegExp): string[] {
  return readdirSync(path.join(ROOT, dir), { recursive: true, encoding: "utf8" })
    .filter((f) => pattern.test(f))
    .map((f) => path.join(dir, f));
}

/** The relative imports and re-exports of each source file, as repository paths. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of filesUnder("src", /\.(ts|js)$/)) {
    const text = readFileSync(path.join(ROOT, file), "utf8");
    const deps = [
      ...text.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s+"(\.{1,2}\/[^"]+)"/gms),
    ].map((m) => path.join(path.dirname(file), m[1]!).replace(/\.js$/, ".ts"));
    graph.set(file, deps);
  }
  return graph;
}

/** Each cycle once, as "a -> b -> a". */
function cycles(graph: ReadonlyMap<string, readonly string[]>): string[] {
  const found: string[] = [];
  const state = new Map<string, "open" | "done">();
  const visit = (node: string, stack: string[]) => {
    state.set(node, "open");
    stack.push(node);
    for (const dep of graph.get(node) ?? []) {
      if (!graph.has(dep)) continue;
      if (state.get(dep) === "open")
        found.push([...stack.slice(stack.indexOf(dep)), dep].join(" -> "));
      else if (!state.has(dep)) visit(dep, stack);
    }
    stack.pop();
    state.set(node, "done");
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node, []);
  return found;
}

describe("src/", () => {
  it("reads the import graph (the check below would pass on an empty one)", () => {
    const graph = importGraph();
    expect(graph.get("src/cli.ts")).toContain("src/dev.ts");
    expect(
      cycles(
        new Map([
          ["a", ["b"]],
          ["b", ["a"]],
        ]),
      ),
    ).toEqual(["a -> b -> a"]);
  });

  it("has no import cycles", () => {
    expect(cycles(importGraph())).toEqual([]);
  });
});
