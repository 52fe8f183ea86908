// The JavaScript engine on its own (jsEngine.ts), with host functions
// answered in the test: the ctx a handler gets is the one src/handler.ts
// types, a host call's failure reaches the handler as a rejection, and an
// engine left by a failed run does not serve the next one.
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { compileJavaScript } from "../src/sandbox/jsCompile.js";
import { engineStarts, invokeJavaScript } from "../src/sandbox/jsEngine.js";
import { MAX_OUTPUT_BYTES } from "../src/sandbox/invocation.js";
import { MAX_MESSAGE_CHARS } from "../src/sandbox/logs.js";
import { MAX_HOST_ARGUMENT_BYTES, type HostReply } from "../src/sandbox/protocol.js";

const welcome = new URL("./fixtures/handlers/welcome.ts", import.meta.url);
const event = {
  id: 1,
  attempt: 1,
  trigger: "database",
  function: "welcome",
  schema: "public",
  table: "users",
  operation: "INSERT",
  old: null,
  new: { id: 7, name: "Ada", email: "ada@example.com" },
  timestamp: new Date().toISOString(),
};

describe("the issue's TypeScript example", () => {
  it("gets the ctx its types describe: env, log, db.query, fetch, retryAfter", async () => {
    const code = await compileJavaScript(await readFile(welcome, "utf8"), "welcome.ts");
    const calls: [string, unknown][] = [];
    let mailStatus = 200;
    const callHost = (name: string, payload: unknown): HostReply => {
      calls.push([name, payload]);
      if (name === "db_query")
        return { ok: true, value: { rows: [{ n: 5 }], rowCount: 1, fields: ["n"] } };
      return { ok: true, value: { status: mailStatus, headers: {}, body: '{"queued":true}' } };
    };
    const retries: unknown[] = [];
    const options = {
      config: { SENDER: "hi@example.com" },
      callHost,
      onRetry: (r: unknown) => retries.push(r),
      memoryLimitBytes: 64 << 20,
    };
    const ok = await invokeJavaScript(code, event, options);
    expect(ok).toMatchObject({
      ok: true,
      output: { greeted: 5, from: "hi@example.com", mail: { queued: true } },
    });
    expect(ok.logs.map((l) => [l.level, l.message])).toEqual([
      ["info", "greeting ada@example.com"],
    ]);
    expect(calls).toEqual([
      [
        "db_query",
        {
          sql: "insert into greetings (email) values ($1) returning id as n",
          params: ["ada@example.com"],
        },
      ],
      [
        "http_fetch",
        { url: "https://api.example.com/mail", method: "POST", body: '{"to":"ada@example.com"}' },
      ],
    ]);

    mailStatus = 429;
    const throttled = await invokeJavaScript(code, event, options);
    expect(throttled).toMatchObject({
      ok: false,
      error: { code: "FUNCTION_ERROR", message: "mail API throttled" },
    });
    expect(retries).toEqual([{ afterMs: 30_000 }]);

    const skipped = await invokeJavaScript(
      code,
      { ...event, trigger: "manual", new: undefined },
      options,
    );
    expect(skipped.output).toEqual({ skipped: true });
  });
});

describe("the engine", () => {
  const run = async (source: string, options: Parameters<typeof invokeJavaScript>[2] = {}) =>
    invokeJavaScript(await compileJavaScript(source, "h.js"), {}, options);

  it("rejects the handler's await when a host call fails; uncaught, the run fails with it", async () => {
    const callHost = (): HostReply => ({
      ok: false,
      error: { message: "db_query failed: permission denied for table x", transient: false },
    });
    const caught = await run(
      `export default async (e, ctx) => { try { await ctx.db.query("select 1"); } catch (err) { return err.message; } }`,
      { callHost },
    );
    expect(caught.output).toBe("db_query failed: permission denied for table x");
    const uncaught = await run(`export default (e, ctx) => ctx.db.query("select 1")`, { callHost });
    expect(uncaught.error).toEqual({
      code: "HOST_FUNCTION_ERROR",
      message: "db_query failed: permission denied for table x",
      transient: false,
    });
    // The handler's own error after one it caught is its own, retried as a handler error.
    const own = await run(
      `export default async (e, ctx) => {
        try { await ctx.fetch("https://x.example"); } catch {}
        throw new Error("row is invalid");
      }`,
      {
        callHost: () => ({ ok: false, error: { message: "http_fetch refused", transient: true } }),
      },
    );
    expect(own.error).toEqual({ code: "FUNCTION_ERROR", message: "row is invalid" });
    // A transient failure, uncaught, says so; awaited in a chain, it is still the host's.
    const transient = await run(
      `export default (e, ctx) => ctx.fetch("https://x.example").then((r) => r.json())`,
      {
        callHost: () => ({
          ok: false,
          error: { message: "http_fetch timed out", transient: true },
        }),
      },
    );
    expect(transient.error).toEqual({
      code: "HOST_FUNCTION_ERROR",
      message: "http_fetch timed out",
      transient: true,
    });
  });

  it("gives console.log/info/debug/warn/error, writing the run's logs as ctx.log does", async () => {
    const r = await run(
      `export default () => {
        console.log("a", { b: 1 }, 2, [3], null);
        console.info("i"); console.debug("d"); console.warn("w"); console.error("e", new Error("x").message);
        console.log();
        return typeof console;
      }`,
    );
    expect(r.output).toBe("object");
    expect(r.logs.map((l) => [l.level, l.message])).toEqual([
      ["info", 'a {"b":1} 2 [3] null'],
      ["info", "i"],
      ["debug", "d"],
      ["warn", "w"],
      ["error", "e x"],
      ["info", ""],
    ]);
  });

  it("counts ctx.retryAfter or ctx.noRetry returned where throw was meant as thrown", async () => {
    const said: unknown[] = [];
    const r = await run(`export default (e, ctx) => ctx.retryAfter(2000, "throttled")`, {
      onRetry: (x) => said.push(x),
    });
    expect(r.error).toEqual({ code: "FUNCTION_ERROR", message: "throttled" });
    expect(said).toEqual([{ afterMs: 2000 }]);
    const never = await run(`export default async (e, ctx) => ctx.noRetry()`);
    expect(never.error?.message).toBe("the handler asked not to be retried");
    // A decision, not a fault: the message is the run's, no stack is logged;
    // an error of the handler's own, thrown, logs its stack.
    expect(r.logs).toEqual([]);
    const thrown = await run(`export default (e, ctx) => { throw ctx.noRetry("bad row"); }`);
    expect([thrown.error?.message, thrown.logs]).toEqual(["bad row", []]);
    const fault = await run(`export default () => { throw new Error("oops"); }`);
    expect(fault.logs).toEqual([
      expect.objectContaining({ level: "error", message: expect.stringMatching(/^oops\n.*at /s) }),
    ]);
    // An error of the handler's own, returned, is a result like any other.
    expect((await run(`export default () => new Error("mine")`)).ok).toBe(true);
  });

  it("calls the entrypoint's export; with the default, the default export or else handle", async () => {
    const both = `export default () => "default"; export const handle = () => "handle"; export const other = () => "other";`;
    expect((await run(both)).output).toBe("default");
    expect((await run(both, { entry: "handle" })).output).toBe("default");
    expect((await run(both, { entry: "other" })).output).toBe("other");
    expect((await run(`export const handle = () => "handle";`)).output).toBe("handle");
    expect((await run(`export default 1; export const handle = () => "handle";`)).output).toBe(
      "handle",
    );
    expect((await run(`export default 1;`)).error).toEqual({
      code: "FUNCTION_ERROR",
      message:
        'The handler exports no function to call: export default a function (event, ctx) => result, or export one named "handle" (it exports default).',
    });
    expect((await run(both, { entry: "nope" })).error).toEqual({
      code: "FUNCTION_ERROR",
      message:
        'The handler does not export a function named "nope", the function\'s entrypoint; export it, or set entrypoint to one it exports (it exports default, handle, other).',
    });
    // A long list is cut.
    const many = Array.from({ length: 25 }, (_, i) => `export const e${i} = ${i};`).join("\n");
    expect(
      (await run(`${many}\nexport default () => 1;`, { entry: "nope" })).error?.message,
    ).toMatch(/\(it exports default, e0, e1, e10, .*, e24, e3, 6 more\)\.$/);
  });

  it("fails a handler that waits for ever, without waiting for the deadline", async () => {
    const r = await run(`export default () => new Promise(() => {})`);
    expect(r.error?.message).toMatch(/promise never settled/);
  });

  it("fails unbounded recursion as FUNCTION_ERROR and serves the next call", async () => {
    const r = await run(`function f() { return f() + 1; } export default () => f();`);
    expect(r.error).toEqual({
      code: "FUNCTION_ERROR",
      message: "The handler overflowed the stack (unbounded recursion?).",
    });
    expect((await run(`export default () => "next"`)).output).toBe("next");
  });

  it("refuses memory past the limit even for a handler that catches the error, then serves the next call at the limit", async () => {
    const r = await run(
      `export default () => { const keep = []; try { for (;;) keep.push(new Array(1e5).fill(keep.length)); } catch (e) { keep.length = 0; throw new Error("caught: " + e); } }`,
      { memoryLimitBytes: 32 << 20 },
    );
    expect(r.error?.code).toBe("MEMORY_EXCEEDED");
    expect(r.memoryPeakBytes).toBeLessThanOrEqual(32 << 20);
    const next = await run(`export default () => "next"`, { memoryLimitBytes: 16 << 20 });
    expect(next).toMatchObject({ ok: true, output: "next" });
    expect(next.memoryPeakBytes).toBeLessThanOrEqual(16 << 20);
  });

  it("passes the event, ctx's replies and the result with the context's own JSON and Promise, whatever the handler's code replaces", async () => {
    const callHost = (): HostReply => ({ ok: true, value: { rows: [{ a: 1 }], rowCount: 1 } });
    const r = await invokeJavaScript(
      await compileJavaScript(
        `JSON.parse = () => "replaced"; JSON.stringify = () => "replaced";
Promise.resolve = Promise.reject = () => { throw new Error("replaced"); };
export default async (event, ctx) => ({ event, rows: (await ctx.db.query("q")).rows });`,
        "h.js",
      ),
      { n: 1 },
      { callHost },
    );
    expect(r).toMatchObject({ ok: true, output: { event: { n: 1 }, rows: [{ a: 1 }] } });
  });

  it("leaves no host function on the global object, and survives junk passed to ctx's", async () => {
    const r = await run(
      `export default async (event, ctx) => {
  const globals = Object.getOwnPropertyNames(globalThis).filter((k) => k.startsWith("__pgfn"));
  const caught = [];
  const attempt = async (f) => { try { await f(); caught.push("ok"); } catch (e) { caught.push(String(e.message)); } };
  ctx.log.info();
  ctx.log.warn({ toString() { return "obj"; } }, 5n);
  await attempt(() => ctx.log.error(Symbol("s")));
  await attempt(() => ctx.db.query({}, 5));
  await attempt(() => ctx.db.query("select 1", [1n]));
  await attempt(() => ctx.fetch(undefined, 5));
  await attempt(() => ctx.fetch("x", { headers: { get a() { throw new Error("getter"); } } }));
  const e1 = ctx.retryAfter("soon", {});
  const e2 = ctx.noRetry(7);
  return { globals, caught, e1: e1.message, e2: e2.message, frozen: Object.isFrozen(ctx) && Object.isFrozen(ctx.db) };
};`,
    );
    expect(r.logs.map((l) => l.message)).toEqual(["undefined", "obj 5", "Symbol(s)"]);
    expect(r).toMatchObject({
      ok: true,
      output: {
        globals: [],
        caught: [
          "ok",
          "db_query is not available here",
          expect.stringMatching(/BigInt/i),
          "http_fetch is not available here",
          "getter",
        ],
        e1: "[object Object]",
        e2: "7",
        frozen: true,
      },
    });
  });

  it("redacts the env's secrets from messages and logs", async () => {
    const r = await run(
      `export default (e, ctx) => { ctx.log.warn("key " + ctx.env.API_KEY); throw new Error("bad key " + ctx.env.API_KEY); }`,
      { config: { API_KEY: "sk_live_abcdef123456" } },
    );
    expect(JSON.stringify(r)).not.toContain("sk_live_abcdef123456");
    // Cut inside the engine, a long line keeps enough past the kept
    // characters for a secret across the cut to be redacted whole.
    const long = `"x".repeat(${MAX_MESSAGE_CHARS - 5}) + ctx.env.API_KEY + "y".repeat(2e4)`;
    const cut = await run(
      `export default (e, ctx) => { ctx.log.warn(${long}); ctx.log.info("f", { k: ${long} }); throw new Error(${long}); }`,
      { config: { API_KEY: "sk_live_abcdef123456" } },
    );
    expect(cut.logs).toHaveLength(3);
    expect(cut.error?.message).toMatch(/^x+\[reda…$/);
    expect(JSON.stringify(cut)).not.toContain("sk_li");
  });

  it("copies no handler string longer than its limit out of the engine: host arguments refused, log lines, errors and the result cut or refused inside it", async () => {
    // Every string QuickJS hands this thread is decoded from its memory by
    // Emscripten's TextDecoder: the largest one says what crossed.
    let largest = 0;
    const decode = TextDecoder.prototype.decode;
    TextDecoder.prototype.decode = function (input, options) {
      largest = Math.max(largest, input?.byteLength ?? 0);
      return decode.call(this, input, options);
    };
    // 6M UTF-16 units, 9 MB as UTF-8; a concatenation, as handlers make them.
    const big = `const big = "é".repeat(3e6) + "x".repeat(3e6);`;
    const refused = (name: string, length: number) =>
      `${name}: the argument is at least ${length} bytes; at most ${MAX_HOST_ARGUMENT_BYTES} are accepted`;
    const cut = (text: string) => `${text.repeat(MAX_MESSAGE_CHARS).slice(0, MAX_MESSAGE_CHARS)}…`;
    const calls: string[] = [];
    try {
      const r = await run(
        `${big}
export default async (e, ctx) => {
  const caught = [];
  const attempt = async (f) => { try { await f(); caught.push("ok"); } catch (err) { caught.push(err.message); } };
  await attempt(() => ctx.db.query(big));
  await attempt(() => ctx.db.query("select $1", [big]));
  await attempt(() => ctx.fetch(big));
  await attempt(() => ctx.fetch("https://x", { body: big }));
  await attempt(() => ctx.fetch("https://x", { method: big }));
  await attempt(() => ctx.fetch("https://x", { headers: { a: big } }));
  ctx.log.info(big, { big });
  ctx.log.warn({ toString: () => big });
  const retry = ctx.retryAfter(big);
  return { caught, kept: ctx.noRetry(big).message.length, retry: retry.message.length };
};`,
        { callHost: (name) => (calls.push(name), { ok: true, value: null }) },
      );
      expect(r.error).toBeUndefined();
      expect(r.output).toEqual({
        caught: [
          refused("db_query", 6e6 + 2),
          refused("db_query", 6e6 + 4),
          refused("http_fetch", 6e6),
          refused("http_fetch", 6e6),
          refused("http_fetch", 6e6 + 2),
          refused("http_fetch", 6e6 + 8),
        ],
        // The handler's own message stays whole in the engine.
        kept: 6e6,
        retry: expect.any(Number),
      });
      expect(calls).toEqual([]);
      expect(r.logs.map((l) => l.message)).toEqual([cut("é"), cut("é")]);

      const output = await run(`${big} export default () => big;`);
      expect(output.error).toEqual({
        code: "FUNCTION_ERROR",
        message: `The handler's output is at least ${6e6 + 2} bytes; at most ${MAX_OUTPUT_BYTES} are kept.`,
      });
      for (const [thrower, message] of [
        [`export default () => { throw new Error(big); };`, cut("é")],
        [`export default () => { const e = new Error("m"); e.name = big; throw e; };`, cut("é")],
        [`export default () => { const e = new Error("m"); e.stack = big; throw e; };`, "m"],
        [
          `export default () => { throw big; };`,
          `the handler threw ${"é".repeat(MAX_MESSAGE_CHARS - 18)}…`,
        ],
        [
          `export default () => { throw [big]; };`,
          `the handler threw ["${"é".repeat(MAX_MESSAGE_CHARS - 20)}…`,
        ],
        [`throw new Error(big); export default () => 1;`, cut("é")],
        [`export default async () => { await null; throw new Error(big); };`, cut("é")],
        [
          `export default () => ({ toJSON() { throw new Error(big); } });`,
          `The handler's result cannot be stored as JSON: ${"é".repeat(MAX_MESSAGE_CHARS - 47)}…`,
        ],
      ]) {
        const r = await run(`${big} ${thrower}`);
        expect(r.error, thrower).toEqual({ code: "FUNCTION_ERROR", message });
        for (const log of r.logs)
          expect(log.message.length).toBeLessThanOrEqual(MAX_MESSAGE_CHARS + 1);
      }
    } finally {
      TextDecoder.prototype.decode = decode;
    }
    expect(largest).toBeGreaterThan(0);
    expect(largest).toBeLessThan(64 * 1024);
  });

  it("describes what a handler threw whatever it replaced or booby-trapped, and serves the next call on the same engine", async () => {
    await run(`export default () => "warm"`);
    const started = engineStarts();
    const cases: [source: string, message: string][] = [
      [
        `export default () => { JSON.stringify = () => { throw new Error("replaced"); }; globalThis.String = JSON.stringify; throw { a: 1 }; };`,
        `the handler threw {"a":1}`,
      ],
      [
        `export default () => { Object.defineProperty(Error.prototype, "name", { get() { throw new Error("name"); } }); String.prototype.slice = () => ""; throw new Error("x".repeat(1e4)); };`,
        `${"x".repeat(MAX_MESSAGE_CHARS)}…`,
      ],
      [
        `export default () => { const e = new RangeError("r"); for (const k of ["message", "stack"]) Object.defineProperty(e, k, { get() { throw new Error(k); } }); throw e; };`,
        "RangeError: (a message that cannot be shown)",
      ],
      [
        `export default () => { throw new Proxy(new Error("p"), { getPrototypeOf() { throw 1; }, get() { throw 2; } }); };`,
        "the handler threw a value that cannot be shown",
      ],
      [
        `Object.prototype.isPrototypeOf = () => false; Reflect.get = () => "replaced"; export default async () => { throw new TypeError("t"); };`,
        "TypeError: t",
      ],
      // What a ctx function takes may throw, or be refused, half-way through.
      [
        `export default (e, ctx) => ctx.fetch("x", { method: "GET", headers: { get a() { throw new Error("getter"); } } });`,
        "getter",
      ],
      [
        `export default (e, ctx) => ctx.fetch("x".repeat(${MAX_HOST_ARGUMENT_BYTES + 1}));`,
        `http_fetch: the argument is at least ${MAX_HOST_ARGUMENT_BYTES + 1} bytes; at most ${MAX_HOST_ARGUMENT_BYTES} are accepted`,
      ],
    ];
    for (const [source, message] of cases) {
      const r = await run(source);
      expect(r.error, source).toEqual({ code: "FUNCTION_ERROR", message });
    }
    expect((await run(`export default () => "next"`)).output).toBe("next");
    expect(engineStarts()).toBe(started);
  });

  it("fails a run whose ctx call overflowed the host's stack, whatever the handler caught, and drops the engine", async () => {
    for (const call of ["ctx.log.info(o)", "ctx.fetch(o)"]) {
      await run(`export default () => "warm"`);
      const started = engineStarts();
      const r = await run(
        `export default async (e, ctx) => {
  const o = { toString() { ${call}; return "x"; } };
  try { await ${call}; } catch (err) { return "caught: " + err.message; }
  return "returned";
};`,
      );
      expect(r.error, call).toEqual({
        code: "FUNCTION_ERROR",
        message: "The handler overflowed the stack (unbounded recursion?).",
      });
      expect((await run(`export default () => "next"`)).output).toBe("next");
      expect(engineStarts(), call).toBe(started + 1);
    }
  });
});
