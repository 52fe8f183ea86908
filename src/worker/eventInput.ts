/**
 * The event as a handler receives it: one JSON object per attempt, built
 * from the outbox row (docs/design.md section 1).
 */
import type { EventRow } from "../db/events.js";
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
    // Written by the worker when an event became a dead letter (worker/outcome.ts).
    const payload = event.payload as ErrorHandlerEvent["payload"];
    return { ...common, trigger: "error_handler", payload };
  }
  return { ...common, trigger: event.source, payload: event.payload ?? null };
}
