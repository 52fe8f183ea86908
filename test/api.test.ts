// The package's public entry (src/index.ts, `import ... from "pgfn"`):
// makeUtils() migrates, deploys and invokes; run() is a daemon inside the
// caller's process. test/package.test.ts does the same from the packed tarball.
import { readFile } from "node:fs/promises";
import { expect, it } from "vitest";
import { makeUtils, PgfnError, run, type Event, type Run } from "../src/index.js";
import { useTestDatabase } from "./fixture.js";
import { exampleWasm, waitFor } from "./helpers.js";

// Unmigrated: utils.migrate() installs the schema.
const t = useTestDatabase("api", { migrated: false });

it("makeUtils migrates, deploys and invokes, then releases everything", async () => {
  const utils = await makeUtils({ connectionString: t.url, env: {} });
  try {
    const migrated = await utils.migrate();
    expect(migrated.applied.length).toBeGreaterThan(0);
    expect((await utils.migrate()).applied).toEqual([]);

    const wasm = await readFile(exampleWasm("echo"));
    const deployed = await utils.deploy("echo", wasm, { timeoutMs: 5000, env: { GREETING: "hi" } });
    expect(deployed).toMatchObject({ name: "echo", created: true });
    const fn = await t.pool.query(`select timeout_ms, env from pgfn.functions where name = 'echo'`);
    expect(fn.rows[0]).toEqual({ timeout_ms: 5000, env: { GREETING: "hi" } });

    // The same name again is refused unless it is an update, with a code to branch on.
    const conflict = await utils.deploy("echo", wasm).catch((error: unknown) => error);
    expect(conflict).toBeInstanceOf(PgfnError);
    expect((conflict as PgfnError).code).toBe("CONFLICT");
    // Settings are refused by the names the caller typed.
    await expect(utils.deploy("echo", wasm, { update: true, timeoutMs: 50 })).rejects.toThrow(
      /timeoutMs/,
    );
    expect((await utils.deploy("echo", wasm, { update: true })).created).toBe(false);

    const first = await utils.invoke("echo", { hello: "world" });
    const second = await utils.invoke("echo");
    expect(first.status).toBe("succeeded");
    expect(second.status).toBe("succeeded");
    // echo returns the event it received: a manual event with the payload.
    const event = first.result as Event;
    expect(event).toMatchObject({ trigger: "manual", function: "echo", attempt: 1 });
    expect(event.trigger === "manual" && event.payload).toEqual({ hello: "world" });

    // A TypeScript handler deploys from its text, as pgfn deploy reads a .ts file.
    const ts = await utils.deploy(
      "hello",
      {
        source: `import type { Handler } from "pgfn";
const handle: Handler = (event, ctx) => ({ hi: ctx.env.GREETING, trigger: event.trigger });
export default handle;`,
        fileName: "hello.ts",
      },
      { env: { GREETING: "hi" } },
    );
    expect(ts).toMatchObject({ name: "hello", created: true });
    const hello = await utils.invoke("hello");
    expect(hello).toMatchObject({ status: "succeeded", result: { hi: "hi", trigger: "manual" } });
    await expect(
      utils.deploy("broken", { source: "export default (e) => {", fileName: "broken.js" }),
    ).rejects.toThrow(/broken\.js:1:\d+/);

    for (const wrong of [
      { source: "export default () => 1", fileName: "x.py" },
      { source: "export default () => 1" },
      "export default () => 1",
    ]) {
      await expect(utils.deploy("wrong", wrong as never)).rejects.toThrow(
        /takes a module's bytes \(a Uint8Array\) or \{ source, fileName \}/,
      );
    }

    await expect(utils.invoke("nosuch")).rejects.toThrow(/"nosuch" is not deployed/);
  } finally {
    await utils.release();
  }
  // Released twice is harmless. (The leak guard fails the file if its pool,
  // or the invoker's, is left open.)
  await utils.release();
});

it("run() handles events until stop(), and its promise settles then", async () => {
  const finished: Run[] = [];
  const runner = await run({
    connectionString: t.url,
    env: { PGFN_SWEEP_INTERVAL_MS: "100", PGFN_LOG_LEVEL: "silent" },
    onRunFinished: (r) => finished.push(r),
  });
  let settled = false;
  void runner.promise.then(() => (settled = true));
  try {
    expect(runner.httpUrl).toBeUndefined();
    await t.pool.query(`select pgfn.invoke_async('echo', '{"from":"sql"}')`);
    await waitFor(async () => finished.find((r) => r.status === "succeeded"), {
      message: "the daemon started by run() to handle the event",
    });
    expect(settled).toBe(false);
  } finally {
    await runner.stop();
  }
  await runner.promise;
  expect(settled).toBe(true);
});

it("run() refuses a bad setting by its variable name, and a missing connection string", async () => {
  await expect(
    run({ connectionString: t.url, env: { PGFN_WORKER_CONCURRENCY: "none" } }),
  ).rejects.toThrow(/PGFN_WORKER_CONCURRENCY/);
  await expect(run({ connectionString: undefined as unknown as string })).rejects.toThrow(
    /connectionString must be a postgres:\/\/ or postgresql:\/\/ URL/,
  );
});
