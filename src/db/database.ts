/**
 * The Kysely view of the pgfn schema (sql/). Column types follow what `pg`
 * returns: bigint as string, timestamptz as Date, jsonb parsed.
 */
import { Kysely, PostgresDialect, type ColumnType, type Generated } from "kysely";
import type pg from "pg";
import type { ErrorCode } from "../errors.js";
import type { ColumnName, FUNCTION_COLUMNS, RowValue } from "../functionColumns.js";
import type { CatchUp, EventSource, Operation, RunStatus } from "../interfaces.js";

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type Json = ColumnType<unknown, string, string>;

/**
 * `pgfn.functions`, derived from its one definition (src/functionColumns.ts):
 * a column with a default may be left out of an insert; jsonb is written as
 * JSON text.
 */
export type FunctionsTable = {
  [K in ColumnName]: (typeof FUNCTION_COLUMNS)[K] extends { sqlType: "jsonb" }
    ? ColumnType<RowValue<K>, string | undefined, string>
    : (typeof FUNCTION_COLUMNS)[K] extends { default: unknown } | { defaultSql: string }
      ? Generated<RowValue<K>>
      : RowValue<K>;
};

export interface EventsTable {
  id: ColumnType<string, never, never>;
  function_name: string;
  source: Generated<EventSource>;
  table_schema: string | null;
  table_name: string | null;
  operation: Operation | null;
  old: Json | null;
  new: Json | null;
  payload: Json | null;
  /** A replay's event it copies (pgfn.replay); null otherwise. */
  replay_of: ColumnType<string | null, never, never>;
  /** A replay's original event, where its chain of replays started; null otherwise. */
  original_id: ColumnType<string | null, never, never>;
  created_at: Generated<Date>;
  dispatched_at: Timestamp | null;
}

export interface FunctionRunsTable {
  id: ColumnType<string, never, never>;
  event_id: string;
  function_name: string;
  wasm_sha256: string | null;
  attempt: number;
  status: RunStatus;
  error_code: ErrorCode | null;
  http_status: number | null;
  error_message: string | null;
  result: Json | null;
  logs: ColumnType<unknown, string | undefined, string>;
  duration_ms: number | null;
  memory_peak_bytes: ColumnType<string | null, number | null, number | null>;
  started_at: Generated<Date>;
  finished_at: Timestamp | null;
  will_retry: Generated<boolean>;
  next_attempt_at: Timestamp | null;
  worker_id: string | null;
  job_id: string | null;
}

export interface SchedulesTable {
  function_name: string;
  cron: string;
  timezone: Generated<string>;
  catch_up: Generated<CatchUp>;
  last_run: Timestamp | null;
  next_run: Timestamp | null;
  active_since: Generated<Date>;
  error: string | null;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
}

export interface Database {
  "pgfn.functions": FunctionsTable;
  "pgfn.events": EventsTable;
  "pgfn.function_runs": FunctionRunsTable;
  "pgfn.schedules": SchedulesTable;
}

export type Db = Kysely<Database>;

/** A Kysely instance over an existing pool; destroying it does not end the pool. */
export function createDb(pool: pg.Pool): Db {
  return new Kysely<Database>({
    dialect: new PostgresDialect({
      // Kysely ends the pool on destroy(); the pool is owned by whoever made it.
      pool: {
        connect: () => pool.connect(),
        end: async () => undefined,
      },
    }),
  });
}
