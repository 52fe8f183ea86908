/**
 * Cron slots: which of a schedule's slots fire now, which are skipped, and
 * when the next one is. Pure (no database, no clock of its own), so every
 * case, DST included, is a plain function call away from a test.
 *
 * Slots come from croner in 5-part mode (classic cron: minute hour
 * day-of-month month day-of-week, OR between the two day fields). Its DST
 * rules, which pgfn keeps: a fixed-time job (one minute, one hour, e.g.
 * `30 2 * * *`) whose time falls in a spring-forward gap fires once, at the
 * first valid time after the gap (03:00 in Europe/Berlin); when autumn repeats
 * an hour it fires once, at the first occurrence. Interval jobs (`*`, steps,
 * lists, ranges in minute or hour) skip the times in a gap and fire on both
 * passes of a repeated hour, so they keep their real-time rhythm.
 */
import { Cron } from "croner";
import { PgfnError } from "../errors.js";
import type { CatchUp } from "../interfaces.js";

/** Slots fired at most per schedule and tick under catch_up 'all'. (Default: 1000) */
export const DEFAULT_CATCH_UP_LIMIT = 1000;

/**
 * How late a slot may fire and still count as on time rather than missed: a
 * few ticks of a busy daemon, not a downtime. Only catch_up 'none' tells the
 * two apart. (Default: 10000)
 */
export const DEFAULT_GRACE_MS = 10_000;

export interface ScheduleSpec {
  readonly cron: string;
  readonly timezone: string;
  readonly catchUp: CatchUp;
  /** The first slot not yet handled (`next_run`); null for a schedule never seen. */
  readonly nextRun: Date | null;
  /** Slots after this are due (`active_since`). */
  readonly activeSince: Date;
}

export interface SlotPlan {
  /** The slots to fire now, oldest first. */
  readonly fire: readonly Date[];
  /** Due slots not fired (missed and dropped by the catch-up policy or the limit). */
  readonly skipped: number;
  /** True when there were more due slots than were counted (past the limit). */
  readonly skippedAtLeast: boolean;
  /** The first slot after `now`: the schedule's new next_run. Null if the cron never matches again. */
  readonly nextRun: Date | null;
}

export interface PlanOptions {
  /** (Default: DEFAULT_CATCH_UP_LIMIT) */
  readonly limit?: number;
  /** (Default: DEFAULT_GRACE_MS) */
  readonly graceMs?: number;
}

/**
 * Parses a cron expression for a time zone. Throws INVALID_REQUEST with a
 * message fit for `pgfn.schedules.error` when croner or the platform's time
 * zone data refuse what the SQL check let through.
 */
export function compileCron(cron: string, timezone: string): Cron {
  try {
    // Throws for a zone Intl does not know; croner only notices when first used.
    new Intl.DateTimeFormat("en-US", { timeZone: timezone });
  } catch {
    throw new PgfnError(
      "INVALID_REQUEST",
      `The time zone "${timezone}" is unknown to the daemon's time zone data; use an IANA name such as "Europe/Berlin".`,
    );
  }
  try {
    return new Cron(cron, { timezone, mode: "5-part" });
  } catch (error) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `The cron expression "${cron}" cannot be used: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

/**
 * What a schedule does at `now`: every due slot is in [cursor, now], where
 * the cursor is next_run (or, for a new schedule, the first slot after
 * active_since).
 * - all: fires every due slot, oldest first; past `limit`, only the latest
 *   `limit` (the older ones are reported as skipped).
 * - latest: fires the most recent due slot; skips the others.
 * - none: fires the most recent due slot only if it is on time (within
 *   `graceMs`); a slot missed for longer is skipped.
 */
export function planSlots(
  spec: ScheduleSpec,
  now: Date,
  options: PlanOptions = {},
  cron: Cron = compileCron(spec.cron, spec.timezone),
): SlotPlan {
  const limit = options.limit ?? DEFAULT_CATCH_UP_LIMIT;
  const graceMs = options.graceMs ?? DEFAULT_GRACE_MS;
  const cursor = spec.nextRun ?? cron.nextRun(spec.activeSince);
  if (!cursor || cursor > now) {
    // Not due. Keep the cursor even if it lies further ahead than the next
    // slot after `now` (active_since ahead of this clock): earlier slots were
    // never due.
    return { fire: [], skipped: 0, skippedAtLeast: false, nextRun: cursor };
  }
  const nextRun = cron.nextRun(now);
  // Walk forward from the cursor, but never further than limit + 1 slots: a
  // per-minute schedule down for a year has half a million.
  const due: Date[] = [];
  for (let slot: Date | null = cursor; slot && slot <= now; slot = cron.nextRun(slot)) {
    if (due.length === limit) {
      return overflow(spec, now, cron, cursor, limit, graceMs, nextRun);
    }
    due.push(slot);
  }
  const latest = due.at(-1)!;
  switch (spec.catchUp) {
    case "all":
      return { fire: due, skipped: 0, skippedAtLeast: false, nextRun };
    case "latest":
      return { fire: [latest], skipped: due.length - 1, skippedAtLeast: false, nextRun };
    case "none": {
      const onTime = now.getTime() - latest.getTime() <= graceMs;
      return {
        fire: onTime ? [latest] : [],
        skipped: due.length - (onTime ? 1 : 0),
        skippedAtLeast: false,
        nextRun,
      };
    }
  }
}

/** More than `limit` slots are due: the latest ones, counted backwards from now. */
function overflow(
  spec: ScheduleSpec,
  now: Date,
  cron: Cron,
  cursor: Date,
  limit: number,
  graceMs: number,
  nextRun: Date | null,
): SlotPlan {
  // previousRuns excludes its reference; a slot exactly at `now` is due.
  const after = new Date(now.getTime() + 1);
  const n = spec.catchUp === "all" ? limit : 1;
  const fire = cron
    .previousRuns(n, after)
    .filter((slot) => slot >= cursor)
    .reverse();
  const latest = fire.at(-1);
  if (spec.catchUp === "none" && (!latest || now.getTime() - latest.getTime() > graceMs)) {
    return { fire: [], skipped: limit, skippedAtLeast: true, nextRun };
  }
  return { fire, skipped: spec.catchUp === "all" ? 1 : limit, skippedAtLeast: true, nextRun };
}
