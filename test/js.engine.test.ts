// The JavaScript engine on its own (jsEngine.ts), with host functions
// answered in the test: the ctx a handler gets is the one src/handler.ts
// types, a host call's failure reaches the handler as a rejection, and an
// engine left by a failed run does not serve the next one.
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { compileJavaScript } from "../src/sandbox/jsCompile.js";
import { invokeJavaScript } from "../src/sandbox/jsEngine.js";
import type { HostReply } from "../src/sandbox/protocol.js";

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
      code: "FUNCTION_ERROR",
      message: "db_query failed: permission denied for table x",
    });
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
  });
});
