// pgfn's AssemblyScript library as a user gets it: the files `npm pack` puts
// in the package, in a project's node_modules, imported as
// "pgfn/assemblyscript" and built with the flags of README "Writing a
// handler as a WebAssembly module". The handler it makes reads a real
// event: a DELETE's `new` is null, nested fields are found where they are
// and nowhere else.
import { execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HANDLER_FLAGS } from "../examples/build.js";
import { deployFunction } from "../src/deploy.js";
import { enqueueManual, finishedRun, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

// A user's handler: what it read from the event, as JSON, so the test can
// compare. `{"payload":{"throw":"..."}}` throws, to check the abort flag.
const HANDLER = `
import { Json, event, output, quote } from "pgfn/assemblyscript";

function text(value: string | null): string {
  return value !== null ? quote(value) : "null";
}

export function handle(): i32 {
  const e = event();
  const payload = e.getObject("payload");
  if (payload !== null) {
    const message = payload.getString("throw");
    if (message !== null) throw new Error(message);
  }
  const row = e.getObject("new");
  const old = e.getObject("old");
  let city: string | null = null;
  let secondTag: string | null = null;
  const profile = row !== null ? row.getObject("profile") : null;
  if (profile !== null) {
    const address = profile.getObject("address");
    if (address !== null) city = address.getString("city");
    const tags = profile.getArray("tags");
    if (tags !== null && tags.length > 1) secondTag = tags.at(1)!.asString();
  }
  const id = e.get("id");
  output(
    '{"event_id":' + (id !== null ? id.toString() : "null") +
      ',"operation":' + text(e.getString("operation")) +
      ',"new_is_null":' + (row === null ? "true" : "false") +
      ',"new_id":' + (row !== null ? row.get("id")!.toString() : "null") +
      ',"email":' + text(row !== null ? row.getString("email") : null) +
      ',"old_email":' + text(old !== null ? old.getString("email") : null) +
      ',"nickname":' + text(row !== null ? row.getString("nickname") : null) +
      ',"missing":' + text(row !== null ? row.getString("no_such_column") : null) +
      ',"city":' + text(city) +
      ',"second_tag":' + text(secondTag) +
      ',"new_again":' + (row !== null ? row.toString() : "null") +
      "}",
  );
  return 0;
}
`;

/** The files `npm pack` would publish, as package-relative paths. */
async function packedFiles(): Promise<string[]> {
  const { stdout } = await promisify(execFile)(
    "npm",
    ["pack", "--dry-run", "--json", "--ignore-scripts"],
    { cwd: ROOT },
  );
  const [pack] = JSON.parse(stdout) as { files: { path: string }[] }[];
  return pack!.files.map((f) => f.path);
}

let project: string;
let files: string[];
let wasm: Buffer;

beforeAll(async () => {
  files = await packedFiles();
  project = await mkdtemp(path.join(tmpdir(), "pgfn-as-project-"));
  const pkg = path.join(project, "node_modules", "pgfn");
  // Only what the package publishes: a file left out of "files" is missing here.
  for (const file of files.filter((f) => f.startsWith("assemblyscript/") || f === "package.json")) {
    await mkdir(path.dirname(path.join(pkg, file)), { recursive: true });
    await cp(path.join(ROOT, file), path.join(pkg, file));
  }
  await mkdir(path.join(project, "node_modules", "@extism"), { recursive: true });
  await symlink(
    path.join(ROOT, "node_modules", "@extism", "as-pdk"),
    path.join(project, "node_modules", "@extism", "as-pdk"),
  );
  await writeFile(path.join(project, "handler.ts"), HANDLER);
  const { default: asc } = await import("assemblyscript/asc");
  const stderr = asc.createMemoryStream();
  const { error } = await asc.main(
    ["handler.ts", "--outFile", "handler.wasm", ...HANDLER_FLAGS, "--baseDir", project],
    { stdout: asc.createMemoryStream(), stderr },
  );
  if (error) throw new Error(`asc failed:\n${stderr.toString()}`);
  wasm = await readFile(path.join(project, "handler.wasm"));
}, 120_000);
afterAll(async () => {
  if (project) await rm(project, { recursive: true, force: true });
});

describe("the published AssemblyScript library", () => {
  it("is in the package, and README gives the flags it is built with", async () => {
    expect(files).toEqual(
      expect.arrayContaining([
        "assemblyscript/index.ts",
        "assemblyscript/host.ts",
        "assemblyscript/json.ts",
      ]),
    );
    const readme = await readFile(path.join(ROOT, "README.md"), "utf8");
    expect(readme).toContain(
      `npx asc handler.ts --outFile handler.wasm ${HANDLER_FLAGS.join(" ")}`,
    );
    expect(readme).toContain(`from "pgfn/assemblyscript"`);
    // Extism provides no env.abort: the flag must have replaced it.
    const imports = WebAssembly.Module.imports(new WebAssembly.Module(new Uint8Array(wasm)));
    expect(imports.filter((i) => i.module === "env")).toEqual([]);
  });

  describe("a handler built from it, run on a table's events", () => {
    const t = useTestDatabase("assemblyscript_package");

    beforeAll(async () => {
      await deployFunction(t.db, { name: "reader", wasm, maxAttempts: 1 });
      await t.pool.query(`
        create table public.people (id int primary key, email text, nickname text, profile jsonb);
        select pgfn.attach('public.people', 'reader');
      `);
      await t.startDaemon({ pollIntervalMs: 100 });
    });

    async function resultsByOperation(): Promise<Record<string, Record<string, unknown>>> {
      const rows = await waitFor(
        async () => {
          const { rows } = await t.pool.query(
            `select status, error_message, result from pgfn.function_runs
             where function_name = 'reader' and status <> 'running' order by event_id`,
          );
          return rows.length >= 3 ? rows : undefined;
        },
        { message: "three finished runs of reader" },
      );
      for (const row of rows) expect(row).toMatchObject({ status: "succeeded" });
      return Object.fromEntries(rows.map((r) => [r.result.operation, r.result]));
    }

    it("reads new as null for a DELETE, nested fields, and absent or null fields as null", async () => {
      // The row's own columns: `profile` nests an object and an array; an
      // "id" inside it must not be mistaken for the row's or the event's.
      await t.pool.query(
        `insert into public.people values (7, 'ada@example.com', null,
           '{"id": 99, "address": {"city": "London", "email": "no@x"}, "tags": ["a", "b\\"q"]}')`,
      );
      await t.pool.query(`update public.people set email = 'ada@lovelace.dev' where id = 7`);
      await t.pool.query(`delete from public.people where id = 7`);
      const byOperation = await resultsByOperation();
      const { rows: events } = await t.pool.query(
        `select id::text, operation from pgfn.events where function_name = 'reader'`,
      );
      const eventIds = Object.fromEntries(events.map((e) => [e.operation, Number(e.id)]));

      expect(byOperation.DELETE).toEqual({
        event_id: eventIds.DELETE,
        operation: "DELETE",
        new_is_null: true,
        new_id: null,
        email: null,
        old_email: "ada@lovelace.dev",
        nickname: null,
        missing: null,
        city: null,
        second_tag: null,
        new_again: null,
      });
      expect(byOperation.INSERT).toMatchObject({
        event_id: eventIds.INSERT,
        new_is_null: false,
        new_id: 7,
        email: "ada@example.com",
        old_email: null,
        nickname: null,
        missing: null,
        city: "London",
        second_tag: 'b"q',
      });
      // The row comes back whole: nothing was lost or mangled in parsing.
      const profile = (byOperation.INSERT!.new_again as { profile: unknown }).profile;
      expect(profile).toEqual({
        id: 99,
        address: { city: "London", email: "no@x" },
        tags: ["a", 'b"q'],
      });
      expect(byOperation.UPDATE).toMatchObject({
        new_id: 7,
        email: "ada@lovelace.dev",
        old_email: "ada@example.com",
      });
    });

    it("turns a thrown error into the run's message (the abort flag works from a project)", async () => {
      const eventId = await enqueueManual(t.pool, "reader", { throw: "no such customer" });
      const run = await finishedRun(t.pool, eventId);
      expect(run).toMatchObject({ status: "failed" });
      expect(run.error_message).toContain("no such customer");
    });
  });
});
