// The sandbox's plain invocation: example handlers called through Extism, a
// fresh instance per call. No database needed.
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { beforeAll, describe, expect, it } from "vitest";
import { buildExamples, exampleNames, examplePath } from "../examples/build.js";
import { invokeHandler } from "../src/sandbox/invocation.js";
import { compileModule, ModuleCache, sha256Hex, validateWasm } from "../src/sandbox/module.js";

const event = {
  id: 42,
  attempt: 1,
  trigger: "database",
  function: "send_welcome_email",
  schema: "public",
  table: "users",
  operation: "INSERT",
  old: null,
  new: { id: 7, email: "ada@example.com", name: "Ada" },
  timestamp: "2026-02-06T09:00:00Z",
};

beforeAll(async () => {
  // globalSetup builds them too; this file also runs on its own.
  if (exampleNames().some((name) => !existsSync(examplePath(name)))) {
    await buildExamples({ quiet: true });
  }
});

async function example(name: string): Promise<WebAssembly.Module> {
  const wasm = await readFile(examplePath(name));
  return compileModule(wasm, sha256Hex(wasm));
}

/**
 * A hand-assembled module of functions of type () -> (): `imports` as
 * [module, name] pairs, then one defined function exported as `exportName`.
 */
function tinyModule({
  imports = [],
  exportName,
}: {
  imports?: [string, string][];
  exportName: string;
}): Uint8Array {
  const str = (s: string) => [s.length, ...Buffer.from(s)];
  // Every size below fits in one LEB128 byte.
  const section = (id: number, body: number[]) => [id, body.length, ...body];
  return Uint8Array.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, [1, 0x60, 0, 0]),
    ...section(2, [imports.length, ...imports.flatMap(([m, n]) => [...str(m), ...str(n), 0, 0])]),
    ...section(3, [1, 0]),
    ...section(7, [1, ...str(exportName), 0, imports.length]),
    ...section(10, [1, 2, 0, 0x0b]),
  ]);
}

describe("invokeHandler", () => {
  it("round-trips 1 KB of JSON through echo", async () => {
    const input = { ...event, new: { id: 7, bio: "é✓ ".repeat(300), tags: ["a", "b"] } };
    expect(JSON.stringify(input).length).toBeGreaterThan(1024);
    const outcome = await invokeHandler(await example("echo"), input);
    expect(outcome).toMatchObject({ ok: true, output: input, logs: [] });
    expect(outcome.error).toBeUndefined();
    expect(outcome.durationMs).toBeGreaterThan(0);
  });

  it("greets the new row in the demo and logs once at info", async () => {
    const outcome = await invokeHandler(await example("demo"), event);
    expect(outcome.ok).toBe(true);
    expect(outcome.output).toEqual({
      ok: true,
      greeting: "Welcome, ada@example.com!",
      event_id: 42,
      operation: "INSERT",
    });
    expect(outcome.logs).toMatchObject([{ level: "info", message: "greeting ada@example.com" }]);
  });

  it("greets by name when the row has no email", async () => {
    const input = { ...event, operation: "UPDATE", new: { id: 7, name: 'Ada "the first"' } };
    const outcome = await invokeHandler(await example("demo"), input);
    expect(outcome.output).toMatchObject({ greeting: 'Welcome, Ada "the first"!' });
  });

  it("reports a handler's error_set message", async () => {
    const outcome = await invokeHandler(await example("demo"), { hello: "world" });
    expect(outcome).toMatchObject({
      ok: false,
      output: null,
      error: { code: "FUNCTION_ERROR", message: "expected a database event with a new row" },
    });
  });

  it("reports a thrown error with its message", async () => {
    const outcome = await invokeHandler(await example("fail"), event);
    expect(outcome.ok).toBe(false);
    expect(outcome.error?.code).toBe("FUNCTION_ERROR");
    expect(outcome.error?.message).toContain("demo failure");
    expect(outcome.error?.message).toContain("trap");
  });

  it("fails output that is not JSON", async () => {
    const outcome = await invokeHandler(await example("notjson"), event);
    expect(outcome.ok).toBe(false);
    expect(outcome.error).toEqual({
      code: "FUNCTION_ERROR",
      message: "handler output is not JSON: hello, not json",
    });
  });

  it("gives every invocation a fresh instance", async () => {
    const module = await example("counter");
    const one = await invokeHandler(module, event);
    const two = await invokeHandler(module, event);
    const concurrent = await Promise.all([1, 2, 3].map(() => invokeHandler(module, event)));
    for (const outcome of [one, two, ...concurrent]) expect(outcome.output).toEqual({ calls: 1 });
  });

  it("fails a missing entry point, naming it", async () => {
    const outcome = await invokeHandler(await example("echo"), event, { entry: "nope" });
    expect(outcome.error).toEqual({
      code: "FUNCTION_ERROR",
      message: 'The module does not export a function named "nope".',
    });
  });

  it("refuses input that cannot be sent as JSON", async () => {
    const outcome = await invokeHandler(await example("echo"), { id: 1n });
    expect(outcome.error?.code).toBe("INVALID_REQUEST");
  });
});

describe("compileModule", () => {
  it("refuses bytes whose sha256 is not the stored one", async () => {
    const wasm = await readFile(examplePath("echo"));
    await expect(compileModule(wasm, "0".repeat(64))).rejects.toThrow(/hash to sha256/);
  });

  it("refuses bytes that are not WebAssembly", async () => {
    const garbage = Buffer.from("this is not a wasm module");
    await expect(compileModule(garbage, sha256Hex(garbage))).rejects.toThrow(
      /not a valid WebAssembly module/,
    );
  });
});

describe("validateWasm", () => {
  it("accepts every example", async () => {
    for (const name of exampleNames()) await validateWasm(await readFile(examplePath(name)));
  });

  it("refuses bytes that are not WebAssembly", async () => {
    await expect(validateWasm(Buffer.from([0, 1, 2, 3]))).rejects.toThrow(
      /not a valid WebAssembly module/,
    );
  });

  it("refuses a module without handle, naming it", async () => {
    const wasm = tinyModule({ exportName: "other" });
    await expect(validateWasm(wasm)).rejects.toThrow(/function named "handle"/);
    await expect(validateWasm(wasm, "other")).resolves.toBeUndefined();
  });

  it("refuses imports pgfn does not provide, with a hint for AssemblyScript's abort", async () => {
    const wasm = tinyModule({ imports: [["env", "abort"]], exportName: "handle" });
    await expect(validateWasm(wasm)).rejects.toThrow(/"env" "abort".*--use abort=/);
  });
});

describe("ModuleCache", () => {
  it("loads and compiles a module once for concurrent gets", async () => {
    const wasm = await readFile(examplePath("echo"));
    const cache = new ModuleCache();
    let loads = 0;
    const load = async () => {
      loads += 1;
      return wasm;
    };
    const modules = await Promise.all([1, 2, 3].map(() => cache.get(sha256Hex(wasm), load)));
    expect(loads).toBe(1);
    expect(new Set(modules).size).toBe(1);
    expect(await cache.get(sha256Hex(wasm), load)).toBe(modules[0]);
    expect(loads).toBe(1);
  });

  it("evicts the least recently used module", async () => {
    const bytes = await Promise.all(["echo", "demo", "fail"].map((n) => readFile(examplePath(n))));
    const [echo, demo, fail] = bytes.map((wasm) => ({
      sha: sha256Hex(wasm),
      load: async () => wasm,
    }));
    const cache = new ModuleCache(2);
    const first = await cache.get(echo!.sha, echo!.load);
    await cache.get(demo!.sha, demo!.load);
    await cache.get(echo!.sha, echo!.load); // echo is now the most recently used
    await cache.get(fail!.sha, fail!.load); // evicts demo
    expect(cache.size).toBe(2);
    expect(await cache.get(echo!.sha, echo!.load)).toBe(first);
    let reloaded = false;
    await cache.get(demo!.sha, async () => ((reloaded = true), bytes[1]!));
    expect(reloaded).toBe(true);
  });

  it("forgets a failed load, so the next get tries again", async () => {
    const wasm = await readFile(examplePath("echo"));
    const cache = new ModuleCache();
    await expect(
      cache.get(sha256Hex(wasm), async () => Promise.reject(new Error("db down"))),
    ).rejects.toThrow("db down");
    expect(cache.size).toBe(0);
    await expect(cache.get(sha256Hex(wasm), async () => wasm)).resolves.toBeInstanceOf(
      WebAssembly.Module,
    );
  });
});
