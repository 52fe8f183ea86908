// When pgfn itself cannot record an attempt (a database error mid-run), the
// attempt is ended as `abandoned` with INTERNAL, not left `running` for ever,
// and graphile-worker runs the event again once the fault is gone.
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import {
  createTestDatabase,
  enqueueManual,
  exampleWasm,
  startTestDaemon,
  waitFor,
  type TestDatabase,
} from "./helpers.js";

let t: TestDatabase;
let daemon: Daemon;

beforeAll(async () => {
  t = await createTestDatabase("internal");
  await deployFunction(createDb(t.pool), {
    name: "echo",
    wasm: await readFile(exampleWasm("echo")),
  });
  // The fault: recording a success fails while this trigger exists.
  await t.pool.query(`
    create function public.refuse_success() returns trigger language plpgsql as $$
    begin
      if new.status = 'succeeded' then raise exception 'disk full (simulated)'; end if;
      return new;
    end $$;
    create trigger refuse_success before update on pgfn.function_runs
      for each row execute function public.refuse_success();`);
  daemon = await startTestDaemon(t.url, { pollIntervalMs: 100 });
});
afterAll(async () => {
  await daemon?.stop();
  await t?.drop();
});

it("ends the attempt as abandoned with INTERNAL, and runs the event again once the fault is gone", async () => {
  const eventId = await enqueueManual(t.pool, "echo", { n: 1 });
  const first = await waitFor(
    async () =>
      (
        await t.pool.query(
          `select * from pgfn.function_runs where event_id = $1 and status <> 'running'`,
          [eventId],
        )
      ).rows[0],
    { message: "the first attempt to end" },
  );
  expect(first).toMatchObject({
    status: "abandoned",
    error_code: "INTERNAL",
    http_status: 500,
    will_retry: true,
  });
  expect(first.error_message).toMatch(
    /pgfn could not finish recording this attempt: .*disk full \(simulated\)/,
  );
  expect(
    (
      await t.pool.query(
        `select count(*)::int as n from pgfn.function_runs where status = 'running'`,
      )
    ).rows[0].n,
  ).toBe(0);

  await t.pool.query(`drop trigger refuse_success on pgfn.function_runs`);
  // graphile-worker's own retry of the failed job (its backoff: about 3 s).
  const next = await waitFor(
    async () =>
      (
        await t.pool.query(
          `select * from pgfn.function_runs where event_id = $1 and status = 'succeeded'`,
          [eventId],
        )
      ).rows[0],
    { timeoutMs: 20_000, message: "the event to succeed on graphile-worker's retry" },
  );
  expect(next.attempt).toBe(2);
  expect(next.result).toMatchObject({ payload: { n: 1 } });
}, 30_000);
