// `npm run bench`'s options are checked before anything starts: a typo is a
// clear message and a non-zero exit in a moment, not a Postgres start-up.
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";
import { runTs, SPAWNING_TEST_TIMEOUT_MS, type ChildResult } from "./processes.js";

const RUN = fileURLToPath(new URL("../bench/run.ts", import.meta.url));

function bench(args: string[]): Promise<ChildResult> {
  // No database may be touched: the options must fail first.
  return runTs(RUN, args, { env: { DATABASE_URL: "postgres://nobody@127.0.0.1:1/none" } });
}

it("rejects an unknown option by name", { timeout: SPAWNING_TEST_TIMEOUT_MS }, async () => {
  const result = await bench(["--bad-option"]);
  expect(result.code).toBe(2);
  expect(result.stderr).toMatch(/Unknown option '--bad-option'/);
  expect(result.stderr).toMatch(/--help/);
});

it(
  "rejects a bad value, naming the option and what it takes",
  {
    timeout: SPAWNING_TEST_TIMEOUT_MS,
  },
  async () => {
    const result = await bench(["--rates", "100,fast", "--only", "latency"]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/--rates takes a positive whole number, got "fast"/);
    const only = await bench(["--only", "latency,speed"]);
    expect(only.stderr).toMatch(/--only takes a comma-separated list of latency, .*"speed"/);
  },
);
