// `npm run bench`'s options are checked before anything starts: a typo is a
// clear message and a non-zero exit in a moment, not a Postgres start-up.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";

const RUN = fileURLToPath(new URL("../bench/run.ts", import.meta.url));

function bench(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", RUN, ...args],
      // No database may be touched: the options must fail first.
      {
        env: { ...process.env, DATABASE_URL: "postgres://nobody@127.0.0.1:1/none" },
        timeout: 20_000,
      },
      (error, _stdout, stderr) =>
        resolve({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, stderr }),
    );
  });
}

it("rejects an unknown option by name", async () => {
  const result = await bench(["--bad-option"]);
  expect(result.code).toBe(2);
  expect(result.stderr).toMatch(/Unknown option '--bad-option'/);
  expect(result.stderr).toMatch(/--help/);
});

it("rejects a bad value, naming the option and what it takes", async () => {
  const result = await bench(["--rates", "100,fast", "--only", "latency"]);
  expect(result.code).toBe(2);
  expect(result.stderr).toMatch(/--rates takes a positive whole number, got "fast"/);
  const only = await bench(["--only", "latency,speed"]);
  expect(only.stderr).toMatch(/--only takes a comma-separated list of latency, .*"speed"/);
});
