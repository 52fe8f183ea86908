/**
 * The scheduler: on each tick, every due schedule (`pgfn.schedules`) fires
 * its slots as `pgfn.events` rows (source 'schedule'); dispatch and the
 * worker then run them like any other event, retries and dead letters
 * included.
 *
 * Once per slot with any number of daemons: a schedule is claimed FOR UPDATE
 * SKIP LOCKED, its slots are computed from the locked row's next_run, and the
 * events, last_run and next_run are written in that one transaction. A second
 * scheduler either skips the locked row or, once it is committed, finds
 * next_run past its clock. The unique index on (function, scheduled_time)
 * backs this up.
 *
 * Time is injected (`clock`), never read from Date directly, so tests step
 * through minutes, downtimes and DST transitions in milliseconds.
 */
import type { Logger } from "pino";
import type { Db } from "../db/database.js";
import {
  advanceSchedule,
  claimDueSchedule,
  insertScheduleEvents,
  markScheduleUnusable,
  type ScheduleRow,
} from "../db/schedules.js";
import { coerceError } from "../errors.js";
import type { CatchUp } from "../interfaces.js";
import { compileCron, DEFAULT_CATCH_UP_LIMIT, planSlots, type PlanOptions } from "./slots.js";

/** The current time. The daemon's is the system clock; tests pass their own. */
export type Clock = () => Date;

export const systemClock: Clock = () => new Date();

export interface SchedulerOptions extends PlanOptions {
  readonly db: Db;
  readonly logger: Logger;
  /** (Default: systemClock) */
  readonly clock?: Clock;
  /** How often start() ticks. (Default: 1000) */
  readonly intervalMs?: number;
}

/** What one tick did. */
export interface TickResult {
  /** Schedules this tick handled (fired, skipped, or first seen). */
  readonly schedules: number;
  /** Events inserted, one per slot fired. */
  readonly fired: number;
  /** Due slots dropped by catch-up policies. */
  readonly skipped: number;
}

export class Scheduler {
  private readonly clock: Clock;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<TickResult | undefined> | undefined;
  private stopped = false;
  /** Events this scheduler fired since it started. */
  fired = 0;
  /**
   * True while its last tick failed (the database is away): nothing is lost,
   * the schedules stay due and every tick retries, but /readyz says so.
   */
  failing = false;

  constructor(private readonly options: SchedulerOptions) {
    this.clock = options.clock ?? systemClock;
  }

  /** Ticks now and then every intervalMs, until stop(). */
  start(): void {
    if (this.timer || this.stopped) return;
    const kick = () => {
      // A slow tick (a big catch-up) is never overlapped by the next one.
      this.running ??= this.tick()
        .then((result) => {
          this.failing = false;
          return result;
        })
        .catch((error: unknown) => {
          this.failing = true;
          // Nothing is lost: the schedules stay due and the next tick retries.
          this.options.logger.warn(
            { operation: "schedule", error: coerceError(error).message },
            "scheduler tick failed; will retry",
          );
          return undefined;
        })
        .finally(() => (this.running = undefined));
    };
    kick();
    this.timer = setInterval(kick, this.options.intervalMs ?? 1000);
    this.timer.unref();
  }

  /** Stops ticking and waits for the tick under way. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /**
   * Fires every schedule due at `now` (default: the clock), one transaction
   * per schedule, until none is left that this scheduler can claim.
   */
  async tick(now: Date = this.clock()): Promise<TickResult> {
    const handled: string[] = [];
    let fired = 0;
    let skipped = 0;
    for (;;) {
      const outcome = await this.options.db
        .transaction()
        .execute((trx) => this.fireOne(trx, now, handled));
      if (!outcome) break;
      handled.push(outcome.functionName);
      fired += outcome.fired;
      skipped += outcome.skipped;
    }
    this.fired += fired;
    return { schedules: handled.length, fired, skipped };
  }

  private async fireOne(
    trx: Db,
    now: Date,
    handled: readonly string[],
  ): Promise<{ functionName: string; fired: number; skipped: number } | undefined> {
    const { logger } = this.options;
    const row = await claimDueSchedule(trx, now, handled);
    if (!row) return undefined;
    const log = { operation: "schedule", function: row.function_name, cron: row.cron };

    let plan;
    try {
      plan = planSlots(
        {
          cron: row.cron,
          timezone: row.timezone,
          catchUp: row.catch_up,
          nextRun: row.next_run,
          activeSince: row.active_since,
        },
        now,
        this.options,
        compileCron(row.cron, row.timezone),
      );
      if (!plan.nextRun && plan.fire.length === 0) {
        throw new Error(
          `The cron expression "${row.cron}" matches no date from now on (e.g. February 30th); change it with pgfn.schedule().`,
        );
      }
    } catch (error) {
      // Left alone until pgfn.schedule() changes it; the reason is on the row.
      const message = coerceError(error).message;
      await markScheduleUnusable(trx, row.function_name, message);
      logger.error({ ...log, error: message }, "schedule cannot be used; it will not fire");
      return { functionName: row.function_name, fired: 0, skipped: 0 };
    }

    const ids = await insertSlotEvents(trx, row, plan.fire, now);
    await advanceSchedule(trx, row.function_name, plan.nextRun, plan.fire.at(-1));
    if (ids.length > 0) {
      // The listener is woken at commit by pgfn.wake, as for every new event.
      logger.info(
        {
          ...log,
          event_ids: ids,
          scheduled_times: plan.fire.map((d) => d.toISOString()),
        },
        ids.length === 1 ? "schedule fired" : `schedule fired ${ids.length} slots`,
      );
    }
    if (plan.skipped > 0) {
      const level = plan.skippedAtLeast ? "warn" : "info";
      logger[level](
        { ...log, catch_up: row.catch_up, skipped: plan.skipped },
        `${plan.skippedAtLeast ? "more than " : ""}${plan.skipped} missed slot(s) not fired (${explain(row.catch_up, plan.skippedAtLeast, this.options.limit ?? DEFAULT_CATCH_UP_LIMIT)})`,
      );
    }
    return { functionName: row.function_name, fired: ids.length, skipped: plan.skipped };
  }
}

function explain(catchUp: CatchUp, overLimit: boolean, limit: number): string {
  if (catchUp === "all" && overLimit) return `catch_up 'all' fires at most the latest ${limit}`;
  return catchUp === "latest"
    ? "catch_up 'latest' fires only the most recent"
    : "catch_up 'none' fires no missed slot";
}

/** One event per slot; a slot that already has one is left as it is. */
async function insertSlotEvents(
  trx: Db,
  row: ScheduleRow,
  slots: readonly Date[],
  now: Date,
): Promise<string[]> {
  const payloads = slots.map((slot) => ({
    cron: row.cron,
    timezone: row.timezone,
    scheduled_time: slot.toISOString(),
    actual_time: now.toISOString(),
  }));
  return insertScheduleEvents(trx, row.function_name, payloads);
}
