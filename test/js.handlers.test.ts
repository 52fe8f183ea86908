// TypeScript and JavaScript handlers (issue 14), deployed and run as any
// function is: a row event through a TS handler with db_query under its
// role, thrown errors, retry requests, the time and memory limits with the
// other functions still served, no state between runs, and what a deploy
// refuses.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { deployFunction, patchFunction } from "../src/deploy.js";
import { PgfnError } from "../src/errors.js";
import {
  createTestRoles,
  enqueueManual,
  exampleWasm,
  finishedRun,
  waitFor,
  type TestRoles,
} from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("js_handlers");
let daemon: Daemon;
let roles: TestRoles;
let role: string;

const WELCOME = `
import type { Handler } from "pgfn";

interface User { id: number; name: string; email: string }

const handle: Handler<User> = async (event, ctx) => {
  if (!event.new) return { skipped: true };
  ctx.log.info(\`greeting \${event.new.email}\`, { id: event.new.id });
  const { rows } = await ctx.db.query<{ n: number; who: string }>(
    "insert into public.greetings (email) values ($1) returning id as n, current_user as who",
    [event.new.email],
  );
  return { greeted: rows[0].n, who: rows[0].who, from: ctx.env.SENDER };
};
export default handle;
`;

const handlers: Record<string, string> = {
  "echo.mjs": `export function handle(event) { return { echo: event.payload ?? event }; }`,
  "thrower.ts": `export default (): never => { throw new TypeError("no such user: 42"); };`,
  "later.ts": `import type { Handler } from "pgfn";
const h: Handler = (event, ctx) => { throw ctx.retryAfter(60_000, "mail API throttled"); };
export default h;`,
  "never.js": `export default (event, ctx) => { throw ctx.noRetry("the address is invalid"); };`,
  "spin.js": `export default async () => { for (;;) await null; };`,
  "busy.js": `export default (event, ctx) => { ctx.log.info("about to spin"); for (;;) {} };`,
  "bomb.js": `export default () => { const keep = []; for (;;) keep.push("x".repeat(1 << 20) + keep.length); };`,
  // Type-only lines and a helper: the compiled lines are not the file's.
  "stacked.ts": `import type { Handler } from "pgfn";

interface Order { id: number }

function check(order: Order): void {
  if (order.id > 0) {
    throw new Error("order " + order.id + " is invalid");
  }
}

const h: Handler = () => {
  check({ id: 7 });
};
export default h;`,
  "caught.ts": `type Nothing = never;
export default (event: unknown, ctx: any) => {
  try {
    null!.boom();
  } catch (e) {
    ctx.log.warn((e as Error).stack);
  }
  return "ok";
};`,
  "entries.ts": `export default () => "default";
export const handle = () => "handle";
export function other(event: { payload: unknown }) { return { other: event.payload }; }
export const notfn = 1;`,
  "careful.js": `export default async (event, ctx) => {
  try { await ctx.db.query("select 1"); } catch {}
  throw new Error("row is invalid");
};`,
  "careless.js": `export default async (event, ctx) => (await ctx.db.query("select 1")).rows;`,
  // Top-level await: the module settles before its handler is called.
  "awaits.ts": `const settings: { greeting: string } = await Promise.resolve({ greeting: "hello" });
export default () => settings.greeting;`,
  "counter.js": `let calls = 0;
export default () => { calls += 1; globalThis.seen = (globalThis.seen ?? 0) + 1; return { calls, seen: globalThis.seen }; };`,
};

beforeAll(async () => {
  roles = await createTestRoles();
  process.env.PGPASSFILE = roles.pgpassFile;
  role = await roles.create("greeter");
  await t.pool.query(`
    create table public.users (id int primary key, name text, email text);
    create table public.greetings (id serial primary key, email text);
    grant select, insert on public.greetings to ${role};
    grant usage on sequence public.greetings_id_seq to ${role};
    select pgfn.attach('public.users', 'welcome', array['INSERT']);
  `);
  await deployFunction(t.db, {
    name: "welcome",
    source: WELCOME,
    fileName: "handlers/welcome.ts",
    dbRole: role,
    env: { SENDER: "hi@example.com" },
  });
  for (const [file, source] of Object.entries(handlers)) {
    const name = file.replace(/\..*$/, "");
    await deployFunction(t.db, {
      name,
      source,
      fileName: file,
      maxAttempts: ["spin", "busy", "bomb"].includes(name) ? 1 : 3,
      // The bomb fills 32 MB a string at a time: seconds on a loaded machine.
      timeoutMs: name === "bomb" ? 20_000 : 1000,
      memoryLimitMb: name === "bomb" ? 32 : 128,
    });
  }
  // The SQLSTATE of a refused statement, as node-postgres gives it; none
  // for a failure that is not the server's.
  await deployFunction(t.db, {
    name: "sqlstate",
    fileName: "sqlstate.ts",
    dbRole: role,
    source: `import type { Handler } from "pgfn";
const codeOf = async (run: () => Promise<unknown>) => {
  try { await run(); return "no error"; } catch (e) { return (e as { code?: string }).code ?? null; }
};
const h: Handler = async (event, ctx) => ({
  divide: await codeOf(() => ctx.db.query("select 1 / 0")),
  unique: await codeOf(() => ctx.db.query("insert into public.greetings (id, email) values (1, 'a'), (1, 'b')")),
  fetch: await codeOf(() => ctx.fetch("http://not-allowed.example/")),
});
export default h;`,
  });
  // A function deployed before deploy refused a computed import: the
  // script esbuild made of `export default async (event) => import(event.payload.module)`.
  const legacy = `var legacy_default = async (event) => import(event.payload.module);\nexport {\n  legacy_default as default\n};\n`;
  await t.pool.query(
    `insert into pgfn.functions (name, runtime, wasm, wasm_sha256, source, max_attempts)
     values ('legacy', 'js', convert_to($1, 'UTF8'), encode(sha256(convert_to($1, 'UTF8')), 'hex'), $2, 1)`,
    [legacy, "export default async (event) => import(event.payload.module);"],
  );
  daemon = await t.startDaemon();
});
afterAll(async () => {
  await daemon?.stop();
  await t.drop();
  await roles?.drop();
});

const run = async (fn: string, payload: unknown = {}, timeoutMs?: number) =>
  finishedRun(t.pool, await enqueueManual(t.pool, fn, payload), timeoutMs);

describe("deployed", () => {
  it("stores the runtime and the source as written", async () => {
    const { rows } = await t.pool.query(
      `select runtime, source from pgfn.functions where name = 'welcome'`,
    );
    expect(rows).toEqual([{ runtime: "js", source: WELCOME }]);
  });
});

describe("runs", () => {
  it("runs a committed row through a TypeScript handler, db_query as its role", async () => {
    await t.pool.query(`insert into public.users values (7, 'Ada', 'ada@example.com')`);
    const r = await waitFor(async () => {
      const { rows } = await t.pool.query(
        `select * from pgfn.function_runs where function_name = 'welcome' and status <> 'running'`,
      );
      return rows[0];
    });
    expect(r).toMatchObject({ status: "succeeded", error_code: null });
    expect(r.result).toEqual({ greeted: 1, who: role, from: "hi@example.com" });
    expect(r.logs).toEqual([
      expect.objectContaining({ level: "info", message: 'greeting ada@example.com {"id":7}' }),
    ]);
    const { rows } = await t.pool.query(`select email from public.greetings`);
    expect(rows).toEqual([{ email: "ada@example.com" }]);
  });

  it("a thrown error fails the run as FUNCTION_ERROR with its message, the stack in the logs", async () => {
    const r = await run("thrower");
    expect(r).toMatchObject({
      status: "failed",
      error_code: "FUNCTION_ERROR",
      error_message: "TypeError: no such user: 42",
    });
    expect(r.logs.at(-1)).toMatchObject({ level: "error" });
    expect(r.logs.at(-1).message).toMatch(/no such user: 42\n\s+at /);
  });

  it("a failed ctx.db.query left uncaught is HOST_FUNCTION_ERROR; the handler's own error after one it caught is FUNCTION_ERROR", async () => {
    // Neither has a db_role: every ctx.db.query is refused.
    expect(await run("careless")).toMatchObject({
      status: "failed",
      error_code: "HOST_FUNCTION_ERROR",
      error_message: expect.stringMatching(/^db_query /),
    });
    expect(await run("careful")).toMatchObject({
      status: "failed",
      error_code: "FUNCTION_ERROR",
      error_message: "row is invalid",
    });
  });

  it("a refused statement's error has the SQLSTATE as code; other host errors have none", async () => {
    expect(await run("sqlstate")).toMatchObject({
      status: "succeeded",
      result: { divide: "22012", unique: "23505", fetch: null },
    });
  });

  it("throw ctx.retryAfter(ms) retries no earlier than ms; throw ctx.noRetry() does not retry", async () => {
    const later = await run("later");
    expect(later).toMatchObject({
      error_code: "FUNCTION_ERROR",
      error_message: "mail API throttled",
      will_retry: true,
    });
    const wait = later.next_attempt_at.getTime() - later.finished_at.getTime();
    expect(wait).toBeGreaterThanOrEqual(59_000);
    expect(wait).toBeLessThanOrEqual(61_000);
    const never = await run("never");
    expect(never).toMatchObject({
      error_code: "FUNCTION_ERROR",
      error_message: "the address is invalid",
      will_retry: false,
      next_attempt_at: null,
    });
  });

  it("evaluates top-level await before the handler is called", async () => {
    expect(await run("awaits")).toMatchObject({ status: "succeeded", result: "hello" });
  });

  it("keeps no state between runs: module variables and globals start over", async () => {
    for (let i = 0; i < 3; i++) {
      const r = await run("counter");
      expect(r.result).toEqual({ calls: 1, seen: 1 });
    }
  });

  it("stops a loop, in a promise chain or not, at its timeout while other functions are served", async () => {
    const spinning = enqueueManual(t.pool, "spin", {});
    const echoes = [];
    for (let i = 0; i < 5; i++) echoes.push(await run("echo", { i }));
    expect(echoes.map((r) => [r.status, r.result])).toEqual(
      [0, 1, 2, 3, 4].map((i) => ["succeeded", { echo: { i } }]),
    );
    const spin = await finishedRun(t.pool, await spinning);
    expect(spin).toMatchObject({ status: "failed", error_code: "TIMEOUT" });
    expect(spin.duration_ms).toBeGreaterThanOrEqual(1000);
    // Stopped at the limit: a loop that is not stopped never finishes. The
    // slack is for a loaded machine; the stop's latency is the bench's to measure.
    expect(spin.duration_ms).toBeLessThan(3000);
    // And a synchronous one.
    const busy = await run("busy");
    expect(busy).toMatchObject({ status: "failed", error_code: "TIMEOUT" });
    // What it logged before it was stopped is the run's.
    expect(busy.logs).toEqual([
      expect.objectContaining({ level: "info", message: "about to spin" }),
    ]);
    expect(busy.duration_ms).toBeLessThan(3000);
  });

  it("an import() left in a function deployed before deploy refused it fails the run as FUNCTION_ERROR", async () => {
    for (const module of ["./helpers.js", "pgfn", "node:fs"]) {
      const r = await run("legacy", { module });
      expect(r).toMatchObject({ status: "failed", error_code: "FUNCTION_ERROR" });
      expect(r.error_message).toMatch(/could not load module/);
    }
    expect((await run("echo", { after: "legacy" })).result).toEqual({ echo: { after: "legacy" } });
  });

  it("fails a handler that grows past memory_limit_mb as MEMORY_EXCEEDED; the next run is served", async () => {
    const bomb = await run("bomb", {}, 30_000);
    expect(bomb).toMatchObject({ status: "failed", error_code: "MEMORY_EXCEEDED" });
    expect(bomb.error_message).toMatch(/32 MB/);
    expect((await run("echo", { after: "bomb" })).result).toEqual({ echo: { after: "bomb" } });
  });
});

describe("stack traces", () => {
  it("name the deployed file and its lines, not the compiled module's", async () => {
    const r = await run("stacked");
    expect(r).toMatchObject({ error_code: "FUNCTION_ERROR", error_message: "order 7 is invalid" });
    const stack = r.logs.at(-1).message as string;
    // `new Error(` on line 7, check( on line 12, as stacked.ts has them.
    expect(stack).toMatch(
      /^order 7 is invalid\n\s+at check \(stacked\.ts:7:15\)\n\s+at h \(stacked\.ts:12:3\)/,
    );
    expect(stack).not.toMatch(/handler\.js/);
  });

  it("are mapped in what a handler logs itself, when it succeeds too", async () => {
    const r = await run("caught");
    expect(r).toMatchObject({ status: "succeeded", result: "ok" });
    expect(r.logs[0].message).toMatch(/at \w+ \(caught\.ts:4:5\)/);
  });

  it("name the compiled module of a function deployed before maps were kept", async () => {
    // Its stored module as deploys wrote it then: no trailing source map.
    const { rows } = await t.pool.query(
      `select convert_from(wasm, 'UTF8') as code from pgfn.functions where name = 'stacked'`,
    );
    const code = (rows[0].code as string).replace(/\/\/# sourceMappingURL=.*\n?$/, "");
    expect(code).not.toBe(rows[0].code);
    await t.pool.query(
      `update pgfn.functions set wasm = convert_to($1, 'UTF8'), wasm_sha256 = encode(sha256(convert_to($1, 'UTF8')), 'hex') where name = 'stacked'`,
      [code],
    );
    const r = await run("stacked");
    expect(r).toMatchObject({ error_code: "FUNCTION_ERROR", error_message: "order 7 is invalid" });
    expect(r.logs.at(-1).message).toMatch(/at check \(handler\.js:\d+:\d+\)/);
  });
});

describe("entrypoint", () => {
  const entrypoint = (value: string) =>
    t.pool.query(`update pgfn.functions set entrypoint = $1 where name = 'entries'`, [value]);

  it("'handle' calls the default export, any other the export of that name", async () => {
    expect((await run("entries")).result).toBe("default");
    await entrypoint("other");
    expect((await run("entries", { n: 1 })).result).toEqual({ other: { n: 1 } });
    await entrypoint("handle");
    expect((await run("entries")).result).toBe("default");
    // Without a default export, "handle" is the export named handle.
    expect((await run("echo", { n: 2 })).result).toEqual({ echo: { n: 2 } });
  });

  it("a missing or non-function export fails the run once, naming it and the exports", async () => {
    for (const name of ["missing", "notfn"]) {
      await entrypoint(name);
      const r = await run("entries");
      expect(r).toMatchObject({
        status: "failed",
        error_code: "FUNCTION_ERROR",
        attempt: 1,
        will_retry: false,
        error_message: `The handler does not export a function named "${name}", the function's entrypoint; export it, or set entrypoint to one it exports (it exports default, handle, notfn, other).`,
      });
    }
    await entrypoint("handle");
  });

  it("an update is checked for the function's entrypoint, not for the default export", async () => {
    const deploy = (source: string) =>
      deployFunction(t.db, { name: "picky", source, fileName: "picky.ts", update: true });
    await deploy(`export default () => "default";`);
    await t.pool.query(`update pgfn.functions set entrypoint = 'onSignup' where name = 'picky'`);
    await expect(deploy(`export default () => "default";`)).rejects.toThrow(
      /picky\.ts does not export onSignup, the function's entrypoint/,
    );
    await expect(deploy(`export const onSignup = 5;`)).rejects.toThrow(
      /its export onSignup is not a function/,
    );
    await deploy(`export const onSignup = (e: { payload: unknown }) => ({ signup: e.payload });`);
    expect((await run("picky", { n: 3 })).result).toEqual({ signup: { n: 3 } });
  });

  it("is set at deploy, and a PATCH of it alone is checked against the stored code", async () => {
    const two = `export default () => "default";\nexport const onOrder = (e: { payload: unknown }) => ({ order: e.payload });`;
    await expect(
      deployFunction(t.db, {
        name: "multi",
        source: two,
        fileName: "multi.ts",
        entrypoint: "onRefund",
      }),
    ).rejects.toThrow(/multi\.ts does not export onRefund, the function's entrypoint/);
    await deployFunction(t.db, {
      name: "multi",
      source: two,
      fileName: "multi.ts",
      entrypoint: "onOrder",
    });
    expect((await run("multi", { n: 4 })).result).toEqual({ order: { n: 4 } });

    const refused = await patchFunction(t.db, "multi", { entrypoint: "onRefund" }).then(
      () => undefined,
      (e: unknown) => e as PgfnError,
    );
    expect(refused?.code).toBe("INVALID_REQUEST");
    expect(refused?.message).toBe(
      'entrypoint onRefund does not fit "multi"\'s code: its export onRefund is not a function (event, ctx) => result',
    );
    await patchFunction(t.db, "multi", { entrypoint: "handle" });
    expect((await run("multi")).result).toBe("default");
    // A module is checked for the export too.
    await deployFunction(t.db, { name: "modular", wasm: await readFile(exampleWasm("echo")) });
    await expect(patchFunction(t.db, "modular", { entrypoint: "onOrder" })).rejects.toThrow(
      /^entrypoint onOrder does not fit "modular"'s code: The module does not export a function named "onOrder"/,
    );
    const { rows } = await t.pool.query(
      `select name, entrypoint from pgfn.functions where name in ('multi', 'modular') order by name`,
    );
    expect(rows).toEqual([
      { name: "modular", entrypoint: "handle" },
      { name: "multi", entrypoint: "handle" },
    ]);
  });
});

describe("deploy refuses, naming the line", () => {
  const refusal = async (source: string, fileName = "handler.ts") => {
    const error = await deployFunction(t.db, { name: "refused", source, fileName }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(PgfnError);
    expect((error as PgfnError).code).toBe("INVALID_REQUEST");
    return (error as PgfnError).message;
  };

  it("a source over 1 MiB, as 413 in the user's terms", async () => {
    const source = `export default () => ${JSON.stringify("x".repeat(1024 * 1024))};`;
    const error = await deployFunction(t.db, { name: "refused", source, fileName: "big.js" }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: "PAYLOAD_TOO_LARGE" });
    expect((error as Error).message).toBe(
      `The handler big.js for "refused" is ${source.length} bytes; a TypeScript/JavaScript source may be at most 1048576 bytes (1 MiB).`,
    );
  });

  it("a syntax error", async () => {
    expect(await refusal(`export default (event) => {\n  const x: number = ;\n};`)).toMatch(
      /^Invalid handler for "refused": handler\.ts:2:21: /,
    );
  });

  it("a value import from anything but pgfn", async () => {
    expect(
      await refusal(
        `import type { Handler } from "pgfn";\nimport { readFile } from "node:fs";\nexport default () => readFile;`,
      ),
    ).toMatch(
      /handler\.ts:2:\d+: imports "node:fs": a handler may import only types \(`import type`\), from "pgfn" or anywhere else/,
    );
  });

  it("an import() or require() of a name computed at run time, globs included", async () => {
    const computed =
      /: (import\(\) of a name computed at run time|require\(\)) cannot load anything in the sandbox( \(there is no require there\))?: a handler may import only types \(`import type`\), from "pgfn" or anywhere else/;
    for (const [source, fileName, at] of [
      [`const name = "./util.js";\nexport default async () => import(name);`, "handler.ts", "2:28"],
      // A "./" or "../" prefix would make esbuild glob the server's files.
      [
        `export default async (e) => {\n  return import(\`../\${e.payload.file}.json\`);\n};`,
        "handler.ts",
        "2:10",
      ],
      [`export default async (e) => import(\`./\${e.payload.file}\`);`, "handler.mts", "1:29"],
      [
        `export default (e) => {\n  return require("./" + e.payload.file);\n};`,
        "handler.js",
        "2:10",
      ],
      [`const m = "fs";\nexport default () => require(m);`, "handler.js", "2:22"],
    ]) {
      const message = await refusal(source!, fileName);
      expect(message, source).toMatch(computed);
      expect(message, source).toContain(`${fileName}:${at}: `);
    }
  });

  it("a value import from pgfn, in our words", async () => {
    expect(
      await refusal(
        `import { run } from "pgfn";\nexport default () => run;`,
        "handlers/valueimport.ts",
      ),
    ).toBe(
      'Invalid handler for "refused": handlers/valueimport.ts:1:10: imports the value run from "pgfn", which has none in the sandbox: a handler may import only types from "pgfn" (`import type { Handler } from "pgfn"`)',
    );
  });

  it("nesting past 1000 levels, before esbuild parses it (500,000 levels crashed it)", async () => {
    for (const [source, at] of [
      ["export default () => " + "[".repeat(100_000) + "]".repeat(100_000), "1:1021"],
      ["let a;\nexport default () => " + "!".repeat(100_000) + "a", "2:1021"],
      ["let a;\nexport default () => a" + "\n.a".repeat(100_000), "1002:1"],
      ["let a;\nexport default () => " + "a?a:".repeat(100_000) + "0", "2:4019"],
    ] as const) {
      expect(await refusal(source, "deep.js")).toBe(
        `Invalid handler for "refused": deep.js:${at}: nests more than 1000 levels deep (brackets, calls, or operators inside one another): split the expression up`,
      );
    }
  });

  it("a default export that is not a function, top-level code that throws, loops or overflows the stack", async () => {
    const cases: [string, string][] = [
      [
        `export default { handle(event, ctx) { return 1; } };`,
        "it exports no function: `export default` a function (event, ctx) => result, or export one named `handle` (an object with a handle method is not one).",
      ],
      [`export const handle = 42;`, "it exports no function"],
      // A throw is named by its line, as a syntax error is: in the user's
      // file, through the source map (the type annotation shifts columns).
      [
        `const config = JSON.parse("{");\nexport default () => config;`,
        "1:21: its top-level code threw SyntaxError: ",
      ],
      [
        `// settings\nconst n: number = 1;\n  if (n) throw new RangeError("n is " + n);\nexport default () => 1;`,
        "3:20: its top-level code threw RangeError: n is 1.",
      ],
      [`throw "no config";\nexport default () => 1;`, "its top-level code threw no config"],
      [
        `await new Promise(() => {});\nexport default () => 1;`,
        "its top-level code awaits something that never settles",
      ],
      [
        `for (;;) {}\nexport default () => 1;`,
        "its top-level code ran for more than 1000 ms (a loop?)",
      ],

      [
        `function f(n) { return f(n + 1) + 1; }\nf(0);\nexport default () => 1;`,
        "its top-level code",
      ],
    ];
    for (const [source, expected] of cases) {
      const message = await refusal(source, "odd.ts");
      const at = /^\d+:\d+: /.test(expected) ? "" : " ";
      expect(message, source).toContain(`Invalid handler for "refused": odd.ts:${at}${expected}`);
    }
  });

  it("a file with no handler", async () => {
    expect(await refusal(`export const x = 1;`, "x.js")).toMatch(
      /x\.js exports no handler: .* \(a bundle: build it as an ES module, esbuild's --format=esm\)/,
    );
  });

  it("and stores nothing", async () => {
    const { rows } = await t.pool.query(`select 1 from pgfn.functions where name = 'refused'`);
    expect(rows).toEqual([]);
  });
});
