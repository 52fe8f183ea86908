// The database goes away under load and comes back: two daemons reach
// Postgres through a TCP proxy that drops every connection and refuses new
// ones for a while (the shared test server itself is never touched), and a
// writer keeps committing rows straight to Postgres before, during and after.
// Every committed row must run, both daemons must be alive and working
// afterwards, and /readyz must say "not ready" during the outage and "ready"
// after it, without anyone restarting anything.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { silentLogger } from "../src/logger.js";
import { startTestDaemon, waitFor } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { startTcpProxy, type TcpProxy } from "./tcpProxy.js";

/** The writer's pace: the load the finding was reproduced with. */
const ROWS_PER_SECOND = 50;

const t = useTestDatabase("daemon_outage");
let proxy: TcpProxy;
const daemons: Daemon[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);

beforeAll(async () => {
  process.on("unhandledRejection", onUnhandled);
  await t.deploy("echo");
  await t.pool.query(`
    create table public.items (id int primary key);
    select pgfn.attach('public.items', 'echo');
  `);
  const target = new URL(t.url);
  proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
  for (const name of ["a", "b"]) {
    daemons.push(
      await startTestDaemon(
        proxy.url(t.url),
        {
          daemonId: `outage-${name}`,
          workerConcurrency: 4,
          sandboxThreads: 2,
          pollIntervalMs: 200,
        },
        silentLogger(),
        { http: { port: 0, host: "127.0.0.1" } },
      ),
    );
  }
});

afterAll(async () => {
  process.off("unhandledRejection", onUnhandled);
  await proxy?.resume();
  for (const d of daemons) await d.stop().catch(() => undefined);
  await proxy?.close();
});

let nextId = 0;

/** Commits one row every 1000/ROWS_PER_SECOND ms, straight to Postgres, until stop(). */
function startWriter(): { stop(): Promise<void> } {
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      await t.pool.query(`insert into public.items values ($1)`, [++nextId]);
      await new Promise((resolve) => setTimeout(resolve, 1000 / ROWS_PER_SECOND));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
    },
  };
}

async function readyz(daemon: Daemon): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${daemon.http!.url}/readyz`);
  return { status: response.status, body: await response.json() };
}

async function count(query: string, values: unknown[] = []): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(query, values);
  return rows[0]!.n;
}

/** Rows whose event has a succeeded run. */
const succeededRows = () =>
  count(
    `select count(distinct e.id)::int as n from pgfn.events e
     join pgfn.function_runs r on r.event_id = e.id and r.status = 'succeeded'
     where e.function_name = 'echo'`,
  );

/**
 * Under load: writes for a while, takes the database away from the daemons
 * for at least `outageMs` (and until both said not-ready), gives it back,
 * writes on until both daemons have run something since, and then checks
 * that every committed row ran.
 */
async function survivesOutage(outageMs: number): Promise<void> {
  const writer = startWriter();
  try {
    // Under load before the outage: both daemons are running handlers.
    const before = await count(`select count(*)::int as n from pgfn.function_runs`);
    await waitFor(
      async () => (await count(`select count(*)::int as n from pgfn.function_runs`)) >= before + 50,
      { timeoutMs: 30_000, message: "runs under load before the outage" },
    );

    await proxy.cut();
    const cutAt = Date.now();
    for (const d of daemons) {
      await waitFor(async () => (await readyz(d)).status === 503, {
        timeoutMs: 30_000,
        message: `/readyz of ${d.executor.daemonId} to say not ready during the outage`,
      });
    }
    await waitFor(async () => Date.now() - cutAt >= outageMs, {
      timeoutMs: outageMs + 30_000,
      intervalMs: 50,
      message: "the outage to last its time",
    });
    const { rows } = await t.pool.query<{ now: Date }>(`select clock_timestamp() as now`);
    const resumedAt = rows[0]!.now;
    await proxy.resume();

    for (const d of daemons) {
      const ready = await waitFor(
        async () => {
          const r = await readyz(d);
          return r.status === 200 ? r : undefined;
        },
        { timeoutMs: 60_000, message: `/readyz of ${d.executor.daemonId} to say ready again` },
      );
      expect(ready.body).toMatchObject({
        status: "ok",
        checks: { database: "ok", listener: "ok", worker: "ok", scheduler: "ok" },
      });
    }
    // Each daemon works again: it runs handlers it started after the outage.
    for (const d of daemons) {
      await waitFor(
        async () =>
          (await count(
            `select count(*)::int as n from pgfn.function_runs
             where worker_id = $1 and status = 'succeeded' and started_at > $2`,
            [d.executor.daemonId, resumedAt],
          )) > 0,
        {
          timeoutMs: 60_000,
          message: `runs by ${d.executor.daemonId} after the outage`,
        },
      );
    }
  } finally {
    await writer.stop();
  }

  const committed = await count(`select count(*)::int as n from public.items`);
  expect(committed).toBe(nextId);
  try {
    await waitFor(async () => (await succeededRows()) === committed, {
      timeoutMs: 120_000,
      intervalMs: 200,
      message: `all ${committed} committed rows to have run`,
    });
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${await unrunRows()}`, { cause: error });
  }
  expect(unhandled).toEqual([]);
}

/** What the rows that did not run look like: their events, jobs and attempts. */
async function unrunRows(): Promise<string> {
  const { rows } = await t.pool.query(
    `select e.id as event_id, e.dispatched_at is not null as dispatched,
       (select json_agg(json_build_object('attempt', r.attempt, 'status', r.status, 'worker', r.worker_id,
          'job', r.job_id, 'error', r.error_code) order by r.attempt)
        from pgfn.function_runs r where r.event_id = e.id) as runs,
       (select json_agg(json_build_object('id', j.id, 'key', j.key, 'locked_by', j.locked_by,
          'attempts', j.attempts, 'max_attempts', j.max_attempts, 'run_at', j.run_at,
          'last_error', j.last_error))
        from graphile_worker._private_jobs j where j.payload->>'event_id' = e.id::text) as jobs
     from pgfn.events e
     where e.function_name = 'echo'
       and not exists (select 1 from pgfn.function_runs r where r.event_id = e.id and r.status = 'succeeded')
     order by e.id limit 20`,
  );
  const daemons = await t.pool.query(
    `select id, heartbeat_at, graphile_worker_ids from pgfn.daemons`,
  );
  return `Rows not run: ${JSON.stringify(rows, null, 1)}\nDaemons: ${JSON.stringify(daemons.rows)}\nWorkers: ${JSON.stringify(daemonStates())}`;
}

const daemonStates = () =>
  daemons.map((d) => ({
    id: d.executor.daemonId,
    state: d.worker?.state,
    ids: d.worker?.graphileWorkerIds,
  }));

describe("a database outage under load", () => {
  it("a 1.5 s outage: every committed row runs, both daemons work on, /readyz follows", async () => {
    await survivesOutage(1500);
  }, 300_000);

  it("a 10 s outage, on the same daemons: the same", async () => {
    await survivesOutage(10_000);
    // No attempt is left `running` by a daemon that is alive and idle.
    await waitFor(
      async () =>
        (await count(
          `select count(*)::int as n from pgfn.function_runs where status = 'running'`,
        )) === 0,
      { timeoutMs: 30_000, message: "no attempt left running" },
    );
  }, 300_000);
});
