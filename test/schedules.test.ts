// Schedules as a user sees them: pgfn.schedule / pgfn.unschedule in SQL, and
// the events the scheduler fires, once per slot, whatever the number of
// schedulers, with each catch-up policy after downtime. Time is the
// scheduler's injected clock: a tick is a function call at a chosen instant.
import { readFile } from "node:fs/promises";
import type pg from "pg";
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createDb } from "../src/db/database.js";
import { createPool } from "../src/db/pool.js";
import { deployFunction } from "../src/deploy.js";
import { silentLogger } from "../src/logger.js";
import { Scheduler, type TickResult } from "../src/scheduler/scheduler.js";
import { compileCron } from "../src/scheduler/slots.js";
import { exampleWasm } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("schedules");
let scheduler: Scheduler;
const MINUTE = 60_000;

const FUNCTIONS = [
  "on_time",
  "race_a",
  "race_b",
  "race_c",
  "down_all",
  "down_latest",
  "down_none",
  "spring",
  "autumn",
  "gone",
  "feb30",
  "again",
];

beforeAll(async () => {
  const db = createDb(t.pool);
  const wasm = await readFile(exampleWasm("echo"));
  for (const name of FUNCTIONS) await deployFunction(db, { name, wasm });
  scheduler = new Scheduler({ db, logger: silentLogger() });
});
// Every tick fires every due schedule in the database: each test starts
// with none, and no events (no daemon runs here, so there are no runs).
beforeEach(async () => {
  await t.pool.query(`delete from pgfn.schedules; delete from pgfn.events`);
});

async function schedule(...args: (string | null)[]): Promise<string> {
  const placeholders = args.map((_, i) => `$${i + 1}`).join(", ");
  const { rows } = await t.pool.query<{ r: string }>(
    `select pgfn.schedule(${placeholders}) as r`,
    args,
  );
  return rows[0]!.r;
}

async function scheduleError(...args: (string | null)[]): Promise<string> {
  return schedule(...args).then(
    () => {
      throw new Error(`pgfn.schedule(${args.join(", ")}) was accepted`);
    },
    (error: Error) => error.message,
  );
}

/** The scheduled times of a function's schedule events, in the order they were fired. */
async function firedSlots(fn: string): Promise<string[]> {
  const { rows } = await t.pool.query<{ s: string }>(
    `select payload ->> 'scheduled_time' as s from pgfn.events
     where function_name = $1 and source = 'schedule' order by id`,
    [fn],
  );
  return rows.map((r) => r.s);
}

async function scheduleRow(fn: string) {
  const { rows } = await t.pool.query(`select * from pgfn.schedules where function_name = $1`, [
    fn,
  ]);
  return rows[0];
}

/** A minute slot; every test's time starts here (clocks are the tests' own). */
const BASE = Date.parse("2030-01-01T00:00:00Z");

/**
 * Makes the schedules not yet seen by a scheduler active from just before
 * BASE, as if created then, and returns BASE: their first slot.
 */
async function activate(): Promise<number> {
  await t.pool.query(`update pgfn.schedules set active_since = $1 where next_run is null`, [
    new Date(BASE - 30_000),
  ]);
  return BASE;
}

const iso = (ms: number) => new Date(ms).toISOString();

describe("pgfn.schedule in SQL", () => {
  it("stores the schedule and says what it did, in words", async () => {
    expect(await schedule("on_time", "*/5  * * * *")).toBe(
      "scheduled on_time: '*/5 * * * *' (UTC), catch_up latest; next_run is filled in by a running daemon's scheduler",
    );
    expect(await schedule("on_time", "*/5 * * * *", "all", "Europe/Berlin")).toMatch(
      /^rescheduled on_time: '\*\/5 \* \* \* \*' \(Europe\/Berlin\), catch_up all;/,
    );
    const row = await scheduleRow("on_time");
    expect(row).toMatchObject({
      cron: "*/5 * * * *",
      timezone: "Europe/Berlin",
      catch_up: "all",
      last_run: null,
      next_run: null,
      error: null,
    });
  });

  it("refuses a bad cron expression, naming the field and what is allowed", async () => {
    await schedule("on_time", "*/5 * * * *");
    const cases: [string | null, RegExp][] = [
      ["* * * *", /cron '\* \* \* \*' has 4 fields; it needs 5: minute hour day-of-month month/],
      ["* * * * * *", /has 6 fields; it needs 5/],
      ["61 * * * *", /the minute field '61' .* is out of range: it allows 0 to 59/],
      ["0 24 * * *", /the hour field '24' .* out of range: it allows 0 to 23/],
      ["0 0 0 * *", /the day-of-month field '0' .* it allows 1 to 31/],
      ["0 0 * 13 *", /the month field '13' .* it allows 1 to 12/],
      ["0 0 * * 8", /the day-of-week field '8' .* it allows 0 to 7/],
      ["5-1 * * * *", /range that runs backwards: write it low to high/],
      ["*/0 * * * *", /has step 0; it must be 1 to 60/],
      ["5/5 * * * *", /not valid: use \*, N, N-M, \*\/S or N-M\/S/],
      ["0 0 * foo *", /the month field 'foo' .* is not valid/],
      ["0 9 * * MON-FRX", /the day-of-week field 'MON-FRX' .* is not valid/],
      ["@often", /unknown cron nickname @often: use @yearly/],
      ["", /a cron expression is required/],
      [null, /a cron expression is required/],
    ];
    for (const [cron, message] of cases) {
      expect(await scheduleError("on_time", cron)).toMatch(message);
    }
    // Nothing changed by the refused calls.
    expect((await scheduleRow("on_time")).cron).toBe("*/5 * * * *");
  });

  it("accepts exactly what the daemon's cron parser accepts", async () => {
    const patterns = [
      "* * * * *",
      "30 2 * * *",
      "0 9 * * MON-FRI",
      "0 9 * * mon,wed,fri",
      "0 0 1,15 jan-jun *",
      "*/15 8-18/2 * * 1-5",
      "0 0 * * 0-7",
      "00 01 * * 7",
      "*/60 * * * *",
      "@daily",
      "@hourly",
      "@weekly",
      "@monthly",
      "@yearly",
      "@annually",
      "@midnight",
      "61 * * * *",
      "*/61 * * * *",
      "5/5 * * * *",
      "0 0 L * *",
      "0 0 ? * *",
      "0 0 * * 1#2",
      "* * * * * *",
      "0 0-59/90 * * *",
    ];
    for (const cron of patterns) {
      const { rows } = await t.pool.query<{ e: string | null }>(`select pgfn.cron_error($1) as e`, [
        cron,
      ]);
      let parserError: string | null = null;
      try {
        compileCron(cron, "UTC");
      } catch (error) {
        parserError = (error as Error).message;
      }
      // SQL may be stricter (L, ?, # are croner extensions), never looser.
      if (rows[0]!.e === null) expect(parserError, cron).toBeNull();
      if (!["0 0 L * *", "0 0 ? * *", "0 0 * * 1#2"].includes(cron)) {
        expect(rows[0]!.e === null, cron).toBe(parserError === null);
      }
    }
  });

  it("refuses a cron that names no date that exists, and the schedule in force stays", async () => {
    await schedule("on_time", "*/5 * * * *");
    const cases: [string, string][] = [
      ["0 0 30 2 *", "'2' has a day of its day-of-month field '30'"],
      ["0 0 30-31 feb *", "'feb' has a day of its day-of-month field '30-31'"],
      ["15 8 31 4,6,9,11 *", "'4,6,9,11' has a day of its day-of-month field '31'"],
      ["0 0 31 2-6/2 *", "'2-6/2' has a day of its day-of-month field '31'"],
    ];
    for (const [cron, fields] of cases) {
      expect(await scheduleError("on_time", cron)).toBe(
        `pgfn.schedule: cron '${cron}' never fires: no month of its month field ${fields} (February has 29 days at most, April, June, September and November 30)`,
      );
    }
    expect(await scheduleRow("on_time")).toMatchObject({ cron: "*/5 * * * *", error: null });
    // February 29th comes every fourth year; a restricted day-of-week fires any month.
    for (const cron of ["0 0 29 2 *", "0 0 30 2 1", "0 0 31 4 0-6", "0 0 */30 2 *"]) {
      expect(await schedule("on_time", cron)).toMatch(/^rescheduled on_time/);
    }
  });

  it("finds no date exactly where the daemon's cron parser finds no next slot", async () => {
    const crons: string[] = [];
    for (const dom of ["1", "28", "29", "30", "31", "30-31", "29,31", "*/30", "2-31/29", "*"])
      for (const month of ["2", "feb", "4,6,9,11", "2,4", "*/2", "2-4/2", "11", "*"])
        for (const dow of ["*", "1", "*/1", "0-6", "SUN"]) crons.push(`0 0 ${dom} ${month} ${dow}`);
    const { rows } = await t.pool.query<{ cron: string; e: string | null }>(
      `select c as cron, pgfn.cron_error(c) as e from unnest($1::text[]) c`,
      [crons],
    );
    const from = new Date("2026-12-02T00:00:00Z");
    const disagree = rows.filter(
      ({ cron, e }) => (e === null) !== (compileCron(cron, "UTC").nextRun(from) !== null),
    );
    expect(disagree).toEqual([]);
    // Both kinds are among them.
    expect(rows.filter((r) => r.e !== null).length).toBeGreaterThanOrEqual(10);
    expect(rows.filter((r) => r.e === null).length).toBeGreaterThan(200);
  });

  it("refuses an unknown time zone, an unknown catch_up and a function that is not deployed", async () => {
    expect(await scheduleError("on_time", "* * * * *", "latest", "Mars/Olympus")).toMatch(
      /unknown time zone 'Mars\/Olympus': use an IANA name such as 'UTC' or 'Europe\/Berlin'/,
    );
    expect(await scheduleError("on_time", "* * * * *", "latest", "europe/berlin")).toMatch(
      /unknown time zone/,
    );
    // Listed by Postgres, unknown to Node's Intl: the daemon could not use it.
    expect(await scheduleError("on_time", "* * * * *", "latest", "posix/CET")).toMatch(
      /unknown time zone/,
    );
    expect(await scheduleError("on_time", "* * * * *", "sometimes")).toMatch(
      /unknown catch_up 'sometimes': use 'all' \(every missed slot\), 'latest' \(the most recent one\) or 'none'/,
    );
    expect(await scheduleError("no_such_fn", "* * * * *")).toMatch(
      /there is no function 'no_such_fn': deploy it first \(pgfn deploy no_such_fn FILE.wasm\), then schedule it/,
    );
    expect(await scheduleError("Bad Name", "* * * * *")).toMatch(/invalid function name/);
  });

  it("unschedule removes the schedule and says whether there was one", async () => {
    await schedule("gone", "* * * * *");
    const base = await activate();
    await scheduler.tick(new Date(base + 100));
    expect(await firedSlots("gone")).toEqual([iso(base)]);
    const { rows } = await t.pool.query(
      `select pgfn.unschedule('gone') as first, pgfn.unschedule('gone') as second`,
    );
    expect(rows[0]).toEqual({ first: true, second: false });
    await scheduler.tick(new Date(base + 3 * MINUTE + 100));
    expect(await firedSlots("gone")).toEqual([iso(base)]);
  });
});

describe("firing", () => {
  it("fires a slot on time: one event with the cron and the slot, last_run and next_run advanced", async () => {
    await schedule("on_time", "* * * * *", "latest", "UTC");
    const base = await activate();
    // Before the slot: the scheduler only fills in next_run.
    expect(await scheduler.tick(new Date(base - 20_000))).toMatchObject({ fired: 0 });
    expect((await scheduleRow("on_time")).next_run).toEqual(new Date(base));

    const result: TickResult = await scheduler.tick(new Date(base + 250));
    expect(result.fired).toBe(1);
    const { rows } = await t.pool.query(
      `select id, source, payload, dispatched_at from pgfn.events where function_name = 'on_time'`,
    );
    expect(rows).toEqual([
      {
        id: expect.any(String),
        source: "schedule",
        payload: {
          cron: "* * * * *",
          timezone: "UTC",
          scheduled_time: iso(base),
          actual_time: iso(base + 250),
        },
        // No daemon here: the outbox keeps it for the next listener.
        dispatched_at: null,
      },
    ]);
    expect(await scheduleRow("on_time")).toMatchObject({
      last_run: new Date(base),
      next_run: new Date(base + MINUTE),
    });
    // The same slot again, a moment later: nothing.
    expect((await scheduler.tick(new Date(base + 900))).fired).toBe(0);
    expect(await firedSlots("on_time")).toEqual([iso(base)]);
  });

  it("three schedulers on their own pools ticking the same slots give exactly one event per slot", async () => {
    const fns = ["race_a", "race_b", "race_c"];
    for (const fn of fns) await schedule(fn, "* * * * *", "all");
    const base = await activate();
    const pools: pg.Pool[] = [1, 2, 3].map(() => createPool(t.url, 3, silentLogger()));
    try {
      const schedulers = pools.map(
        (pool) => new Scheduler({ db: createDb(pool), logger: silentLogger() }),
      );
      // Each minute up to +5, then a downtime to +12 (catch-up of all),
      // each instant ticked by all three at once, twice, with clocks a
      // little apart as real hosts' are.
      const instants = [0, 1, 2, 3, 4, 5, 12].map((m) => base + m * MINUTE + 100);
      let fired = 0;
      for (const instant of instants) {
        const results = await Promise.all(
          [0, 1].flatMap(() => schedulers.map((s, i) => s.tick(new Date(instant + i * 40)))),
        );
        fired += results.reduce((sum, r) => sum + r.fired, 0);
      }
      const expected = Array.from({ length: 13 }, (_, m) => iso(base + m * MINUTE));
      for (const fn of fns) expect(await firedSlots(fn)).toEqual(expected);
      expect(fired).toBe(3 * 13);
      // The work was shared, not done by one scheduler alone.
      expect(schedulers.filter((s) => s.fired > 0).length).toBeGreaterThan(1);
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
  });

  it("after downtime across five slots: all fires 5, latest 1, none 0; the next slot fires for each", async () => {
    await schedule("down_all", "* * * * *", "all");
    await schedule("down_latest", "* * * * *", "latest");
    await schedule("down_none", "* * * * *", "none");
    const fns = ["down_all", "down_latest", "down_none"];
    const base = await activate();
    await scheduler.tick(new Date(base + 100));
    for (const fn of fns) expect(await firedSlots(fn)).toEqual([iso(base)]);

    // Every daemon down from base+0:00.1 to base+5:30: slots +1..+5 missed.
    // A new scheduler: what it knows comes from the database.
    const after = new Scheduler({ db: createDb(t.pool), logger: silentLogger() });
    await after.tick(new Date(base + 5 * MINUTE + 30_000));
    const missed = [1, 2, 3, 4, 5].map((m) => iso(base + m * MINUTE));
    expect(await firedSlots("down_all")).toEqual([iso(base), ...missed]);
    expect(await firedSlots("down_latest")).toEqual([iso(base), iso(base + 5 * MINUTE)]);
    expect(await firedSlots("down_none")).toEqual([iso(base)]);
    expect(await scheduleRow("down_none")).toMatchObject({
      last_run: new Date(base),
      next_run: new Date(base + 6 * MINUTE),
    });

    await after.tick(new Date(base + 6 * MINUTE + 100));
    for (const fn of fns) expect((await firedSlots(fn)).at(-1)).toBe(iso(base + 6 * MINUTE));
    expect(await firedSlots("down_all")).toHaveLength(7);
    expect(await firedSlots("down_latest")).toHaveLength(3);
    expect(await firedSlots("down_none")).toHaveLength(2);
  });

  it("across DST in Europe/Berlin, 30 2 * * * fires once a night: 03:00 in spring, the first 02:30 in autumn", async () => {
    await schedule("spring", "30 2 * * *", "all", "Europe/Berlin");
    await schedule("autumn", "30 2 * * *", "all", "Europe/Berlin");
    // As if created just before each transition's weekend.
    await t.pool.query(
      `update pgfn.schedules set active_since = case function_name
         when 'spring' then '2026-03-27T12:00:00Z'::timestamptz
         else '2026-10-23T12:00:00Z'::timestamptz end
       where function_name in ('spring', 'autumn')`,
    );
    // A tick every 10 minutes through both nights.
    const tickThrough = async (from: string, to: string) => {
      for (let ms = Date.parse(from); ms <= Date.parse(to); ms += 10 * MINUTE) {
        await scheduler.tick(new Date(ms));
      }
    };
    await tickThrough("2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z");
    // Else spring would catch up on the summer at the autumn ticks.
    await t.pool.query(`select pgfn.unschedule('spring')`);
    await tickThrough("2026-10-23T12:00:00Z", "2026-10-26T12:00:00Z");
    expect(await firedSlots("spring")).toEqual([
      "2026-03-28T01:30:00.000Z", // 02:30 CET
      "2026-03-29T01:00:00.000Z", // 03:00 CEST: there is no 02:30 that night
      "2026-03-30T00:30:00.000Z", // 02:30 CEST
    ]);
    expect(await firedSlots("autumn")).toEqual([
      "2026-10-24T00:30:00.000Z", // 02:30 CEST
      "2026-10-25T00:30:00.000Z", // the first 02:30; not the second, at 01:30Z
      "2026-10-26T01:30:00.000Z", // 02:30 CET
    ]);
  });

  it("a cron that can never fire is recorded on the row with the reason, and skipped until rescheduled", async () => {
    // pgfn.schedule refuses it; a row written before it did, or by hand, is still handled.
    await t.pool.query(
      `insert into pgfn.schedules (function_name, cron) values ('feb30', '0 0 30 2 *')`,
    );
    await scheduler.tick(new Date(await activate()));
    expect(await scheduleRow("feb30")).toMatchObject({
      error: expect.stringMatching(/"0 0 30 2 \*" matches no date from now on/),
      next_run: null,
    });
    expect(await firedSlots("feb30")).toEqual([]);
    await schedule("feb30", "0 0 28 2 *");
    await scheduler.tick(new Date(await activate()));
    expect(await scheduleRow("feb30")).toMatchObject({
      error: null,
      next_run: expect.any(Date),
    });
  });

  it("scheduling again with the same cron keeps its place; a new cron starts from now", async () => {
    await schedule("again", "* * * * *", "all");
    const base = await activate();
    await scheduler.tick(new Date(base + 100));
    await schedule("again", "* * * * *", "all");
    expect((await scheduleRow("again")).next_run).toEqual(new Date(base + MINUTE));
    // Missed +1 and +2 are still caught up after the re-run of the same call.
    await scheduler.tick(new Date(base + 2 * MINUTE + 100));
    expect(await firedSlots("again")).toHaveLength(3);

    await schedule("again", "*/2 * * * *", "all");
    expect(await scheduleRow("again")).toMatchObject({
      next_run: null,
      last_run: new Date(base + 2 * MINUTE),
    });
  });
});
