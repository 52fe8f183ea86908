/** Queries on `pgfn.events`, the durable outbox. */
import { sql, type Selectable } from "kysely";
import type { Db, EventsTable } from "./database.js";
import type { EventSource } from "../interfaces.js";

export type EventRow = Selectable<EventsTable>;

/**
 * Turns up to `limit` undispatched events into jobs of up to `perJob` events
 * of one function (sql/000011_batch_jobs.sql), unless `maxReady` jobs are
 * waiting to be taken already: then the events wait to make fuller jobs.
 * Finding some keeps triggers from sending NOTIFY for `awakeMs`; `maySleep`
 * says the caller has polled long enough after that to go back to waiting
 * for notifications.
 */
export async function dispatchBatch(
  db: Db,
  limit: number,
  perJob: number,
  awakeMs: number,
  marginMs: number,
  /** Dispatch nothing while this many jobs wait to be taken. (Default: no bound) */
  maxReady: number | null = null,
): Promise<{ dispatched: number; maySleep: boolean; heldBack: boolean }> {
  const { rows } = await sql<{ dispatched: number; may_sleep: boolean; held_back: boolean }>`
    select dispatched, may_sleep, held_back
    from pgfn.dispatch_awake(${limit}, ${awakeMs}, ${marginMs}, ${perJob}, ${maxReady}::integer)`.execute(
    db,
  );
  return {
    dispatched: rows[0]?.dispatched ?? 0,
    maySleep: rows[0]?.may_sleep ?? true,
    heldBack: rows[0]?.held_back ?? false,
  };
}

/**
 * Records an event that does not come from a trigger. `dispatched` marks it
 * as taken by the caller (a synchronous invoke runs it in-process), so no
 * daemon runs it as well.
 */
export async function insertEvent(
  db: Db,
  input: {
    functionName: string;
    source: Exclude<EventSource, "database">;
    payload: unknown;
    dispatched: boolean;
  },
): Promise<EventRow> {
  return db
    .insertInto("pgfn.events")
    .values({
      function_name: input.functionName,
      source: input.source,
      payload: JSON.stringify(input.payload ?? null),
      dispatched_at: input.dispatched ? sql<Date>`clock_timestamp()` : null,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
}

/** Events committed but not yet turned into jobs. */
export async function countUndispatched(db: Db): Promise<number> {
  const row = await db
    .selectFrom("pgfn.events")
    .select((eb) => eb.fn.countAll<string>().as("n"))
    .where("dispatched_at", "is", null)
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

/** Deletes an event (and its runs): one taken for a synchronous invoke that was refused before it ran. */
export async function deleteEvent(db: Db, eventId: string): Promise<void> {
  await db.deleteFrom("pgfn.events").where("id", "=", eventId).execute();
}
