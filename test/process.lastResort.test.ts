// The last resort of `pgfn start`, in a child process of its own: an
// unhandled rejection is logged with its error and the daemon keeps
// running; an uncaught exception is logged and the process exits 1, for its
// supervisor to restart it.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const FIXTURE = fileURLToPath(new URL("./fixtures/lastResort.fixture.ts", import.meta.url));

function run(
  mode: string,
): Promise<{ code: number; lines: Record<string, unknown>[]; text: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", FIXTURE, mode],
      { timeout: 30_000 },
      (error, stdout) => {
        const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
        const lines = stdout
          .split("\n")
          .filter((l) => l.startsWith("{"))
          .map((l) => JSON.parse(l) as Record<string, unknown>);
        resolve({ code, lines, text: stdout });
      },
    );
  });
}

describe("pgfn start's last-resort handlers", () => {
  it("log an unhandled rejection with its error and keep the process running", async () => {
    const r = await run("reject");
    expect(r.code).toBe(0);
    expect(r.lines).toContainEqual(
      expect.objectContaining({
        level: "error",
        operation: "process",
        error: "a rejection nobody handles",
      }),
    );
    expect(r.text).toContain("still running");
  });

  it("log an uncaught exception and exit 1", async () => {
    const r = await run("throw");
    expect(r.code).toBe(1);
    expect(r.lines).toContainEqual(
      expect.objectContaining({
        level: "fatal",
        operation: "process",
        error: "an exception nobody catches",
      }),
    );
    expect(r.text).not.toContain("still running");
  });
});
