// max_concurrency holds across daemons: async work over the limit waits and
// completes; a synchronous invoke over it is refused with CONCURRENCY_LIMIT.
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { PgfnError } from "../src/errors.js";
import { HTTP_STATUS } from "../src/http/errors.js";
import { invokeNow } from "../src/invokeNow.js";
import { enqueueManual, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("concurrency");
const daemons: Daemon[] = [];

beforeAll(async () => {
  await t.deploy("busy", { maxConcurrency: 2 });
  daemons.push(await t.startDaemon({ daemonId: "one", pollIntervalMs: 100 }));
  daemons.push(await t.startDaemon({ daemonId: "two", pollIntervalMs: 100 }));
});
afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
});

it("never runs more than max_concurrency at once across two daemons, and every event completes", async () => {
  const ids = await Promise.all(
    Array.from({ length: 10 }, () => enqueueManual(t.pool, "busy", { millions: 150 })),
  );
  const runs = await waitFor(
    async () => {
      const { rows } = await t.pool.query(
        `select * from pgfn.function_runs where event_id = any($1::bigint[]) and status = 'succeeded'`,
        [ids],
      );
      return rows.length === ids.length ? rows : undefined;
    },
    { timeoutMs: 30_000, message: "all 10 busy events to succeed" },
  );
  // The most runs in progress at any instant, from their recorded intervals.
  const edges = runs.flatMap((r) => [
    { at: r.started_at.getTime(), d: 1 },
    { at: r.finished_at.getTime(), d: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.d - b.d);
  let now = 0;
  let most = 0;
  for (const e of edges) most = Math.max(most, (now += e.d));
  expect(most).toBe(2);
  // Both daemons took part, and waiting was not an attempt.
  expect(new Set(runs.map((r) => r.worker_id))).toEqual(new Set(["one", "two"]));
  expect(runs.every((r) => r.attempt === 1)).toBe(true);
});

it("refuses a synchronous invoke over the limit with CONCURRENCY_LIMIT / 429", async () => {
  await Promise.all([
    enqueueManual(t.pool, "busy", { millions: 2000 }),
    enqueueManual(t.pool, "busy", { millions: 2000 }),
  ]);
  await waitFor(async () => {
    const { rows } = await t.pool.query(
      `select count(*)::int as n from pgfn.function_runs where function_name = 'busy' and status = 'running'`,
    );
    return rows[0].n === 2;
  });
  const error = await invokeNow(daemons[0]!.executor, "busy", { millions: 1 }).catch(
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PgfnError);
  expect(error).toMatchObject({ code: "CONCURRENCY_LIMIT" });
  expect(HTTP_STATUS[(error as PgfnError).code]).toBe(429);
  expect((error as Error).message).toMatch(/already running 2 times \(its max_concurrency\)/);
});
