/**
 * The event as a handler receives it: one JSON object per attempt, built
 * from the outbox row (docs/design.md section 1), and for an error handler
 * from the row of the event that failed as well.
 */
import type { Db } from "../db/database.js";
import type { EventRow } from "../db/events.js";
import { PgfnError } from "../errors.js";
import type { ErrorHandlerEvent, EventInput, Operation } from "../interfaces.js";

/** The JSON a handler receives (docs/design.md section 1). */
export function toEventInput(event: EventRow, attempt: number): EventInput {
  const common = {
    id: Number(event.id),
    attempt,
    // A number from pgfn.begin_run's jsonb, a string from a query.
    idempotency_key: Number(event.original_id ?? event.id),
    function: event.function_name,
    timestamp: event.created_at.toISOString(),
  };
  if (event.source === "database") {
    return {
      ...common,
      trigger: "database",
      schema: event.table_schema ?? "",
      table: event.table_name ?? "",
      operation: event.operation as Operation,
      old: (event.old as Record<string, unknown> | null) ?? null,
      new: (event.new as Record<string, unknown> | null) ?? null,
    };
  }
  if (event.source === "schedule") {
    // Written by the scheduler (src/scheduler/scheduler.ts); a hand-made
    // schedule event with a different payload still gets every field.
    const payload = (event.payload ?? {}) as Partial<Record<string, unknown>>;
    const text = (value: unknown) => (typeof value === "string" ? value : "");
    return {
      ...common,
      trigger: "schedule",
      cron: text(payload.cron),
      timezone: text(payload.timezone),
      scheduled_time: text(payload.scheduled_time),
      actual_time: text(payload.actual_time) || common.timestamp,
    };
  }
  if (event.source === "error_handler") {
    // Written by pgfn.dead_letter (sql/000023) naming the event that failed
    // by id (handlerInput gives it whole), or whole by a daemon before it.
    const payload = event.payload as ErrorHandlerEvent["payload"];
    return { ...common, trigger: "error_handler", payload };
  }
  return { ...common, trigger: event.source, payload: event.payload ?? null };
}

/**
 * toEventInput, with an error handler's event given the event that failed
 * as that event's handler received it on its last attempt: pgfn.dead_letter
 * stores only its id (sql/000023), so that an event's JSON has one maker,
 * this file. A payload that names no event by id alone (written whole
 * before sql/000023, or by hand) is given as stored.
 */
export async function handlerInput(db: Db, event: EventRow, attempt: number): Promise<EventInput> {
  const input = toEventInput(event, attempt);
  if (input.trigger !== "error_handler") return input;
  const stored = event.payload as { event?: Record<string, unknown>; run?: { attempt?: unknown } };
  const failedId = stored?.event?.id;
  const failedAttempt = stored?.run?.attempt;
  if (typeof failedId !== "number" || typeof failedAttempt !== "number" || stored.event!.trigger) {
    return input;
  }
  const failed = await db
    .selectFrom("pgfn.events")
    .selectAll()
    .where("id", "=", String(failedId))
    .executeTakeFirst();
  if (!failed) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `This error handler's event reports event ${failedId}, which is no longer in pgfn.events (deleted since, by hand: pgfn.prune keeps it while this event exists), so there is nothing to give the handler.`,
    );
  }
  return { ...input, payload: { ...input.payload, event: toEventInput(failed, failedAttempt) } };
}
