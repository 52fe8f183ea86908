/**
 * What a TypeScript handler is written against (`import type { Handler }
 * from "pgfn"`): the event it receives and the `ctx` the sandbox gives it
 * (built in src/sandbox/jsEngine.ts, which this file describes). Types only:
 * a handler's imports from "pgfn" are erased at deploy (jsCompile.ts).
 *
 * @example
 * import type { Handler } from "pgfn";
 * interface User { id: number; email: string }
 * const handle: Handler<User> = async (event, ctx) => {
 *   if (!event.new) return { skipped: true };
 *   const { rows } = await ctx.db.query<{ n: number }>("select $1::int as n", [event.new.id]);
 *   return { n: rows[0]?.n };
 * };
 * export default handle;
 */
import type { Event, RowEvent } from "./interfaces.js";

/**
 * Every event a handler can receive (Event<Row>, told apart by `trigger`),
 * with the events that carry no row saying so (`new?: undefined`), so that
 * `if (!event.new)` needs no narrowing first.
 */
export type HandlerEvent<Row = Record<string, unknown>> =
  | RowEvent<Row>
  | (Exclude<Event<Row>, RowEvent<Row>> & { readonly old?: undefined; readonly new?: undefined });

/** Extra fields of a log line, shown after its message as JSON. */
export type LogFields = Readonly<Record<string, unknown>>;

/** What `ctx.db.query` resolves to: db_query's result. */
export interface QueryResult<R> {
  readonly rows: R[];
  /** Rows returned, or affected by an insert/update/delete without `returning`. */
  readonly rowCount: number;
  /** Column names in order. */
  readonly fields: string[];
}

/** `ctx.fetch`'s options: http_fetch's request. Redirects are not followed. */
export interface FetchInit {
  /** (Default: "GET") */
  readonly method?: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string;
}

/** `ctx.fetch`'s answer, whatever its status: a 404 is an answer, not an error. */
export interface FetchResponse {
  readonly status: number;
  /** 200..299. */
  readonly ok: boolean;
  /** Lowercase names; repeated headers joined with ", ". */
  readonly headers: Readonly<Record<string, string>>;
  text(): Promise<string>;
  json<T = unknown>(): Promise<T>;
}

/** The second argument of every handler: its only way out of the sandbox. */
export interface Context {
  /** The function's env (`pgfn deploy --env KEY=VALUE`). */
  readonly env: Readonly<Record<string, string>>;
  /** Lines kept in the run's `logs` (and the daemon's log). */
  readonly log: {
    debug(message: string, fields?: LogFields): void;
    info(message: string, fields?: LogFields): void;
    warn(message: string, fields?: LogFields): void;
    error(message: string, fields?: LogFields): void;
  };
  readonly db: {
    /**
     * One statement as the function's db_role, with $1.. bound to `params`.
     * Rejects with an Error whose `code` is the SQLSTATE when the server
     * refused the statement (23505 for a unique violation), else no code.
     */
    query<R = Record<string, unknown>>(
      sql: string,
      params?: readonly unknown[],
    ): Promise<QueryResult<R>>;
  };
  /** An HTTP request to one of the function's allowed hosts (`--allow-host`). */
  fetch(url: string, init?: FetchInit): Promise<FetchResponse>;
  /** `throw ctx.retryAfter(ms, message?)`: fail, and retry this event no sooner than `ms`. */
  retryAfter(ms: number, message?: string): Error;
  /** `throw ctx.noRetry(message?)`: fail, and do not retry: it cannot help. */
  noRetry(message?: string): Error;
}

/**
 * A handler: the default export (or the export `handle`) of a .ts/.js file.
 * What it returns (or resolves to) is stored as JSON in `function_runs.result`.
 */
export type Handler<Row = Record<string, unknown>, Result = unknown> = (
  event: HandlerEvent<Row>,
  ctx: Context,
) => Result | Promise<Result>;
