// A host function's failure is retried only when trying again can help: a
// refused connection is (transient), a host the function may not reach is not.
import { beforeAll, expect, it } from "vitest";
import { closedLocalPort, enqueueManual, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("retries_host");
let closedPort: number;

beforeAll(async () => {
  closedPort = await closedLocalPort();
  const policy = { example: "fetch", maxAttempts: 3, retryBaseMs: 0, retryMaxMs: 0 };
  // May fetch nothing: every http_fetch is refused, for good.
  await t.deploy("fenced", policy);
  await t.deploy("refused", {
    allowedHosts: [`127.0.0.1:${closedPort}`],
    ...policy,
  });
  await t.startDaemon({ pollIntervalMs: 100 });
});

/** The event's runs once its last one will not be retried. */
async function settledRuns(eventId: string) {
  return waitFor(
    async () => {
      const { rows } = await t.pool.query(
        `select id, attempt, status, error_code, will_retry, error_message
         from pgfn.function_runs where event_id = $1 order by attempt`,
        [eventId],
      );
      const last = rows.at(-1);
      return last && last.status !== "running" && !last.will_retry ? rows : undefined;
    },
    { timeoutMs: 15_000, message: `the runs of event ${eventId} to settle` },
  );
}

const deadLetters = async (eventId: string) =>
  (
    await t.pool.query(
      `select last_run_id, error_code from pgfn.dead_letters where event_id = $1`,
      [eventId],
    )
  ).rows;

it("does not retry a non-transient HOST_FUNCTION_ERROR: one attempt, then a dead letter", async () => {
  const id = await enqueueManual(t.pool, "fenced", { url: `http://127.0.0.1:${closedPort}/` });
  const runs = await settledRuns(id);
  expect(runs).toHaveLength(1);
  expect(runs[0]).toMatchObject({
    attempt: 1,
    status: "failed",
    error_code: "HOST_FUNCTION_ERROR",
    will_retry: false,
  });
  expect(runs[0].error_message).toMatch(/is not allowed; add it with --allow-host/);
  expect(await deadLetters(id)).toEqual([
    { last_run_id: runs[0].id, error_code: "HOST_FUNCTION_ERROR" },
  ]);
});

it("retries a transient HOST_FUNCTION_ERROR up to max_attempts, then a dead letter", async () => {
  const id = await enqueueManual(t.pool, "refused", { url: `http://127.0.0.1:${closedPort}/` });
  const runs = await settledRuns(id);
  expect(runs.map((r) => [r.attempt, r.status, r.error_code, r.will_retry])).toEqual([
    [1, "failed", "HOST_FUNCTION_ERROR", true],
    [2, "failed", "HOST_FUNCTION_ERROR", true],
    [3, "failed", "HOST_FUNCTION_ERROR", false],
  ]);
  expect(runs[0].error_message).toMatch(/ECONNREFUSED/);
  expect(await deadLetters(id)).toEqual([
    { last_run_id: runs[2].id, error_code: "HOST_FUNCTION_ERROR" },
  ]);
});
