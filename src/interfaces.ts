/**
 * Public types of pgfn.
 *
 * Terminology:
 * - function: a deployed WebAssembly module (`pgfn.functions`), run once per event.
 * - event: one thing that happened and must be handled, a row of the durable
 *   outbox `pgfn.events` (a committed row change, an HTTP or manual invocation,
 *   a schedule slot). Events are never deleted by a failure.
 * - dispatch: turning undispatched events into graphile-worker jobs, each
 *   event into exactly one job; a job carries up to 50 events of one
 *   function (job_key `pgfn:event:<id>` for one, `pgfn:batch:<first id>`
 *   for more; sql/000011_batch_jobs.sql).
 * - run: one attempt at handling an event, a row of `pgfn.function_runs`.
 *   An event has one run per attempt; `attempt` counts from 1.
 * - daemon: a `pgfn start` process (listener, worker, ...). Stateless: any
 *   number may run against one database.
 */

/** Where an event came from (`pgfn.events.source`). */
export type EventSource = "database" | "http" | "schedule" | "manual" | "error_handler";
/** The row operation of a database event. */
export type Operation = "INSERT" | "UPDATE" | "DELETE";
/** The values of `pgfn.function_runs.status` (and `pgfn.functions.last_status`). */
export const RUN_STATUSES = ["running", "succeeded", "failed", "abandoned"] as const;
/** `pgfn.function_runs.status`. */
export type RunStatus = (typeof RUN_STATUSES)[number];
/** The values of `pgfn.functions.ordering`. */
export const ORDERINGS = ["none", "function", "row"] as const;
/** `pgfn.functions.ordering`. */
export type Ordering = (typeof ORDERINGS)[number];
/** The values of `pgfn.functions.runtime`: an Extism WebAssembly module, or JavaScript. */
export const RUNTIMES = ["wasm", "js"] as const;
/** `pgfn.functions.runtime`: what runs the function. */
export type Runtime = (typeof RUNTIMES)[number];
/**
 * `pgfn.schedules.catch_up`: which slots missed while no scheduler ran fire
 * when one comes back: every one, the most recent one, or none.
 */
export type CatchUp = "all" | "latest" | "none";

/** What a handler receives for a row change (docs/design.md section 1). */
export interface DatabaseEventInput {
  readonly id: number;
  readonly attempt: number;
  readonly trigger: "database";
  readonly function: string;
  readonly schema: string;
  readonly table: string;
  readonly operation: Operation;
  readonly old: Record<string, unknown> | null;
  readonly new: Record<string, unknown> | null;
  readonly timestamp: string;
}

/** What a handler receives for a slot of its schedule (`pgfn.schedule`). */
export interface ScheduleEventInput {
  readonly id: number;
  readonly attempt: number;
  readonly trigger: "schedule";
  readonly function: string;
  /** The schedule's cron expression when the slot fired. */
  readonly cron: string;
  /** The time zone the cron expression is read in. */
  readonly timezone: string;
  /** The slot: when the run was due (ISO 8601, UTC). */
  readonly scheduled_time: string;
  /** When the scheduler fired it: later than scheduled_time when caught up after downtime. */
  readonly actual_time: string;
  readonly timestamp: string;
}

/** What a handler receives when invoked by hand, over HTTP or by another source. */
export interface PayloadEventInput {
  readonly id: number;
  readonly attempt: number;
  readonly trigger: Exclude<EventSource, "database" | "schedule">;
  readonly function: string;
  readonly payload: unknown;
  readonly timestamp: string;
}

export type EventInput = DatabaseEventInput | ScheduleEventInput | PayloadEventInput;
