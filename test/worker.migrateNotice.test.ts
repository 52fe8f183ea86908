// graphile-worker stops its runner when it hears a "breaking" notice on the
// worker:migrate channel, and any role may NOTIFY any channel: a handler's
// db_role, however unprivileged, could stop every daemon's runner and stall
// all their work behind the slowest run under way. The daemon believes a
// notice only when graphile_worker.migrations holds a breaking migration
// newer than its graphile-worker knows.
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { deployFunction } from "../src/deploy.js";
import { GRAPHILE_SCHEMA_REVISION } from "../src/worker/worker.js";
import { withClient } from "./connections.js";
import { capturingLogger } from "./httpHelpers.js";
import {
  createTestRoles,
  enqueueManual,
  finishedRun,
  waitFor,
  waitForRunning,
  type TestRoles,
} from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("worker_migrate_notice");
let roles: TestRoles;
let nobody: string;
let daemon: Daemon;
const log = capturingLogger("info");
const logged = (pattern: RegExp) =>
  waitFor(async () => log.lines.find((line) => pattern.test(line)), {
    timeoutMs: 30_000,
    message: `a log line matching ${pattern} (logged: ${log.lines.slice(-10).join("\n")})`,
  });

const BREAKING_NOTICE = JSON.stringify({ breaking: true, migrationNumber: 999 });

// Runs until the test lets it end: a run under way that a stopping runner
// would wait for.
const SLOW = `export default async (event, ctx) => {
  for (;;) {
    const { rows } = await ctx.db.query("select exists (select 1 from public.release_slow) as go, pg_sleep(0.05)");
    if (rows[0].go) return { released: true };
  }
};`;

const NOTIFIER = `export default async (event, ctx) => {
  await ctx.db.query("select pg_notify('worker:migrate', $1)", [${JSON.stringify(BREAKING_NOTICE)}]);
  return { sent: true };
};`;

beforeAll(async () => {
  roles = await createTestRoles();
  process.env.PGPASSFILE = roles.pgpassFile;
  // No grants at all: it can connect, and NOTIFY needs nothing more.
  nobody = await roles.create("nobody");
  const reader = await roles.create("reader");
  await t.pool.query(`
    create table public.release_slow (at timestamptz not null default now());
    grant select on public.release_slow to ${reader};
  `);
  await t.deploy("echo");
  await deployFunction(t.db, {
    name: "slow",
    source: SLOW,
    fileName: "slow.js",
    dbRole: reader,
    timeoutMs: 120_000,
    maxAttempts: 1,
  });
  await deployFunction(t.db, {
    name: "notifier",
    source: NOTIFIER,
    fileName: "notifier.js",
    dbRole: nobody,
    maxAttempts: 1,
  });
  daemon = await t.startDaemon({ daemonId: "noticed", pollIntervalMs: 200 }, log.logger);
});
afterEach(() => {
  // graphile-worker sets it when it stops for a breaking migration: it must
  // not make the test process fail.
  process.exitCode = undefined;
});
afterAll(async () => {
  await daemon?.stop();
  await t.drop();
  await roles?.drop();
});

describe("a worker:migrate notice", () => {
  it("from a handler's db_role or any other role stops nothing: other work runs during a long run", async () => {
    const slow = await enqueueManual(t.pool, "slow", {});
    await waitForRunning(t.pool, "slow", 30_000);

    expect(
      await finishedRun(t.pool, await enqueueManual(t.pool, "notifier", {}), 30_000),
    ).toMatchObject({ status: "succeeded", result: { sent: true } });
    // And a plain connection of a role with no grants, with the statement.
    const asNobody = new URL(t.url);
    asNobody.username = nobody;
    asNobody.password = "";
    await withClient(asNobody.toString(), (client: pg.Client) =>
      client.query(`notify "worker:migrate", ${client.escapeLiteral(BREAKING_NOTICE)}`),
    );

    // Had the runner stopped, it would wait for the slow run (released only
    // below) before its replacement took this one.
    const victim = await enqueueManual(t.pool, "echo", { n: 1 });
    expect(await finishedRun(t.pool, victim, 20_000)).toMatchObject({ status: "succeeded" });
    const { rows } = await t.pool.query(
      `select status from pgfn.function_runs where event_id = $1`,
      [slow],
    );
    expect(rows).toEqual([{ status: "running" }]);
    expect(daemon.worker!.state).toBe("running");
    expect(daemon.worker!.restarts).toBe(0);
    expect(process.exitCode).toBeUndefined();

    expect(JSON.parse(await logged(/ignored worker:migrate notices/))).toMatchObject({
      level: "warn",
      notices: expect.any(Number),
      sender_pid: expect.any(Number),
    });

    await t.pool.query(`insert into public.release_slow default values`);
    expect(await finishedRun(t.pool, slow, 30_000)).toMatchObject({ status: "succeeded" });
  }, 120_000);

  it("about a breaking migration the database really has stops the runner until it is gone", async () => {
    // What a newer graphile-worker's breaking migration leaves behind, and
    // the notice it sends, from pgfn's owner.
    const future = GRAPHILE_SCHEMA_REVISION + 1;
    await t.pool.query(`insert into graphile_worker.migrations (id, breaking) values ($1, true)`, [
      future,
    ]);
    try {
      await t.pool.query(`select pg_notify('worker:migrate', $1)`, [
        JSON.stringify({ breaking: true, migrationNumber: future }),
      ]);
      await waitFor(async () => daemon.worker!.state === "restarting", {
        timeoutMs: 30_000,
        message: "the runner to stop for the breaking migration",
      });
      await logged(/breaking migration \d+, and this pgfn's graphile-worker knows revisions up to/);
      const waiting = await enqueueManual(t.pool, "echo", { n: 2 });
      // graphile-worker's startup check refuses a replacement.
      await logged(/includes breaking migration.*cannot replace the stopped runner yet/);
      expect(daemon.worker!.restarts).toBe(0);

      await t.pool.query(`delete from graphile_worker.migrations where id = $1`, [future]);
      expect(await finishedRun(t.pool, waiting, 60_000)).toMatchObject({ status: "succeeded" });
      expect(daemon.worker!.restarts).toBe(1);
    } finally {
      await t.pool.query(`delete from graphile_worker.migrations where id = $1`, [future]);
    }
  }, 120_000);
});
