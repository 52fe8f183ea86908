// A daemon SIGKILLed in the middle of 2,000 events: nothing is lost, its
// in-flight attempts are abandoned and retried within seconds, and no event
// succeeds twice. Real daemons, as child processes.
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, expect, it } from "vitest";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import { createTestDatabase, exampleWasm, waitFor, type TestDatabase } from "./helpers.js";
import { killChild, PGFN_MAIN, startTs } from "./processes.js";

const EVENTS = 2000;
let t: TestDatabase;
const children: ChildProcess[] = [];
// Each daemon's warnings and errors, shown when a test fails: a stall under
// load must be explainable from the CI log alone.
let logDir: string;

function daemon(id: string): ChildProcess {
  const child = startTs(PGFN_MAIN, ["start"], {
    env: {
      DATABASE_URL: t.url,
      PGFN_WORKER_ID: id,
      PGFN_HEARTBEAT_INTERVAL_MS: "500",
      PGFN_DEAD_AFTER_MS: "3000",
      PGFN_SANDBOX_THREADS: "2",
      PGFN_WORKER_CONCURRENCY: "8",
      PGFN_LOG_LEVEL: "warn",
      // Two daemons run at once here; both on the default port would collide.
      PGFN_HTTP_PORT: "0",
    },
    stdio: ["ignore", "ignore", openSync(path.join(logDir, `${id}.log`), "a")],
  });
  children.push(child);
  return child;
}

const count = async (sql: string) => (await t.pool.query<{ n: number }>(sql)).rows[0]!.n;
const succeeded = () =>
  count(
    `select count(distinct event_id)::int as n from pgfn.function_runs where status = 'succeeded'`,
  );

beforeEach(async () => {
  logDir = mkdtempSync(path.join(tmpdir(), "pgfn-sigkill-"));
  t = await createTestDatabase("sigkill");
  await deployFunction(createDb(t.pool), {
    name: "echo",
    wasm: await readFile(exampleWasm("echo")),
  });
  await t.pool.query(
    `create table public.orders (id int primary key); select pgfn.attach('public.orders', 'echo', array['INSERT'])`,
  );
});
afterEach(async () => {
  await Promise.all(children.splice(0).map(killChild));
  await t?.drop();
  rmSync(logDir, { recursive: true, force: true });
});

async function insertAll() {
  for (let i = 0; i < EVENTS; i += 100) {
    await t.pool.query(
      `insert into public.orders select g from generate_series($1::int, $2::int) g`,
      [i, i + 99],
    );
  }
}

/** What the database and the daemons say, for a failure message. */
async function diagnose(): Promise<string> {
  const q = async (text: string) => JSON.stringify((await t.pool.query(text)).rows);
  const logs = readdirSync(logDir).map(
    (f) =>
      `--- ${f} (last lines)\n${readFileSync(path.join(logDir, f), "utf8").split("\n").slice(-30).join("\n")}`,
  );
  return [
    `runs by status: ${await q(`select status, error_code, count(*)::int from pgfn.function_runs group by 1, 2 order by 1, 2`)}`,
    `events without a success: ${await q(`select count(*)::int as n, min(e.id) as first from pgfn.events e where not exists (select 1 from pgfn.function_runs r where r.event_id = e.id and r.status = 'succeeded')`)}`,
    `undispatched: ${await q(`select count(*)::int as n from pgfn.events where dispatched_at is null`)}`,
    `dead letters: ${await q(`select error_code, count(*)::int from pgfn.dead_letters group by 1`)}`,
    `jobs: ${await q(`select locked_by, attempts, max_attempts, run_at > now() as later, left(last_error, 200) as last_error, count(*)::int from graphile_worker.jobs group by 1, 2, 3, 4, 5 order by 6 desc limit 20`)}`,
    `daemons: ${await q(`select id, now() - heartbeat_at as silent_for, graphile_worker_ids from pgfn.daemons`)}`,
    ...logs,
  ].join("\n");
}

async function expectAllRunOnce(killedAt: number) {
  const done = await waitFor(
    async () => ((await succeeded()) === EVENTS ? Date.now() : undefined),
    {
      timeoutMs: 60_000,
      intervalMs: 100,
      message: `all ${EVENTS} events to have a succeeded run`,
    },
  ).catch(async (error: Error) => {
    throw new Error(`${error.message}\n${await diagnose()}`);
  });
  const recoveryMs = done - killedAt;
  expect(await count(`select count(*)::int as n from pgfn.events`)).toBe(EVENTS);
  const abandoned = await count(
    `select count(*)::int as n from pgfn.function_runs where status = 'abandoned'`,
  );
  // At most what the killed daemon had in flight (its worker concurrency).
  expect(abandoned).toBeLessThanOrEqual(8);
  // An event runs twice only if it was in flight: its first attempt was
  // abandoned (cut short by the kill, possibly after the handler finished).
  const duplicates = await count(
    `select count(*)::int as n from (select event_id from pgfn.function_runs where status = 'succeeded' group by 1 having count(*) > 1) d`,
  );
  expect(
    await count(`select count(*)::int as n from (
      select event_id from pgfn.function_runs group by 1
      having count(*) filter (where status = 'succeeded') > 1 and count(*) filter (where status = 'abandoned') = 0) d`),
  ).toBe(0);
  // The killed daemon records nothing after the kill, so no event succeeds
  // twice; unless a survivor, stalled past PGFN_DEAD_AFTER_MS on a loaded
  // machine, was reaped itself (its log says so) and finished attempts that
  // had been retried meanwhile, as at-least-once delivery allows.
  const survivorReaped = readdirSync(logDir).some((f) =>
    readFileSync(path.join(logDir, f), "utf8").includes("was reaped as dead"),
  );
  if (!survivorReaped) expect(duplicates, "events that succeeded twice").toBe(0);
  // The in-flight attempts: how long after the kill their events succeeded
  // (the reaping delay plus a retry), as opposed to the whole backlog.
  const { rows } = await t.pool.query<{ at: Date | null }>(
    `select max(r.finished_at) as at from pgfn.function_runs r
     where r.status = 'succeeded' and r.event_id in (select event_id from pgfn.function_runs where status = 'abandoned')`,
  );
  const inFlightMs = rows[0]!.at ? rows[0]!.at.getTime() - killedAt : 0;
  console.log(
    `recovery after SIGKILL: ${recoveryMs} ms to all ${EVENTS} done; ${abandoned} attempts abandoned and retried, the last ${inFlightMs} ms after the kill; ${duplicates} events succeeded twice`,
  );
  return { recoveryMs, abandoned };
}

/**
 * Inserts the events, kills `victim` with SIGKILL once 200 have run, and
 * returns when it did.
 */
async function insertAllAndKillMidway(victim: ChildProcess): Promise<number> {
  await insertAll();
  await waitFor(async () => (await succeeded()) >= 200, {
    // Includes the daemon's start through tsx, slow on a loaded machine.
    timeoutMs: 90_000,
    message: "200 runs before the kill",
  });
  victim.kill("SIGKILL");
  return Date.now();
}

it("loses nothing when the only daemon is killed and another starts", async () => {
  const a = daemon("victim");
  const killedAt = await insertAllAndKillMidway(a);
  expect(await succeeded()).toBeLessThan(EVENTS);
  daemon("rescuer");
  await expectAllRunOnce(killedAt);
}, 240_000);

it("loses nothing when one of two daemons is killed", async () => {
  const a = daemon("a");
  daemon("b");
  const killedAt = await insertAllAndKillMidway(a);
  await expectAllRunOnce(killedAt);
  expect(await count(`select count(*)::int as n from pgfn.daemons where id = 'a'`)).toBe(0);
}, 240_000);
