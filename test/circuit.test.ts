// The circuit breaker: its state lives in pgfn.circuits, so two daemons
// agree on it. It opens past the error rate with a minimum volume; while open,
// work is deferred (never failed or dropped) and synchronous invokes get 503;
// after the cooldown a single probe decides; a lost probe expires.
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { PgfnError } from "../src/errors.js";
import { HTTP_STATUS } from "../src/http/errors.js";
import { invokeNow } from "../src/invokeNow.js";
import { enqueueManual, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("circuit");
const daemons: Daemon[] = [];

interface Circuit {
  state: string;
  failures: number;
  opened_at: Date | null;
  probe_run_id: string | null;
}
const circuit = async (name = "mailer") =>
  (await t.pool.query<Circuit>(`select * from pgfn.circuits where function_name = $1`, [name]))
    .rows[0];
const runsOf = async (ids: string[]) =>
  (
    await t.pool.query<{ event_id: string; status: string; error_code: string | null }>(
      `select event_id, status, error_code from pgfn.function_runs where event_id = any($1::bigint[]) order by id`,
      [ids],
    )
  ).rows;
const enqueueMany = (n: number) =>
  Promise.all(Array.from({ length: n }, (_, i) => enqueueManual(t.pool, "mailer", { i })));

/** Makes the deferred jobs of these events due now (instead of waiting out the cooldown). */
async function dueNow(eventIds: string[]) {
  await t.pool.query(
    `select graphile_worker.reschedule_jobs(array(select id from graphile_worker.jobs where key = any($1::text[])), run_at => now())`,
    [eventIds.map((id) => `pgfn:wait:${id}`)],
  );
}

async function expectSyncRefused(daemon: Daemon) {
  const before = await t.pool.query(`select count(*)::int as n from pgfn.events`);
  const error = await invokeNow(daemon.executor, "mailer", {}).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(PgfnError);
  expect((error as PgfnError).code).toBe("CIRCUIT_OPEN");
  expect(HTTP_STATUS[(error as PgfnError).code]).toBe(503);
  expect((error as PgfnError).message).toMatch(
    /"mailer" is failing too often; its circuit is open/,
  );
  // Refused, not queued: nothing is left behind that looks like lost work.
  expect((await t.pool.query(`select count(*)::int as n from pgfn.events`)).rows).toEqual(
    before.rows,
  );
}

beforeAll(async () => {
  // A mail sender whose service is down: every attempt fails, none is retried.
  await t.deploy("mailer", { example: "fail", maxAttempts: 1 });
  await t.pool.query(
    `update pgfn.functions set circuit_min_volume = 4, circuit_error_rate = 0.5, circuit_cooldown_ms = 1000 where name = 'mailer'`,
  );
  daemons.push(await t.startDaemon({ daemonId: "one", pollIntervalMs: 100 }));
  daemons.push(await t.startDaemon({ daemonId: "two", pollIntervalMs: 100 }));
});
afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
});

it("stays closed below the minimum volume", async () => {
  const ids = await enqueueMany(3);
  await waitFor(async () => (await runsOf(ids)).filter((r) => r.status === "failed").length === 3, {
    message: "3 failed runs",
  });
  // Counted after each outcome is recorded: wait for the third.
  const c = await waitFor(async () => ((await circuit())?.failures === 3 ? circuit() : undefined), {
    message: "3 failures counted",
  });
  expect(c?.state).toBe("closed");
});

it("opens at the error rate, defers work while open, and both daemons refuse sync invokes", async () => {
  const [fourth] = await enqueueMany(1);
  const opened = await waitFor(
    async () => {
      const c = await circuit();
      return c?.state === "open" ? c : undefined;
    },
    { message: "the circuit to open after the 4th failure" },
  );
  expect((await runsOf([fourth!]))[0]?.error_code).toBe("FUNCTION_ERROR");
  // A long cooldown from here on: the test decides when it ends.
  await t.pool.query(
    `update pgfn.functions set circuit_cooldown_ms = 600000 where name = 'mailer'`,
  );

  const waiting = await enqueueMany(6);
  // Each is picked up, refused and put back as a job due at the cooldown's end.
  await waitFor(
    async () => {
      const { rows } = await t.pool.query<{ n: number }>(
        `select count(*)::int as n from graphile_worker.jobs where key = any($1::text[]) and run_at > now() + interval '5 minutes'`,
        [waiting.map((id) => `pgfn:wait:${id}`)],
      );
      return rows[0]!.n === waiting.length;
    },
    { message: "all 6 events deferred to the end of the cooldown" },
  );
  expect(await runsOf(waiting)).toEqual([]);
  expect(
    (
      await t.pool.query(`select * from pgfn.dead_letters where event_id = any($1::bigint[])`, [
        waiting,
      ])
    ).rowCount,
  ).toBe(0);
  for (const daemon of daemons) await expectSyncRefused(daemon);
  expect((await circuit())?.opened_at).toEqual(opened.opened_at);

  // The cooldown ends (we move opened_at back rather than wait): one probe
  // goes through, fails, and the circuit opens again.
  await t.pool.query(
    `update pgfn.circuits set opened_at = opened_at - interval '1 hour' where function_name = 'mailer'`,
  );
  await dueNow(waiting);
  const reopened = await waitFor(
    async () => {
      const c = await circuit();
      return c?.state === "open" && c.opened_at! > opened.opened_at! ? c : undefined;
    },
    { message: "the failed probe to open the circuit again" },
  );
  expect(reopened.probe_run_id).toBeNull();
  const probes = await runsOf(waiting);
  expect(probes).toHaveLength(1);
  expect(probes[0]).toMatchObject({ status: "failed", error_code: "FUNCTION_ERROR" });
  // The other five are deferred again, not failed.
  await waitFor(
    async () => {
      const { rows } = await t.pool.query<{ n: number }>(
        `select count(*)::int as n from graphile_worker.jobs where key = any($1::text[]) and run_at > now() + interval '5 minutes'`,
        [waiting.map((id) => `pgfn:wait:${id}`)],
      );
      return rows[0]!.n === 5;
    },
    { message: "the 5 events that were not the probe deferred again" },
  );

  // Fixed: the mail service is back (a new module), the cooldown ends, the
  // probe succeeds, the circuit closes and every deferred event runs.
  await t.deploy("mailer", { example: "echo", maxAttempts: 1, update: true });
  await t.pool.query(
    `update pgfn.circuits set opened_at = opened_at - interval '1 hour' where function_name = 'mailer'`,
  );
  await dueNow(waiting);
  const runs = await waitFor(
    async () => {
      const rows = await runsOf(waiting);
      return rows.filter((r) => r.status === "succeeded").length === 5 ? rows : undefined;
    },
    { timeoutMs: 20_000, message: "the 5 deferred events to succeed once the circuit closes" },
  );
  expect((await circuit())?.state).toBe("closed");
  // Counts that add up: 6 events, 1 failed probe (a dead letter), 5 successes.
  expect(runs).toHaveLength(6);
  expect(
    (
      await t.pool.query(`select * from pgfn.dead_letters where event_id = any($1::bigint[])`, [
        waiting,
      ])
    ).rowCount,
  ).toBe(1);
  const run = await invokeNow(daemons[1]!.executor, "mailer", { hello: 1 });
  expect(run.status).toBe("succeeded");
}, 60_000);

it("lets a new probe through when the last one was lost", async () => {
  await t.pool.query(`update pgfn.functions set circuit_cooldown_ms = 100 where name = 'mailer'`);
  // A probe whose daemon died: its run was abandoned by the reaper.
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status)
     values ((select max(id) from pgfn.events), 'mailer', 99, 'abandoned') returning id`,
  );
  await t.pool.query(
    `update pgfn.circuits set state = 'half_open', probe_run_id = $1, probe_started_at = now() where function_name = 'mailer'`,
    [rows[0]!.id],
  );
  const run = await invokeNow(daemons[0]!.executor, "mailer", { probe: true });
  expect(run.status).toBe("succeeded");
  expect((await circuit())?.state).toBe("closed");

  // A probe still running, but past the TTL (the function's timeout + 30 s).
  const stuck = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status)
     values ((select max(id) from pgfn.events), 'mailer', 100, 'running') returning id`,
  );
  await t.pool.query(
    `update pgfn.circuits set state = 'half_open', probe_run_id = $1, probe_started_at = now() where function_name = 'mailer'`,
    [stuck.rows[0]!.id],
  );
  await expectSyncRefused(daemons[0]!);
  await t.pool.query(
    `update pgfn.circuits set probe_started_at = now() - interval '1 hour' where function_name = 'mailer'`,
  );
  expect((await invokeNow(daemons[0]!.executor, "mailer", {})).status).toBe("succeeded");
  expect((await circuit())?.state).toBe("closed");
  await t.pool.query(`delete from pgfn.function_runs where id = $1`, [stuck.rows[0]!.id]);
});

it("closes by hand with pgfn.close_circuit, and names a missing function", async () => {
  // A long cooldown: the circuit must still be open when the invoke comes.
  await t.pool.query(
    `update pgfn.functions set circuit_cooldown_ms = 600000 where name = 'mailer'`,
  );
  await t.pool.query(
    `update pgfn.circuits set state = 'open', opened_at = now() where function_name = 'mailer'`,
  );
  await expectSyncRefused(daemons[1]!);
  const { rows } = await t.pool.query<{ msg: string }>(
    `select pgfn.close_circuit('mailer') as msg`,
  );
  expect(rows[0]!.msg).toBe("circuit of mailer is closed");
  expect((await invokeNow(daemons[1]!.executor, "mailer", {})).status).toBe("succeeded");
  await expect(t.pool.query(`select pgfn.close_circuit('nope')`)).rejects.toThrow(
    'pgfn.close_circuit: no function named "nope"',
  );
});
