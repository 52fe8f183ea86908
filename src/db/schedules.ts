/**
 * Queries on `pgfn.schedules` (sql/000007_schedules.sql) and the events a
 * schedule fires, for the scheduler (src/scheduler/scheduler.ts). Each runs
 * inside the transaction that claimed the schedule.
 */
import { sql, type Selectable } from "kysely";
import type { Db, SchedulesTable } from "./database.js";

export type ScheduleRow = Selectable<SchedulesTable>;

/**
 * Claims (FOR UPDATE SKIP LOCKED) the usable schedule due longest ago at
 * `now`, never one of `handled`; undefined when none is due or all due ones
 * are claimed by other schedulers.
 */
export async function claimDueSchedule(
  trx: Db,
  now: Date,
  handled: readonly string[],
): Promise<ScheduleRow | undefined> {
  return (
    trx
      .selectFrom("pgfn.schedules")
      .selectAll()
      .where("error", "is", null)
      .where((eb) => eb.or([eb("next_run", "is", null), eb("next_run", "<=", now)]))
      // Each schedule once per tick, whatever it left behind.
      .$if(handled.length > 0, (qb) => qb.where("function_name", "not in", handled))
      .orderBy(sql`next_run nulls first`)
      .limit(1)
      .forUpdate()
      .skipLocked()
      .executeTakeFirst()
  );
}

/** Marks a schedule unusable, with the reason; it stays so until pgfn.schedule() changes it. */
export async function markScheduleUnusable(
  trx: Db,
  functionName: string,
  error: string,
): Promise<void> {
  await trx
    .updateTable("pgfn.schedules")
    .set({ error, next_run: null })
    .where("function_name", "=", functionName)
    .execute();
}

/** Moves a schedule on: its next slot, and the last one it fired (if it fired any). */
export async function advanceSchedule(
  trx: Db,
  functionName: string,
  nextRun: Date | null,
  lastFired: Date | undefined,
): Promise<void> {
  await trx
    .updateTable("pgfn.schedules")
    .set({ next_run: nextRun, ...(lastFired && { last_run: lastFired }) })
    .where("function_name", "=", functionName)
    .execute();
}

/**
 * One 'schedule' event per payload, in order; a slot that already has one
 * (the unique index on function and scheduled_time) is left as it is.
 * Returns the new events' ids.
 */
export async function insertScheduleEvents(
  trx: Db,
  functionName: string,
  payloads: readonly unknown[],
): Promise<string[]> {
  if (payloads.length === 0) return [];
  const { rows } = await sql<{ id: string }>`
    insert into pgfn.events (function_name, source, payload)
    select ${functionName}, 'schedule', p
    from jsonb_array_elements(${JSON.stringify(payloads)}::jsonb) with ordinality as t (p, n)
    order by n
    on conflict (function_name, (payload ->> 'scheduled_time'))
      where source = 'schedule' and replay_of is null
      do nothing
    returning id`.execute(trx);
  return rows.map((r) => r.id);
}
