// Values nested thousands of levels deep between the daemon and its sandbox
// threads: Postgres jsonb accepts 10,000 levels, while the structured clone
// that carries messages to and from a thread overflows its stack at a few
// thousand. Neither may end the daemon or hold a thread until a deadline.
import { afterAll, beforeAll, expect, it } from "vitest";
import { compileJavaScript } from "../src/sandbox/jsCompile.js";
import { sha256Hex } from "../src/sandbox/module.js";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.js";

let sandbox: Sandbox;
beforeAll(async () => {
  // One thread: a second invocation waits for the first, and is then posted
  // from inside the thread's message listener.
  sandbox = createSandbox({ size: 1 });
  await sandbox.pool.warm();
});
afterAll(() => sandbox?.close());

const js = async (source: string) => {
  const bytes = Buffer.from(await compileJavaScript(source, "h.js"));
  return sandbox.modules.get(sha256Hex(bytes), async () => bytes, "js");
};
const nested = (levels: number) => {
  let value: unknown = [];
  for (let i = 0; i < levels; i++) value = [value];
  return value;
};
// Long: a run that waits for its deadline instead of failing at once fails the test by its time.
const limits = { timeoutMs: 60_000, memoryLimitBytes: 128 << 20 };

it("refuses an event too deep to pass to a thread as INVALID_REQUEST, a thread free or busy, and serves the next", async () => {
  const echo = await js("export default (e) => e;");
  const idle = await sandbox.pool.invoke({ module: echo, input: nested(10_000), ...limits });
  expect(idle.error).toMatchObject({
    code: "INVALID_REQUEST",
    message: expect.stringMatching(/nested thousands of levels deep/),
  });
  const [first, queued] = await Promise.all([
    sandbox.pool.invoke({ module: echo, input: { n: 1 }, ...limits }),
    sandbox.pool.invoke({ module: echo, input: nested(10_000), ...limits }),
  ]);
  expect(first.output).toEqual({ n: 1 });
  expect(queued.error).toMatchObject({ code: "INVALID_REQUEST" });
  // The thread still has the module the refused message would have carried.
  expect((await sandbox.pool.invoke({ module: echo, input: { n: 2 }, ...limits })).output).toEqual({
    n: 2,
  });
});

it("fails a result too deep to pass back as FUNCTION_ERROR at once, not at the deadline", async () => {
  const deep = await js(
    "export default () => { let a = []; for (let i = 0; i < 6000; i++) a = [a]; return a; };",
  );
  const started = Date.now();
  const outcome = await sandbox.pool.invoke({ module: deep, input: {}, ...limits });
  expect(outcome.error).toMatchObject({
    code: "FUNCTION_ERROR",
    message: expect.stringMatching(/could not be passed back/),
  });
  expect(Date.now() - started).toBeLessThan(limits.timeoutMs);
  const echo = await js("export default (e) => e;");
  expect((await sandbox.pool.invoke({ module: echo, input: { n: 3 }, ...limits })).output).toEqual({
    n: 3,
  });
});
