// The backoff grows: each retry of an event waits up to twice as long as the
// one before (full jitter under base * 2^(attempt-1)). The random source is
// fixed just under 1, so every delay is its ceiling and can be measured.
import { afterAll, beforeAll, expect, it } from "vitest";
import { setRetryRandom } from "../src/worker/policy.js";
import { closedLocalPort, enqueueManual, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const BASE_MS = 200;

const t = useTestDatabase("retries_backoff");
let restoreRandom: (() => void) | undefined;
let closedPort: number;

beforeAll(async () => {
  restoreRandom = setRetryRandom(() => 0.999999);
  closedPort = await closedLocalPort();
  await t.deploy("unreachable", {
    example: "fetch",
    allowedHosts: [`127.0.0.1:${closedPort}`],
    maxAttempts: 4,
    retryBaseMs: BASE_MS,
    retryMaxMs: 60_000,
  });
  await t.startDaemon({ pollIntervalMs: 100 });
});
afterAll(() => {
  restoreRandom?.();
});

it("waits about 1x, 2x and 4x the base before attempts 2, 3 and 4", async () => {
  const id = await enqueueManual(t.pool, "unreachable", { url: `http://127.0.0.1:${closedPort}/` });
  const runs = await waitFor(
    async () => {
      const { rows } = await t.pool.query(
        `select attempt, status, error_code, will_retry, finished_at, next_attempt_at
         from pgfn.function_runs where event_id = $1 order by attempt`,
        [id],
      );
      return rows.length === 4 && rows[3].status !== "running" ? rows : undefined;
    },
    { timeoutMs: 20_000, message: "four attempts of the event" },
  );
  expect(runs.map((r) => [r.attempt, r.status, r.error_code, r.will_retry])).toEqual([
    [1, "failed", "HOST_FUNCTION_ERROR", true],
    [2, "failed", "HOST_FUNCTION_ERROR", true],
    [3, "failed", "HOST_FUNCTION_ERROR", true],
    [4, "failed", "HOST_FUNCTION_ERROR", false],
  ]);
  const delays = runs
    .slice(0, 3)
    .map((r) => (r.next_attempt_at as Date).getTime() - (r.finished_at as Date).getTime());
  // Ceilings 200, 400, 800 ms, less the millisecond floor() takes; the two
  // timestamps come from one statement, a few ms apart at most.
  for (const [i, multiple] of [1, 2, 4].entries()) {
    expect(delays[i], `delay after attempt ${i + 1}`).toBeGreaterThanOrEqual(
      multiple * BASE_MS - 6,
    );
    expect(delays[i], `delay after attempt ${i + 1}`).toBeLessThanOrEqual(multiple * BASE_MS + 5);
  }
});
