// duration_ms as people and programs read it: 0.1 ms in tables and run
// lines, 0.01 ms in JSON, the daemon's `run` log line included (what
// `pgfn dev` and `pgfn start` print). The column keeps the clock's value.
import { describe, expect, it } from "vitest";
import { formatRunLine, msText, roundMs } from "../src/format.js";
import type { Run } from "../src/db/runs.js";
import { enqueueManual, finishedRun, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { capturingLogger } from "./httpHelpers.js";

const t = useTestDatabase("format_durations");

describe("durations", () => {
  it("are 0.1 ms for people and 0.01 ms in JSON", () => {
    expect(msText(83.27845999999954)).toBe("83.3");
    expect(roundMs(83.27845999999954)).toBe(83.28);
    expect(roundMs(0.004)).toBe(0);
    const run = {
      id: "7",
      event_id: "3",
      function_name: "echo",
      attempt: 1,
      status: "succeeded",
      result: { ok: true },
      duration_ms: 83.27845999999954,
    } as unknown as Run;
    expect(formatRunLine(run)).toBe(
      'run 7 event 3 echo attempt 1: succeeded in 83.3 ms {"ok":true}',
    );
  });

  it("the daemon's run log line carries duration_ms to 0.01 ms", async () => {
    await t.deploy("echo");
    const { logger, lines } = capturingLogger("info");
    await t.startDaemon({}, logger);
    const eventId = await enqueueManual(t.pool, "echo", {});
    const run = (await finishedRun(t.pool, eventId)) as { id: string; duration_ms: number };
    // The line is written once the run is recorded, so it may come just after.
    const logged = await waitFor(
      async () =>
        lines
          .map(
            (l) => JSON.parse(l) as { operation?: string; run_id?: string; duration_ms?: number },
          )
          .find((l) => l.operation === "run" && l.run_id === run.id),
      { message: `the run log line of run ${run.id}` },
    );
    expect(logged.duration_ms).toBe(roundMs(run.duration_ms));
    expect(String(logged.duration_ms)).toMatch(/^\d+(\.\d{1,2})?$/);
  });
});
