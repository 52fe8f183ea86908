/**
 * The shape of the tree, checked like any other guarantee: src/ has no import
 * cycles (a cycle makes one module's load order depend on the other's),
 * every document or repository path that a comment or a doc names exists, and
 * so does every `pgfn.*` object the code, its comments and the README name.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
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

/** Where comments and docs name files. sql/ is left out: landed migrations never change. */
const PROSE = [
  ...["src", "test", "bench", "examples", "docs"].flatMap((dir) =>
    filesUnder(dir, /\.(ts|js|md)$/).filter((f) => !f.includes("node_modules")),
  ),
  "README.md",
  "SECURITY.md",
  // Not this file: its examples name files on purpose.
].filter((f) => f !== "test/structure.test.ts");

/**
 * The files `text` names: any `*.md`, and any path under one of the
 * repository's folders (`sql/000009_job_attempts.sql`, `src/worker/execute.ts`).
 * Placeholders (`sql/NNNNNN_name.sql`, `examples/NAME/index.ts`) are skipped.
 */
function namedFiles(text: string): string[] {
  const md = text.match(/(?<![\w/.-])[\w./-]+\.md\b/g) ?? [];
  const paths =
    text.match(
      /(?<![\w/.-])(?:src|sql|test|bench|docs|examples|deploy)\/[\w./-]+\.(?:ts|js|sql|md|yml|json)\b/g,
    ) ?? [];
  return [...md, ...paths].filter((name) => !/NAME|N{3,}/.test(name));
}

/** A string literal shaped like a SQLSTATE ("23505", "3F000", "P0001"), not like an errno code. */
const SQLSTATE_LITERAL = /["'`](?:\d{2}|\d[A-Z]|[A-Z]\d)[\dA-Z]{3}["'`]/g;

describe("error codes", () => {
  it("finds SQLSTATE literals (the check below would pass on none)", () => {
    expect('x === "57014" || y === "3F000" || z === "EPIPE"'.match(SQLSTATE_LITERAL)).toEqual([
      '"57014"',
      '"3F000"',
    ]);
  });

  it("SQLSTATEs are named in one table, src/errors.ts", () => {
    const elsewhere = filesUnder("src", /\.ts$/)
      .filter((file) => file !== "src/errors.ts")
      .flatMap((file) =>
        (readFileSync(path.join(ROOT, file), "utf8").match(SQLSTATE_LITERAL) ?? []).map(
          (literal) => `${file}: ${literal}`,
        ),
      );
    expect(elsewhere).toEqual([]);
  });
});

describe("comments and docs", () => {
  it("find the names they should (the check below would pass on none)", () => {
    expect(namedFiles("see DESIGN.md section 3 and sql/000009_job_attempts.sql")).toEqual([
      "DESIGN.md",
      "sql/000009_job_attempts.sql",
    ]);
    expect(namedFiles("`sql/NNNNNN_name.sql`, examples/NAME/index.ts")).toEqual([]);
  });

  it("name only files that are in the repository", () => {
    const missing: string[] = [];
    for (const file of PROSE) {
      const text = readFileSync(path.join(ROOT, file), "utf8");
      for (const name of new Set(namedFiles(text))) {
        const here = path.join(ROOT, path.dirname(file), name);
        if (!existsSync(path.join(ROOT, name)) && !existsSync(here)) {
          missing.push(`${file}: ${name}`);
        }
      }
    }
    expect(missing).toEqual([]);
  });
});

/**
 * What sql/ (and migrate.ts, for its own table) creates in schema pgfn and
 * does not drop again later, and the settings it reads
 * (`current_setting('pgfn.woken', true)`).
 */
function pgfnObjects(): Set<string> {
  const objects = new Set<string>();
  const kinds = "(?:unlogged\\s+)?(?:function|table|view|procedure|type|sequence)";
  const statement = new RegExp(
    `(create\\s+(?:or\\s+replace\\s+)?|drop\\s+)${kinds}\\s+(?:if\\s+(?:not\\s+)?exists\\s+)?(pgfn\\.\\w+)|'(pgfn\\.\\w+)'`,
    "gi",
  );
  // In migration order, so that a later drop wins over an earlier create.
  for (const file of [...filesUnder("sql", /\.sql$/).sort(), "src/migrate.ts"]) {
    for (const m of readFileSync(path.join(ROOT, file), "utf8").matchAll(statement)) {
      const name = (m[2] ?? m[3]!).toLowerCase();
      if (m[1]?.toLowerCase().startsWith("drop")) objects.delete(name);
      else objects.add(name);
    }
  }
  return objects;
}

/**
 * `pgfn.name` mentions in `text`: not file names (examples/lib/pgfn.ts), nor
 * double-quoted strings such as the WebAssembly section "pgfn.initial_pages".
 */
const pgfnNames = (text: string) =>
  [...text.matchAll(/(?<![\w/."-])pgfn\.([a-z_]+)\b(?!\.)(?![\w-])/g)]
    .map((m) => `pgfn.${m[1]!}`)
    .filter((name) => !/^pgfn\.(ts|js)$/.test(name));

describe("the SQL objects named in src/ and the README", () => {
  it("are found (the check below would pass on none)", () => {
    const objects = pgfnObjects();
    for (const name of ["pgfn.events", "pgfn.wake", "pgfn.function_runs", "pgfn.migrations"]) {
      expect(objects, name).toContain(name);
    }
    expect(pgfnNames("pgfn.wake() and pgfn.retry(run_id); examples/lib/pgfn.ts")).toEqual([
      "pgfn.wake",
      "pgfn.retry",
    ]);
  });

  it("exist: no comment names a function or table that sql/ does not create", () => {
    const objects = pgfnObjects();
    const missing = [...filesUnder("src", /\.ts$/), "README.md", "SECURITY.md"].flatMap((file) =>
      [...new Set(pgfnNames(readFileSync(path.join(ROOT, file), "utf8")))]
        .filter((name) => !objects.has(name))
        .map((name) => `${file}: ${name}`),
    );
    expect(missing).toEqual([]);
  });
});
