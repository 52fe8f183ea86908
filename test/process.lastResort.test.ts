// The last resort of `pgfn start`, in a child process of its own: an
// unhandled rejection is logged with its error and the daemon keeps
// running; an uncaught exception is logged and the process exits 1, for its
// supervisor to restart it.
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { runTs, SPAWNING_TEST_TIMEOUT_MS } from "./processes.js";

const FIXTURE = fileURLToPath(new URL("./fixtures/lastResort.fixture.ts", import.meta.url));

async function run(
  mode: string,
): Promise<{ code: number; lines: Record<string, unknown>[]; text: string }> {
  const { code, stdout } = await runTs(FIXTURE, [mode]);
  const lines = stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code, lines, text: stdout };
}

/** Matches the log line of the process's last-resort handler. */
const processLogLine = (level: string, error: string) =>
  expect.objectContaining({ level, operation: "process", error });

describe("pgfn start's last-resort handlers", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("log an unhandled rejection with its error and keep the process running", async () => {
    const r = await run("reject");
    expect(r.code).toBe(0);
    expect(r.lines).toContainEqual(processLogLine("error", "a rejection nobody handles"));
    expect(r.text).toContain("still running");
  });

  it("log an uncaught exception and exit 1", async () => {
    const r = await run("throw");
    expect(r.code).toBe(1);
    expect(r.lines).toContainEqual(processLogLine("fatal", "an exception nobody catches"));
    expect(r.text).not.toContain("still running");
  });
});
