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
/** The values of `pgfn.schedules.catch_up`. */
export const CATCH_UPS = ["all", "latest", "none"] as const;
/**
 * `pgfn.schedules.catch_up`: which slots missed while no scheduler ran fire
 * when one comes back: every one, the most recent one, or none.
 */
export type CatchUp = (typeof CATCH_UPS)[number];

/**
 * What every event a handler receives has, whatever its trigger
 * (docs/design.md section 1).
 */
export interface EventBase {
  /** The event's id (`pgfn.events.id`): the same on every attempt. */
  readonly id: number;
  /** Which attempt this is, from 1. */
  readonly attempt: number;
  /**
   * The same for an event and every replay or retry of it (pgfn.replay,
   * pgfn.retry, pgfn retry): the original event's id. `id` is new for each
   * replay; use this as the key of an effect that must happen once.
   */
  readonly idempotency_key: number;
  /** The function the event is for. */
  readonly function: string;
  /** When the event was recorded (ISO 8601, UTC). */
  readonly timestamp: string;
}

/**
 * A row change on an attached table. `Row` is the table's row as JSON
 * (`to_jsonb`): dates as strings, bigints as numbers.
 */
export interface RowEvent<Row = Record<string, unknown>> extends EventBase {
  readonly trigger: "database";
  readonly schema: string;
  readonly table: string;
  readonly operation: Operation;
  /** The row before an UPDATE or DELETE; null for INSERT. */
  readonly old: Row | null;
  /** The row after an INSERT or UPDATE; null for DELETE. */
  readonly new: Row | null;
}

/** A slot of the function's schedule (`pgfn.schedule`). */
export interface ScheduleEvent extends EventBase {
  readonly trigger: "schedule";
  /** The schedule's cron expression when the slot fired. */
  readonly cron: string;
  /** The time zone the cron expression is read in. */
  readonly timezone: string;
  /** The slot: when the run was due (ISO 8601, UTC). */
  readonly scheduled_time: string;
  /** When the scheduler fired it: later than scheduled_time when caught up after downtime. */
  readonly actual_time: string;
}

/** An invocation over HTTP (`POST /functions/v1/invoke/:name`): the request's JSON body. */
export interface HttpEvent extends EventBase {
  readonly trigger: "http";
  readonly payload: unknown;
}

/** An invocation by hand (`pgfn invoke`, `makeUtils().invoke`, `pgfn.invoke_async` in SQL). */
export interface ManualEvent extends EventBase {
  readonly trigger: "manual";
  readonly payload: unknown;
}

/**
 * What a function's `on_error` handler receives when an event of that
 * function became a dead letter: the event, its last run and the error.
 */
export interface ErrorHandlerEvent extends EventBase {
  readonly trigger: "error_handler";
  readonly payload: {
    /** The event that failed, as its handler received it on the last attempt. */
    readonly event: Event;
    readonly run: {
      readonly id: number;
      readonly attempt: number;
      readonly status: RunStatus;
      readonly error_code: string | null;
      readonly http_status: number | null;
      readonly error_message: string | null;
      readonly duration_ms: number | null;
    };
    readonly error: { readonly code: string | null; readonly message: string | null };
  };
}

/**
 * The JSON a handler receives, one per attempt, told apart by `trigger`.
 * `Row` types the rows of row events.
 */
export type Event<Row = Record<string, unknown>> =
  RowEvent<Row> | ScheduleEvent | HttpEvent | ManualEvent | ErrorHandlerEvent;

/** The event as the worker builds it, for any table. */
export type EventInput = Event;
