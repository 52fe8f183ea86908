// Which slots a schedule fires at a given moment: catch-up policies, the
// catch-up limit and daylight-saving transitions, as pure function calls.
import { describe, expect, it } from "vitest";
import { compileCron, planSlots, type ScheduleSpec } from "../src/scheduler/slots.js";

const iso = (dates: readonly Date[]) => dates.map((d) => d.toISOString());
const at = (s: string) => new Date(s);

function spec(overrides: Partial<ScheduleSpec>): ScheduleSpec {
  return {
    cron: "* * * * *",
    timezone: "UTC",
    catchUp: "latest",
    nextRun: null,
    activeSince: at("2030-01-01T00:00:00Z"),
    ...overrides,
  };
}

/**
 * Ticks every `stepMinutes` from `from` to `to`, carrying next_run from one
 * tick to the next as the scheduler does, and returns every slot fired.
 */
function fireAcross(s: ScheduleSpec, from: string, to: string, stepMinutes: number): Date[] {
  const fired: Date[] = [];
  let nextRun = s.nextRun;
  for (let t = at(from).getTime(); t <= at(to).getTime(); t += stepMinutes * 60_000) {
    const plan = planSlots({ ...s, nextRun }, new Date(t));
    fired.push(...plan.fire);
    nextRun = plan.nextRun;
  }
  return fired;
}

describe("catch-up", () => {
  // Down from 00:00:30 to 00:05:30: slots 00:01 .. 00:05 were missed.
  const missed = spec({ nextRun: at("2030-01-01T00:01:00Z") });
  const back = at("2030-01-01T00:05:30Z");

  it("all fires every missed slot, oldest first", () => {
    const plan = planSlots({ ...missed, catchUp: "all" }, back);
    expect(iso(plan.fire)).toEqual([
      "2030-01-01T00:01:00.000Z",
      "2030-01-01T00:02:00.000Z",
      "2030-01-01T00:03:00.000Z",
      "2030-01-01T00:04:00.000Z",
      "2030-01-01T00:05:00.000Z",
    ]);
    expect(plan.skipped).toBe(0);
    expect(plan.nextRun?.toISOString()).toBe("2030-01-01T00:06:00.000Z");
  });

  it("latest fires only the most recent missed slot", () => {
    const plan = planSlots({ ...missed, catchUp: "latest" }, back);
    expect(iso(plan.fire)).toEqual(["2030-01-01T00:05:00.000Z"]);
    expect(plan.skipped).toBe(4);
  });

  it("none fires no missed slot, but a slot that is only a few seconds late is on time", () => {
    const plan = planSlots({ ...missed, catchUp: "none" }, back);
    expect(plan.fire).toEqual([]);
    expect(plan.skipped).toBe(5);
    expect(plan.nextRun?.toISOString()).toBe("2030-01-01T00:06:00.000Z");
    const onTime = planSlots(
      { ...missed, catchUp: "none", nextRun: plan.nextRun },
      at("2030-01-01T00:06:02Z"),
    );
    expect(iso(onTime.fire)).toEqual(["2030-01-01T00:06:00.000Z"]);
  });

  it("a new schedule starts after active_since and does not catch up on its past", () => {
    const plan = planSlots(
      spec({ activeSince: at("2030-01-01T00:00:20Z"), catchUp: "all" }),
      at("2030-01-01T00:00:40Z"),
    );
    expect(plan.fire).toEqual([]);
    expect(plan.nextRun?.toISOString()).toBe("2030-01-01T00:01:00.000Z");
  });

  it("a schedule whose active_since is ahead of this clock keeps its first slot", () => {
    const plan = planSlots(
      spec({ activeSince: at("2030-01-01T00:10:30Z") }),
      at("2030-01-01T00:00:00Z"),
    );
    expect(plan.nextRun?.toISOString()).toBe("2030-01-01T00:11:00.000Z");
  });

  it("all is capped: past the limit only the latest slots fire, and the plan says more were skipped", () => {
    // Three days down on a per-minute schedule: 4320 slots.
    const plan = planSlots({ ...missed, catchUp: "all" }, at("2030-01-04T00:00:30Z"), {
      limit: 1000,
    });
    expect(plan.fire).toHaveLength(1000);
    expect(plan.fire[0]!.toISOString()).toBe("2030-01-03T07:21:00.000Z");
    expect(plan.fire.at(-1)!.toISOString()).toBe("2030-01-04T00:00:00.000Z");
    expect(plan.skippedAtLeast).toBe(true);
    const latest = planSlots({ ...missed, catchUp: "latest" }, at("2030-01-04T00:00:30Z"), {
      limit: 1000,
    });
    expect(iso(latest.fire)).toEqual(["2030-01-04T00:00:00.000Z"]);
  });
});

describe("daylight saving time, 30 2 * * * in Europe/Berlin", () => {
  const berlin = spec({ cron: "30 2 * * *", timezone: "Europe/Berlin", catchUp: "all" });

  it("spring forward (2026-03-29, 02:00 -> 03:00): fires once, at 03:00 local, the first time after the gap", () => {
    const fired = fireAcross(
      { ...berlin, activeSince: at("2026-03-27T12:00:00Z") },
      "2026-03-27T12:00:00Z",
      "2026-03-30T12:00:00Z",
      5,
    );
    expect(iso(fired)).toEqual([
      "2026-03-28T01:30:00.000Z", // 02:30 CET
      "2026-03-29T01:00:00.000Z", // 03:00 CEST: 02:30 does not exist that night
      "2026-03-30T00:30:00.000Z", // 02:30 CEST
    ]);
  });

  it("fall back (2026-10-25, 03:00 -> 02:00): fires once, at the first 02:30, not again an hour later", () => {
    const fired = fireAcross(
      { ...berlin, activeSince: at("2026-10-23T12:00:00Z") },
      "2026-10-23T12:00:00Z",
      "2026-10-26T12:00:00Z",
      5,
    );
    expect(iso(fired)).toEqual([
      "2026-10-24T00:30:00.000Z", // 02:30 CEST
      "2026-10-25T00:30:00.000Z", // the first 02:30 (CEST); the second (01:30Z, CET) does not fire
      "2026-10-26T01:30:00.000Z", // 02:30 CET
    ]);
  });

  it("a slot missed across the transition is caught up once, like any other", () => {
    const plan = planSlots(
      { ...berlin, nextRun: at("2026-10-24T00:30:00Z") },
      at("2026-10-26T12:00:00Z"),
    );
    expect(iso(plan.fire)).toEqual([
      "2026-10-24T00:30:00.000Z",
      "2026-10-25T00:30:00.000Z",
      "2026-10-26T01:30:00.000Z",
    ]);
  });

  it("interval schedules keep their real-time rhythm: */30 fires on both passes of the repeated hour", () => {
    const fired = fireAcross(
      {
        ...berlin,
        cron: "*/30 * * * *",
        activeSince: at("2026-10-24T23:45:00Z"),
      },
      "2026-10-24T23:45:00Z",
      "2026-10-25T02:00:00Z",
      1,
    );
    expect(iso(fired)).toEqual([
      "2026-10-25T00:00:00.000Z", // 02:00 CEST
      "2026-10-25T00:30:00.000Z", // 02:30 CEST
      "2026-10-25T01:00:00.000Z", // 02:00 CET
      "2026-10-25T01:30:00.000Z", // 02:30 CET
      "2026-10-25T02:00:00.000Z", // 03:00 CET
    ]);
  });
});

describe("compileCron", () => {
  it("refuses what croner or the time zone data cannot use, with the reason", () => {
    expect(() => compileCron("61 * * * *", "UTC")).toThrow(/cron expression "61 \* \* \* \*"/);
    expect(() => compileCron("* * * * * *", "UTC")).toThrow(/5 parts/);
    expect(() => compileCron("* * * * *", "Factory")).toThrow(/time zone "Factory" is unknown/);
  });
});
