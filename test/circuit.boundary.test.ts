// The circuit opens when "at least circuit_error_rate" of the outcomes in its
// window were handler failures (README, failure model): exactly at the rate
// it opens, just below it stays closed.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import { invokeNow } from "../src/invokeNow.js";
import { createTestDatabase, exampleWasm, startTestDaemon, type TestDatabase } from "./helpers.js";

let t: TestDatabase;
let daemon: Daemon | undefined;

beforeAll(async () => {
  t = await createTestDatabase("circuit_boundary");
  // Runs are synchronous invokes: no listener, worker or scheduler needed.
  daemon = await startTestDaemon(t.url, {
    listener: false,
    worker: false,
    scheduler: false,
    sandboxThreads: 1,
  });
});
afterAll(async () => {
  await daemon?.stop();
  await t?.drop();
});

const circuitState = async (name: string) =>
  (
    await t.pool.query<{ state: string }>(
      `select state from pgfn.circuits where function_name = $1`,
      [name],
    )
  ).rows[0]?.state ?? "closed";

it("stays closed at 2 failures in 5 outcomes and opens at 3 in 6 (rate 0.5, volume 4)", async () => {
  const db = createDb(t.pool);
  const deploy = async (example: string, update: boolean) =>
    deployFunction(db, {
      name: "mailer",
      wasm: await readFile(exampleWasm(example)),
      maxAttempts: 1,
      update,
    });
  await deploy("echo", false);
  await t.pool.query(
    `update pgfn.functions set circuit_min_volume = 4, circuit_error_rate = 0.5, circuit_window_ms = 600000 where name = 'mailer'`,
  );
  const invoke = async (expected: "succeeded" | "failed") => {
    const run = await invokeNow(daemon!.executor, "mailer", {});
    expect(run.status).toBe(expected);
  };
  for (let i = 0; i < 3; i++) await invoke("succeeded");
  // The mail service goes down: the same function now fails every time.
  await deploy("fail", true);
  await invoke("failed");
  await invoke("failed");
  // 2 of 5 = 0.4: below the rate, though past the volume.
  expect(await circuitState("mailer")).toBe("closed");
  await invoke("failed");
  // 3 of 6 = 0.5: exactly the rate.
  expect(await circuitState("mailer")).toBe("open");
});
