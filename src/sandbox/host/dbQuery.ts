/**
 * The main-thread side of the `db_query(sql, params)` host function: one
 * statement, in a transaction of its own, as the function's `db_role`, within
 * the invocation's remaining time, on a small pool of its own.
 */
import pg from "pg";
import { sqlState } from "../../errors.js";
import { HostFunctionError } from "./errors.js";

/** Who is asking and until when. */
export interface DbQueryContext {
  /** The function's `db_role`; `null` means the function may not query (refused). */
  readonly role: string | null;
  /** `Date.now()`-based deadline (ms) of the whole invocation. */
  readonly deadline: number;
  /**
   * The HTTP caller's JWT claims, exposed as JSON in
   * `current_setting('request.jwt.claims', true)` for row level security
   * policies. (Default: `{}`, so `->>'sub'` is NULL)
   */
  readonly claims?: Record<string, unknown> | null;
}

/** What the handler gets back; every value is JSON-safe. */
export interface DbQueryResult {
  readonly rows: Record<string, unknown>[];
  /** Rows returned, or affected by an insert/update/delete without `returning`. */
  readonly rowCount: number;
  /** Column names in order. */
  readonly fields: string[];
}

/** Options of {@link DbQueryExecutor}. */
export interface DbQueryExecutorOptions {
  /** The database handlers query (usually the daemon's own DATABASE_URL). */
  readonly connectionString: string;
  /**
   * Connections in the pool; callers beyond it wait (within their deadline),
   * so handlers cannot exhaust the server's connections. (Default: 4)
   */
  readonly poolSize?: number;
  /** A query returning more rows fails instead of filling the daemon's memory. (Default: 10000) */
  readonly maxRows?: number;
}

/** `application_name` of the pool's connections, to find them in `pg_stat_activity`. */
export const DB_QUERY_APPLICATION_NAME = "pgfn-db-query";
const DEFAULT_POOL_SIZE = 4;
const DEFAULT_MAX_ROWS = 10_000;

/**
 * SQLSTATEs of failures that may pass on retry (Appendix A of the Postgres
 * manual). Classes 08 (connection exception) and 53 (insufficient resources)
 * are matched by prefix below.
 */
const TRANSIENT_SQLSTATE: ReadonlySet<string> = new Set([
  "40001", // serialization_failure
  "40P01", // deadlock_detected
  "57014", // query_canceled: our statement_timeout
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now (starting up, recovery)
]);
const TRANSIENT_SQLSTATE_CLASSES: readonly string[] = [
  "08", // connection_exception
  "53", // insufficient_resources (too many connections, disk full, out of memory)
];

/**
 * Statements that would leave `db_role`: SET ROLE's permission check is made
 * against the *session* user, the daemon's (often a superuser), so from inside
 * the transaction `reset role` or `set role postgres` would succeed.
 */
const ROLE_ESCAPE =
  /\b(set|reset)\s+(local\s+|session\s+)?(role|session\s+authorization)\b|\bset_config\s*\(\s*e?'\s*(role|session_authorization)\s*'/i;
/**
 * Transaction control would end our transaction, and with it `set local role`
 * and the statement timeout; each call is one transaction, committed by us.
 */
const TRANSACTION_CONTROL =
  /^\s*(begin|start\s+transaction|commit|end|rollback|abort|savepoint|release|prepare\s+transaction)\b/i;

/**
 * Runs handlers' `db_query` calls. One per daemon; `end()` on shutdown.
 *
 * Each call: `begin`; `set local role <db_role>` (which must succeed, and must
 * not leave us as the daemon's own role or a superuser); the statement timeout
 * set to the invocation's remaining time; the caller's JWT claims; the
 * statement with bound parameters over the extended protocol (one statement
 * only); a check that the statement did not change the role; `commit`; and
 * `discard all` so no session state (temp tables, advisory locks, session
 * GUCs) passes to the next function using the connection.
 *
 * The role switch is only as strong as what the connecting user may become:
 * for a hard boundary, give this executor a login role that is a member of the
 * handler roles and not a superuser.
 *
 * @example
 * const db = new DbQueryExecutor({ connectionString: process.env.DATABASE_URL! });
 * const { rows } = await db.query({ role: "app_handler", deadline: Date.now() + 5000 },
 *   "select id, title from todos where owner = $1", ["alice"]);
 * await db.end();
 */
export class DbQueryExecutor {
  private readonly pool: pg.Pool;
  private readonly maxRows: number;

  constructor(options: DbQueryExecutorOptions) {
    this.maxRows = options.maxRows ?? DEFAULT_MAX_ROWS;
    this.pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.poolSize ?? DEFAULT_POOL_SIZE,
      application_name: DB_QUERY_APPLICATION_NAME,
    });
    // An idle client's error (server restart, pg_terminate_backend) would
    // otherwise crash the daemon; the pool replaces the client on next use.
    this.pool.on("error", () => {});
    // A checked-out client's error also rejects its query, which we report;
    // without a listener the 'error' event itself would be fatal.
    this.pool.on("connect", (client) => {
      client.on("error", () => {});
    });
  }

  /**
   * Runs `sql` with `params` as `ctx.role`. Throws {@link HostFunctionError}:
   * transient for connection loss, deadlocks, serialization failures, the
   * deadline; non-transient for a missing role, SQL errors, permissions,
   * constraint violations, more than `maxRows` rows, and refused statements.
   */
  async query(ctx: DbQueryContext, sql: string, params: unknown[]): Promise<DbQueryResult> {
    const role = checkRequest(ctx, sql, params);
    remainingMs(ctx.deadline); // fail before waiting for a connection
    const client = await this.acquire(ctx.deadline);
    let destroy = false;
    let inTransaction = false;
    try {
      await client.query("begin");
      inTransaction = true;
      await switchRole(client, role);
      await client.query("select set_config('statement_timeout', $1, true)", [
        String(remainingMs(ctx.deadline)),
      ]);
      // Always set, "{}" without a caller: once set in a session the setting
      // reads '' (not NULL) ever after, and ''::jsonb in a policy would fail.
      await client.query("select set_config('request.jwt.claims', $1, true)", [
        JSON.stringify(ctx.claims ?? {}),
      ]);
      const result = await this.run(client, sql, params);
      // The patterns above cannot see a role change built at run time
      // (`set_config(lower('ROLE'), ...)`, dynamic SQL in a DO block): the
      // results of a statement that ended as someone else are never returned.
      const after = await client.query<{ current_user: string }>("select current_user");
      if (after.rows[0]?.current_user !== role) {
        destroy = true;
        throw new HostFunctionError(
          `db_query refused: the statement changed the role from "${role}"; handlers may not change roles`,
          false,
        );
      }
      await client.query("commit");
      inTransaction = false;
      await client.query("discard all");
      return result;
    } catch (error) {
      if (inTransaction) {
        try {
          await client.query("rollback");
        } catch {
          destroy = true;
        }
      }
      // Our own refusals leave the connection clean; anything else that is
      // not a server error (a reset, a protocol error) may not.
      if (!(error instanceof pg.DatabaseError) && !(error instanceof HostFunctionError)) {
        destroy = true;
      }
      throw error instanceof HostFunctionError ? error : classify(error);
    } finally {
      // A connection in an unknown state is closed rather than reused.
      client.release(destroy);
    }
  }

  /** Closes the pool; waits for calls in flight. */
  async end(): Promise<void> {
    await this.pool.end();
  }

  /** A pooled connection, or a transient error when the deadline passes first. */
  private async acquire(deadline: number): Promise<pg.PoolClient> {
    const connecting = this.pool.connect();
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    try {
      return await Promise.race([
        connecting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            timedOut = true;
            reject(
              new HostFunctionError(
                "db_query failed: no time left while waiting for a database connection (all are busy)",
                true,
              ),
            );
          }, remainingMs(deadline));
        }),
      ]);
    } catch (error) {
      // The pool still hands out the connection later; give it back at once.
      if (timedOut)
        connecting.then(
          (client) => client.release(),
          () => {},
        );
      throw error instanceof HostFunctionError ? error : classify(error);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The user's statement. The extended protocol (forced even without
   * parameters) makes Postgres refuse more than one statement. Rows are
   * collected by hand so that past `maxRows` they are dropped as they arrive
   * rather than held in memory; the statement timeout bounds the rest.
   */
  private run(client: pg.PoolClient, sql: string, params: unknown[]): Promise<DbQueryResult> {
    const maxRows = this.maxRows;
    return new Promise((resolve, reject) => {
      const rows: Record<string, unknown>[] = [];
      let received = 0;
      // `queryMode` is in pg (8.11+) but not in @types/pg.
      const config: pg.QueryConfig & { queryMode: "extended" } = {
        text: sql,
        values: params,
        queryMode: "extended",
      };
      const query = new pg.Query(config);
      query.on("row", (row: Record<string, unknown>) => {
        received++;
        if (received <= maxRows) rows.push(toJsonSafe(row) as Record<string, unknown>);
      });
      query.on("error", reject);
      query.on("end", (result: pg.QueryResult) => {
        if (received > maxRows) {
          reject(
            new HostFunctionError(
              `db_query failed: the statement returned more than ${maxRows} rows; add a limit`,
              false,
            ),
          );
          return;
        }
        resolve({
          rows,
          rowCount: result.rowCount ?? rows.length,
          fields: result.fields.map((f) => f.name),
        });
      });
      client.query(query);
    });
  }
}

/** Validates a call before any connection is used; returns the role. */
function checkRequest(ctx: DbQueryContext, sql: string, params: unknown[]): string {
  if (ctx.role === null) {
    throw new HostFunctionError(
      "db_query refused: function has no db_role; set one with --db-role",
      false,
    );
  }
  if (ctx.role.length === 0) {
    throw new HostFunctionError(
      "db_query refused: db_role is empty; set one with --db-role",
      false,
    );
  }
  if (typeof sql !== "string" || sql.trim().length === 0) {
    throw new HostFunctionError("db_query failed: sql must be a non-empty string", false);
  }
  if (!Array.isArray(params)) {
    throw new HostFunctionError("db_query failed: params must be an array", false);
  }
  const uncommented = sql.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/--[^\n]*/g, " ");
  if (ROLE_ESCAPE.test(sql) || ROLE_ESCAPE.test(uncommented)) {
    throw new HostFunctionError(
      "db_query refused: statements that change the role or session authorization are not allowed",
      false,
    );
  }
  if (TRANSACTION_CONTROL.test(uncommented)) {
    throw new HostFunctionError(
      "db_query refused: transaction control is not allowed; each db_query call runs in a transaction of its own",
      false,
    );
  }
  return ctx.role;
}

/**
 * `set local role`, then proof that it took: not the daemon's own role (a
 * db_role named like the daemon's user, or "none", which SET ROLE treats as
 * "back to the session user") and not a superuser.
 */
async function switchRole(client: pg.PoolClient, role: string): Promise<void> {
  try {
    await client.query(`set local role ${pg.escapeIdentifier(role)}`);
  } catch (error) {
    const state = sqlState(error);
    if (state === SQLSTATE_INVALID_PARAMETER_VALUE || state === SQLSTATE_INSUFFICIENT_PRIVILEGE) {
      throw new HostFunctionError(
        `db_query refused: cannot switch to db_role "${role}" (${(error as Error).message}); create the role, or grant it to the user pgfn connects as`,
        false,
        { cause: error },
      );
    }
    throw error;
  }
  const { rows } = await client.query<{ current: string; session: string; super: boolean }>(
    `select current_user as current, session_user as session,
            coalesce((select rolsuper from pg_roles where rolname = current_user), false) as super`,
  );
  const who = rows[0];
  if (!who || who.current !== role || who.current === who.session || who.super) {
    throw new HostFunctionError(
      `db_query refused: db_role "${role}" is the daemon's own role or a superuser; use a role with only the privileges handlers need`,
      false,
    );
  }
}

/** `role "x" does not exist` from SET ROLE. */
const SQLSTATE_INVALID_PARAMETER_VALUE = "22023";
/** `permission denied to set role` (a non-superuser daemon not granted the role). */
const SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501";

/** Milliseconds left before `deadline` in ms, at least 1; a transient error when none is left. */
function remainingMs(deadline: number): number {
  const remaining = Math.floor(deadline - Date.now());
  if (remaining <= 0) {
    throw new HostFunctionError(
      "db_query failed: no time left before the invocation's deadline",
      true,
    );
  }
  return Math.max(1, remaining);
}

/** Any failure of a call as a HostFunctionError, transient by SQLSTATE. */
function classify(error: unknown): HostFunctionError {
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof pg.DatabaseError) {
    const state = error.code ?? "";
    const transient =
      TRANSIENT_SQLSTATE.has(state) || TRANSIENT_SQLSTATE_CLASSES.some((c) => state.startsWith(c));
    const what = state === "57014" ? `${message} (the invocation's time ran out)` : message;
    return new HostFunctionError(`db_query failed: ${what} (${state})`, transient, {
      cause: error,
    });
  }
  // No SQLSTATE: the connection failed (refused, reset, terminated), not the SQL.
  return new HostFunctionError(`db_query failed: ${message}`, true, { cause: error });
}

/**
 * A value the handler can receive as JSON. int8 and numeric already arrive
 * as strings (exact); dates become ISO strings, bytea `\x`-prefixed hex like
 * Postgres prints it, and non-finite floats ("Infinity", "NaN") strings
 * because JSON has no such numbers.
 */
function toJsonSafe(value: unknown): unknown {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return Number.isFinite(value) ? value : String(value);
  if (typeof value === "bigint") return value.toString();
  if (typeof value !== "object") return value;
  if (value instanceof Date) {
    return Number.isNaN(value.getTime()) ? null : value.toISOString();
  }
  if (Buffer.isBuffer(value)) return `\\x${value.toString("hex")}`;
  if (Array.isArray(value)) return value.map(toJsonSafe);
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[key] = toJsonSafe(item);
  return out;
}
