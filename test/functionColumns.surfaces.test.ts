// Every setting of the definition (src/functionColumns.ts) reaches its
// column through each way of setting it: deployFunction, `pgfn deploy`'s
// flags, the HTTP deploy and PATCH; and GET shows it back.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { buildProgram } from "../src/cli.js";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import {
  camelCase,
  cliFlag,
  columnSpec,
  DEPLOY_COLUMNS,
  PATCH_COLUMNS,
  rangeTextOf,
  type ColumnName,
} from "../src/functionColumns.js";
import {
  createTestDatabase,
  createTestRoles,
  exampleWasm,
  type TestDatabase,
  type TestRoles,
} from "./helpers.js";
import { api, startHttpDaemon } from "./httpHelpers.js";

let t: TestDatabase;
let daemon: Daemon;
let roles: TestRoles;
/** A role db_query may use: deploy checks that db_role names one. */
let sampleRole: string;
beforeAll(async () => {
  t = await createTestDatabase("surfaces");
  roles = await createTestRoles();
  sampleRole = await roles.create("sample");
  // What on_error names: deploy checks that it is deployed.
  await deployFunction(createDb(t.pool), {
    name: "sample-x",
    wasm: await readFile(exampleWasm("echo")),
  });
  daemon = await startHttpDaemon(t.url, { listener: false, worker: false, scheduler: false });
});
afterAll(async () => {
  await daemon?.stop();
  await t?.drop();
  await roles?.drop();
});

/** A valid value for the setting, other than its default. */
function sample(column: ColumnName): unknown {
  if (column === "db_role") return sampleRole;
  // An export of the echo module the deploys here use, not its default.
  if (column === "entrypoint") return "echo";
  const spec = columnSpec(column);
  switch (spec.sqlType) {
    case "integer":
      return (spec.range?.min ?? 0) + 1;
    case "boolean":
      return !spec.default;
    case "text[]":
      return ["example.com:8080"];
    case "jsonb":
      return { SAMPLE: "one" };
    default:
      return "sample-x";
  }
}

/** `pgfn deploy`'s arguments that set `column` to `value`. */
function flags(column: (typeof DEPLOY_COLUMNS)[number], value: unknown): string[] {
  const { flag } = cliFlag(column);
  if (Array.isArray(value)) return value.flatMap((v) => [flag, String(v)]);
  if (typeof value === "object" && value !== null)
    return Object.entries(value).flatMap(([k, v]) => [flag, `${k}=${String(v)}`]);
  return [flag, String(value)];
}

async function row(name: string): Promise<Record<string, unknown>> {
  const { rows } = await t.pool.query(`select * from pgfn.functions where name = $1`, [name]);
  expect(rows, `function ${name}`).toHaveLength(1);
  return rows[0] as Record<string, unknown>;
}

function expectSamples(actual: Record<string, unknown>, columns: readonly ColumnName[]) {
  for (const column of columns) expect(actual[column], column).toEqual(sample(column));
}

it("the samples are valid settings", () => {
  for (const column of PATCH_COLUMNS)
    expect(columnSpec(column).input.safeParse(sample(column)).success, column).toBe(true);
});

it("deployFunction stores each deploy setting, by its TypeScript name", async () => {
  await deployFunction(createDb(t.pool), {
    name: "by-ts",
    wasm: await readFile(exampleWasm("echo")),
    ...Object.fromEntries(DEPLOY_COLUMNS.map((c) => [camelCase(c), sample(c)])),
  });
  expectSamples(await row("by-ts"), DEPLOY_COLUMNS);
});

it("pgfn deploy stores each deploy setting, from its flag", async () => {
  const saved = process.env.DATABASE_URL;
  const log = console.log;
  process.env.DATABASE_URL = t.url;
  console.log = () => undefined;
  try {
    await buildProgram().parseAsync(
      [
        "deploy",
        "by-cli",
        exampleWasm("echo"),
        ...DEPLOY_COLUMNS.flatMap((c) => flags(c, sample(c))),
      ],
      { from: "user" },
    );
  } finally {
    process.env.DATABASE_URL = saved;
    console.log = log;
  }
  expectSamples(await row("by-cli"), DEPLOY_COLUMNS);
});

it("pgfn deploy --help gives each setting's flag and range", () => {
  const help = buildProgram()
    .commands.find((c) => c.name() === "deploy")!
    .helpInformation()
    .replace(/\s+/g, " ");
  for (const column of DEPLOY_COLUMNS) {
    expect(help).toContain(cliFlag(column).flag);
    const range = rangeTextOf(column);
    if (range) expect(help, column).toContain(range);
  }
});

it("the HTTP deploy stores each deploy setting, by its column name; GET shows them", async () => {
  const wasm = (await readFile(exampleWasm("echo"))).toString("base64");
  const r = await api(daemon, "POST", "/functions/v1/deploy", {
    json: {
      name: "by-http",
      wasm,
      ...Object.fromEntries(DEPLOY_COLUMNS.map((c) => [c, sample(c)])),
    },
  });
  expect(r.status, r.text).toBe(201);
  expectSamples(await row("by-http"), DEPLOY_COLUMNS);
  const shown = await api(daemon, "GET", "/functions/v1/by-http");
  expectSamples(shown.body as Record<string, unknown>, DEPLOY_COLUMNS);
});

it("PATCH changes each setting it may change, and null clears each that may be null", async () => {
  const wasm = (await readFile(exampleWasm("echo"))).toString("base64");
  expect(
    (await api(daemon, "POST", "/functions/v1/deploy", { json: { name: "patched", wasm } })).status,
  ).toBe(201);
  const r = await api(daemon, "PATCH", "/functions/v1/patched", {
    json: Object.fromEntries(PATCH_COLUMNS.map((c) => [c, sample(c)])),
  });
  expect(r.status, r.text).toBe(200);
  expectSamples(await row("patched"), PATCH_COLUMNS);
  expectSamples(r.body as Record<string, unknown>, PATCH_COLUMNS);

  const nullable = PATCH_COLUMNS.filter((c) => columnSpec(c).nullable);
  expect(nullable.length).toBeGreaterThan(0);
  const cleared = await api(daemon, "PATCH", "/functions/v1/patched", {
    json: Object.fromEntries(nullable.map((c) => [c, null])),
  });
  expect(cleared.status, cleared.text).toBe(200);
  const after = await row("patched");
  for (const column of nullable) expect(after[column], column).toBeNull();
});

it("a setting out of range is refused on each surface, naming it as that surface does", async () => {
  const wasm = await readFile(exampleWasm("echo"));
  const db = createDb(t.pool);
  await expect(deployFunction(db, { name: "too-long", wasm, timeoutMs: 300_001 })).rejects.toThrow(
    /timeoutMs must be a whole number between 1000 and 300000 \(got 300001\)/,
  );
  await expect(
    buildProgram().parseAsync(["deploy", "too-long", exampleWasm("echo"), "--memory-mb", "513"], {
      from: "user",
    }),
  ).rejects.toThrow(/--memory-mb must be a whole number between 16 and 512 \(got 513\)/);
  const r = await api(daemon, "PATCH", "/functions/v1/patched", { json: { max_attempts: 101 } });
  expect(r.status).toBe(400);
  expect((r.body as { message: string }).message).toMatch(
    /^max_attempts must be a whole number between 1 and 100 \(got 101\)\.$/,
  );
});
