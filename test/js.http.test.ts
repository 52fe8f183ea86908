// A TypeScript handler over HTTP: deployed as source, shown with its
// runtime, invoked synchronously; a source that does not compile is a 400
// naming its line, and the code comes in exactly one of wasm and source.
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createTestRoles, type TestRoles } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { api, INVOKE_TOKEN, startHttpDaemon, wasmBase64 } from "./httpHelpers.js";

const t = useTestDatabase("js_http");
let daemon: Daemon;
let roles: TestRoles;

beforeAll(async () => {
  roles = await createTestRoles();
  daemon = await startHttpDaemon(t.url);
});
afterAll(async () => {
  await daemon?.stop();
  await roles?.drop();
});

const HELLO = `import type { Handler } from "pgfn";
const handle: Handler = (event, ctx) => ({ hello: (event as { payload?: { name?: string } }).payload?.name, greeting: ctx.env.GREETING });
export default handle;
`;

it("deploys a .ts source (201), shows it and runtime js, and invokes it", async () => {
  const deployed = await api(daemon, "POST", "/functions/v1/deploy", {
    json: { name: "hello", source: HELLO, file_name: "hello.ts", env: { GREETING: "hi" } },
  });
  expect(deployed.status, deployed.text).toBe(201);
  const shown = await api(daemon, "GET", "/functions/v1/hello");
  expect(shown.body).toMatchObject({ name: "hello", runtime: "js", source: HELLO });
  const invoked = await api(daemon, "POST", "/functions/v1/invoke/hello", {
    token: INVOKE_TOKEN,
    json: { name: "Ada" },
  });
  expect(invoked.status, invoked.text).toBe(200);
  expect(invoked.body).toEqual({ hello: "Ada", greeting: "hi" });
});

it("400 naming the line for a source that does not compile; 400 for both wasm and source, or neither", async () => {
  const broken = await api(daemon, "POST", "/functions/v1/deploy", {
    json: {
      name: "broken",
      source: "export default () => {\n  return 1 +;\n};",
      file_name: "broken.js",
    },
  });
  expect(broken.status).toBe(400);
  expect(broken.body).toMatchObject({ code: "INVALID_REQUEST" });
  expect((broken.body as { message: string }).message).toMatch(/broken\.js:2:\d+: /);
  const computed = await api(daemon, "POST", "/functions/v1/deploy", {
    json: {
      name: "computed",
      source: "export default (event) =>\n  import(`./${event.payload.module}.js`);",
      file_name: "computed.js",
    },
  });
  expect(computed.status).toBe(400);
  expect((computed.body as { message: string }).message).toContain(
    'computed.js:2:3: import() of a name computed at run time cannot load anything in the sandbox: a handler may import only types (`import type`), from "pgfn" or anywhere else',
  );
  for (const json of [
    { name: "both", source: HELLO, wasm: await wasmBase64("echo") },
    { name: "neither" },
  ]) {
    const r = await api(daemon, "POST", "/functions/v1/deploy", { json });
    expect(r.status, json.name).toBe(400);
    expect((r.body as { message: string }).message).toMatch(/exactly one of wasm .* and source/);
  }
  const { rows } = await t.pool.query(`select name from pgfn.functions order by name`);
  expect(rows).toEqual([{ name: "hello" }]);
});

it("413 for a source over 1 MiB, naming file_name's file", async () => {
  const source = `export default () => "${"x".repeat(1024 * 1024)}";`;
  const r = await api(daemon, "POST", "/functions/v1/deploy", {
    json: { name: "big", source, file_name: "big.js" },
  });
  expect(r.status, r.text).toBe(413);
  expect((r.body as { message: string }).message).toBe(
    `The handler big.js for "big" is ${source.length} bytes; a TypeScript/JavaScript source may be at most 1048576 bytes (1 MiB).`,
  );
});

it("400 naming db_role for a role that may read other functions' code or env, and stores nothing", async () => {
  const codeReader = await roles.create("codereader");
  await t.pool.query(`grant select (name, source) on pgfn.functions to ${codeReader}`);
  await t.pool.query(`create view public.function_rows as select f from pgfn.function_info f`);
  const viewReader = await roles.create("viewreader");
  await t.pool.query(`grant select on public.function_rows to ${viewReader}`);
  try {
    for (const [role, fix] of [
      [codeReader, `may read pgfn.functions.source`],
      [viewReader, `may read public.function_rows`],
    ]) {
      const r = await api(daemon, "POST", "/functions/v1/deploy", {
        json: { name: "peeker", source: HELLO, file_name: "peeker.ts", db_role: role },
      });
      expect(r.status, r.text).toBe(400);
      expect(r.body).toMatchObject({ code: "INVALID_REQUEST" });
      const message = (r.body as { message: string }).message;
      expect(message).toContain(
        `db_role ${role}: db_query would refuse it: db_role "${role}" ${fix}`,
      );
      expect(message).toContain("(every function's env secrets or code)");
    }
    const { rows } = await t.pool.query(`select 1 from pgfn.functions where name = 'peeker'`);
    expect(rows).toEqual([]);
  } finally {
    await t.pool.query(`drop view public.function_rows`);
    await t.pool.query(`revoke all on pgfn.functions from ${codeReader}`);
  }
});
