/**
 * The main-thread side of the `db_query(sql, params)` host function: one
 * statement, in a transaction of its own, on a connection logged in as the
 * function's `db_role` (never the daemon's user), within the invocation's
 * remaining time, with a reply bounded in rows and bytes.
 */
import pg from "pg";
import { DbConnections, destroyClient, type RoleConnection } from "./dbConnections.js";
import { checkRoleIsSafe, loginFailure, roleConnectionConfig } from "./dbRole.js";
import { SQLSTATE, SQLSTATE_CLASS } from "../../errors.js";
import { HostFunctionError } from "./errors.js";

/** Who is asking and until when. */
export interface DbQueryContext {
  /** The function's `db_role`; `null` means the function may not query (refused). */
  readonly role: string | null;
  /**
   * The function asking: no function holds more than its fair share of the
   * connections at once. (Default: the role)
   */
  readonly fn?: string;
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
  /**
   * The server, database and options handlers query (PGFN_DB_QUERY_URL,
   * usually the daemon's DATABASE_URL). Its user is replaced by each
   * function's db_role; its password is used only for that same user.
   */
  readonly connectionString: string;
  /**
   * Connections open at once across all db_roles; callers beyond it wait
   * (within their deadline), so handlers cannot exhaust the server's
   * connections. One function holds at most half of them. (Default: 4)
   */
  readonly poolSize?: number;
  /** A query returning more rows fails instead of filling the daemon's memory. (Default: 10000) */
  readonly maxRows?: number;
  /** A reply whose rows take more bytes (as JSON) fails, counted as they arrive. (Default: 4000000) */
  readonly maxBytes?: number;
  /** The pgpass file with the db_roles' passwords. (Default: PGPASSFILE, else ~/.pgpass) */
  readonly pgpassFile?: string;
  /** The role the daemon itself connects as: a db_role may not be or reach it. (Default: none) */
  readonly daemonRole?: string;
  /** An idle connection is closed after this long. (Default: 10000) */
  readonly idleMs?: number;
  /** A connection is closed (and its role checked anew on the next) after this long. (Default: 300000) */
  readonly maxLifetimeMs?: number;
}

/** `application_name` of db_query's connections, to find them in `pg_stat_activity`. */
export const DB_QUERY_APPLICATION_NAME = "pgfn-db-query";
const DEFAULT_POOL_SIZE = 4;
const DEFAULT_MAX_ROWS = 10_000;
/** Just under the 4 MiB a host reply can carry (HOST_BUFFER_BYTES), leaving room for its envelope. */
export const DEFAULT_DB_QUERY_MAX_BYTES = 4_000_000;
/**
 * How long after the invocation's deadline a connection that has not
 * answered is closed. statement_timeout (set to the remaining time) normally
 * ends the statement first; this catches what it cannot: a server waiting
 * for client data, a handler's plpgsql that catches query_canceled, a
 * network that went silent.
 */
const DEADLINE_GRACE_MS = 1000;
/** How long end() waits for calls in flight before closing their connections. (Default) */
const DEFAULT_END_GRACE_MS = 2000;
/** Settings of the session that ends a stuck statement, whatever the role set for itself. */
const KILL_SESSION_OPTIONS =
  "-c statement_timeout=0 -c lock_timeout=0 -c idle_session_timeout=0 -c idle_in_transaction_session_timeout=0";
/** How long the out-of-band pg_terminate_backend of a stuck statement may take. */
const TERMINATE_TIMEOUT_MS = 5000;

/**
 * SQLSTATEs of failures that may pass on retry. Whole classes (connection
 * exception, insufficient resources) are matched by prefix below.
 */
const TRANSIENT_SQLSTATE: ReadonlySet<string> = new Set([
  SQLSTATE.SERIALIZATION_FAILURE,
  SQLSTATE.DEADLOCK_DETECTED,
  SQLSTATE.QUERY_CANCELED, // our statement_timeout
  SQLSTATE.ADMIN_SHUTDOWN,
  SQLSTATE.CRASH_SHUTDOWN,
  SQLSTATE.CANNOT_CONNECT_NOW,
]);
const TRANSIENT_SQLSTATE_CLASSES: readonly string[] = [
  SQLSTATE_CLASS.CONNECTION_EXCEPTION,
  SQLSTATE_CLASS.INSUFFICIENT_RESOURCES,
];

/**
 * Transaction control would end our transaction, and with it the statement
 * timeout; each call is one transaction, committed by us. Only a friendlier
 * message: the boundaries (role, time, reset) do not depend on it.
 */
const TRANSACTION_CONTROL =
  /^\s*(begin|start\s+transaction|commit|end|rollback|abort|savepoint|release|prepare\s+transaction)\b/i;

/** What went wrong with a call while it ran, beyond what pg reports. */
interface CallState {
  /** Our own refusal (COPY, too many rows or bytes); the connection was destroyed. */
  refusal: HostFunctionError | undefined;
  /** The client-side deadline passed and the connection was destroyed. */
  expired: boolean;
}

/**
 * Runs handlers' `db_query` calls. One per daemon; `end()` on shutdown.
 *
 * Each call gets a connection logged in as the function's db_role (checked
 * once per connection: see `checkRoleIsSafe`), then: `begin`; the statement
 * timeout set to the invocation's remaining time and the caller's JWT
 * claims; the statement with bound parameters over the extended protocol
 * (one statement only); `commit`; and `discard all`. After any failure the
 * connection is rolled back and discarded too, or destroyed, so no session
 * state (advisory locks, temp tables, session GUCs) reaches the next call.
 *
 * @example
 * const db = new DbQueryExecutor({ connectionString: process.env.DATABASE_URL! });
 * const { rows } = await db.query({ role: "greeter", fn: "greet", deadline: Date.now() + 5000 },
 *   "select id, title from todos where owner = $1", ["alice"]);
 * await db.end();
 */
export class DbQueryExecutor {
  private readonly connections: DbConnections;
  private readonly maxRows: number;
  private readonly maxBytes: number;
  private readonly options: DbQueryExecutorOptions;
  private readonly terminations = new Set<Promise<void>>();

  constructor(options: DbQueryExecutorOptions) {
    this.options = options;
    this.maxRows = options.maxRows ?? DEFAULT_MAX_ROWS;
    this.maxBytes = options.maxBytes ?? DEFAULT_DB_QUERY_MAX_BYTES;
    this.connections = new DbConnections({
      size: options.poolSize ?? DEFAULT_POOL_SIZE,
      ...(options.idleMs !== undefined && { idleMs: options.idleMs }),
      ...(options.maxLifetimeMs !== undefined && { maxLifetimeMs: options.maxLifetimeMs }),
      open: (role, deadline) => this.open(role, deadline),
    });
  }

  /** Connections open, idle, busy and callers waiting (for tests and metrics). */
  get stats() {
    return this.connections.stats;
  }

  /**
   * Runs `sql` with `params` as `ctx.role`. Throws {@link HostFunctionError}:
   * transient for connection loss, deadlocks, serialization failures, the
   * deadline; non-transient for a refused role, SQL errors, permissions,
   * constraint violations, more than `maxRows` rows or `maxBytes` bytes,
   * COPY from or to the client, and transaction control.
   */
  async query(ctx: DbQueryContext, sql: string, params: unknown[]): Promise<DbQueryResult> {
    const role = checkRequest(ctx, sql, params);
    remainingMs(ctx.deadline); // fail before waiting for a connection
    const fn = ctx.fn ?? role;
    const connection = await this.connections.acquire(role, fn, ctx.deadline);
    const { client } = connection;
    const state: CallState = { refusal: undefined, expired: false };
    // statement_timeout cannot end every wait (see DEADLINE_GRACE_MS).
    const timer = setTimeout(
      () => {
        state.expired = true;
        this.kill(connection);
      },
      Math.max(0, ctx.deadline - Date.now()) + DEADLINE_GRACE_MS,
    );
    // Every byte of the call, not only the statement's: a trigger deferred
    // to commit (or anything else the server sends before the statement's
    // reply or after it) would otherwise have the daemon buffer a flood of
    // notices, or one notice as large as the server allows.
    const stopCounting = countWireBytes(client, 2 * this.maxBytes + WIRE_BYTES_SLACK, () => {
      state.refusal ??= tooManyBytes(this.maxBytes);
      destroyClient(client);
    });
    let reusable = false;
    try {
      await client.query("begin");
      // Always set, "{}" without a caller: once set in a session the setting
      // reads '' (not NULL) ever after, and ''::jsonb in a policy would fail.
      await client.query(
        "select pg_catalog.set_config('statement_timeout', $1, true), pg_catalog.set_config('request.jwt.claims', $2, true)",
        [String(remainingMs(ctx.deadline)), JSON.stringify(ctx.claims ?? {})],
      );
      const result = await this.run(client, sql, params, state);
      await client.query("commit");
      // Committed: the result is the handler's whatever happens next; a
      // connection that cannot be reset is closed instead of reused.
      reusable = await client.query("discard all").then(
        () => !state.expired,
        () => false,
      );
      return result;
    } catch (error) {
      if (state.refusal) throw state.refusal;
      if (state.expired) {
        throw new HostFunctionError(
          "db_query failed: the database did not answer before the invocation's deadline; the statement was stopped and its connection closed",
          true,
          { cause: error },
        );
      }
      // A server error leaves a connection we can clean: roll back, then
      // discard what a rollback leaves (a session advisory lock survives it).
      reusable = await resetAfterError(client);
      throw error instanceof HostFunctionError ? error : classify(error);
    } finally {
      stopCounting();
      clearTimeout(timer);
      this.connections.release(connection, fn, reusable);
    }
  }

  /**
   * Stops taking calls, waits up to `graceMs` for calls in flight, then
   * closes their connections (and stops their statements on the server).
   */
  async end(graceMs: number = DEFAULT_END_GRACE_MS): Promise<void> {
    await this.connections.end(graceMs, (connection) => this.kill(connection));
    await Promise.race([
      Promise.allSettled([...this.terminations]),
      new Promise((resolve) => setTimeout(resolve, graceMs).unref()),
    ]);
  }

  /** A new connection as `role`, logged in and checked, or the error the handler should see. */
  private async open(role: string, deadline: number): Promise<pg.Client> {
    const client = new pg.Client({
      ...this.clientConfig(role),
      connectionTimeoutMillis: Math.max(1, deadline - Date.now()),
    });
    // A connection's error also rejects what is waiting on it, which we
    // report; without a listener the 'error' event itself would be fatal.
    client.on("error", () => undefined);
    const timer = setTimeout(
      () => destroyClient(client),
      Math.max(0, deadline - Date.now()) + DEADLINE_GRACE_MS,
    );
    try {
      await client.connect();
      await checkRoleIsSafe(client, role, this.options.daemonRole);
      return client;
    } catch (error) {
      destroyClient(client);
      throw (
        loginFailure(role, error) ?? (error instanceof HostFunctionError ? error : classify(error))
      );
    } finally {
      clearTimeout(timer);
    }
  }

  private clientConfig(role: string): pg.ClientConfig {
    return roleConnectionConfig(this.options.connectionString, role, {
      applicationName: DB_QUERY_APPLICATION_NAME,
      ...(this.options.pgpassFile !== undefined && { pgpassFile: this.options.pgpassFile }),
    });
  }

  /**
   * Closes a connection whose statement outlived the deadline, and ends that
   * statement on the server too: a closed socket is only noticed when the
   * server next talks to it, and plpgsql can catch statement_timeout's
   * cancel. A role may terminate its own sessions, so a second connection
   * as the same role does it.
   */
  private kill(connection: RoleConnection): void {
    const pid = (connection.client as unknown as { processID?: number }).processID;
    destroyClient(connection.client);
    if (typeof pid !== "number") return;
    const terminating = (async () => {
      const config = this.clientConfig(connection.role);
      const client = new pg.Client({
        ...config,
        // Startup options outrank the role's own defaults (alter role ...
        // set statement_timeout = 1), which could otherwise end this session
        // before it ends the stuck one.
        options: [config.options, KILL_SESSION_OPTIONS].filter(Boolean).join(" "),
        connectionTimeoutMillis: TERMINATE_TIMEOUT_MS,
      });
      client.on("error", () => undefined);
      const timer = setTimeout(() => destroyClient(client), TERMINATE_TIMEOUT_MS);
      try {
        await client.connect();
        // A login may start as another role (alter role ... set role), which
        // may not terminate this role's sessions; SET ROLE NONE is the
        // session user itself (RESET ROLE would be that default again).
        await client.query("set role none");
        // Qualified: this session runs with the role's own default
        // search_path, where a pg_terminate_backend of its own could say
        // "done" and leave the statement running forever.
        await client.query("select pg_catalog.pg_terminate_backend($1)", [pid]);
      } catch {
        // Best effort: statement_timeout or the server noticing the closed socket remain.
      } finally {
        clearTimeout(timer);
        await client.end().catch(() => undefined);
      }
    })();
    this.terminations.add(terminating);
    void terminating.finally(() => this.terminations.delete(terminating));
  }

  /**
   * The user's statement, judged as the server runs it. The extended
   * protocol (forced even without parameters) makes Postgres refuse more
   * than one statement. Rows are counted and measured as they arrive; past
   * `maxRows` rows or `maxBytes` bytes, or when the server starts a COPY with
   * the client (FROM STDIN would wait for data forever, in the extended
   * protocol even past a CopyFail), the connection is closed at once and the
   * call fails. Every byte the server sends is also counted, so that no
   * single huge row or flood of notices can fill the daemon's memory first.
   */
  private run(
    client: pg.Client,
    sql: string,
    params: unknown[],
    state: CallState,
  ): Promise<DbQueryResult> {
    const { maxRows, maxBytes } = this;
    return new Promise((resolve, reject) => {
      const rows: Record<string, unknown>[] = [];
      let bytes = 0;
      let settled = false;
      const connection = client.connection;
      const onCopyOut = () => refuse(copyRefused("TO STDOUT"));
      const done = () => {
        settled = true;
        connection.off("copyOutResponse", onCopyOut);
      };
      const refuse = (error: HostFunctionError) => {
        if (settled) return;
        done();
        state.refusal = error;
        destroyClient(client);
        reject(error);
      };
      connection.on("copyOutResponse", onCopyOut);
      // `queryMode` is in pg (8.11+) but not in @types/pg.
      const config: pg.QueryConfig & { queryMode: "extended" } = {
        text: sql,
        values: params,
        queryMode: "extended",
      };
      const query = new pg.Query(config);
      // pg's own answer is a CopyFail, after which the server waits for a
      // Sync that was already spent: the connection would hang forever.
      (query as unknown as { handleCopyInResponse: () => void }).handleCopyInResponse = () =>
        refuse(copyRefused("FROM STDIN"));
      query.on("row", (row: Record<string, unknown>) => {
        if (settled) return;
        if (rows.length >= maxRows) {
          refuse(
            new HostFunctionError(
              `db_query failed: the statement returned more than ${maxRows} rows; add a limit`,
              false,
            ),
          );
          return;
        }
        try {
          const safe = toJsonSafe(row) as Record<string, unknown>;
          bytes += Buffer.byteLength(JSON.stringify(safe)) + 1;
          if (bytes > maxBytes) refuse(tooManyBytes(maxBytes));
          else rows.push(safe);
        } catch (error) {
          refuse(
            new HostFunctionError(
              `db_query failed: a row could not be turned into JSON (${error instanceof Error ? error.message : "unknown error"})`,
              false,
            ),
          );
        }
      });
      query.on("error", (error) => {
        if (settled) return;
        done();
        reject(error);
      });
      query.on("end", (result: pg.QueryResult) => {
        if (settled) return;
        done();
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

/**
 * Wire bytes per JSON byte are at most about 2 (a zero-column row is 7 bytes
 * on the wire, `{},` 3 as JSON), so the wire count, at twice the JSON cap
 * plus this, never fires before the JSON count does, except for what the
 * JSON count cannot see (notices, one huge value, the replies around the
 * statement).
 */
const WIRE_BYTES_SLACK = 65_536;

/** Counts what the server sends on `client` from now on; `over` once past `max`. Returns the stop. */
function countWireBytes(client: pg.Client, max: number, over: () => void): () => void {
  const stream = client.connection.stream;
  let bytes = 0;
  const onData = (chunk: Buffer) => {
    bytes += chunk.length;
    if (bytes > max) {
      stream.off("data", onData);
      over();
    }
  };
  stream.on("data", onData);
  return () => stream.off("data", onData);
}

function tooManyBytes(maxBytes: number): HostFunctionError {
  return new HostFunctionError(
    `db_query failed: the reply is larger than ${maxBytes} bytes (PGFN_DB_QUERY_MAX_BYTES); select fewer rows or columns, or add a limit`,
    false,
  );
}

function copyRefused(direction: "FROM STDIN" | "TO STDOUT"): HostFunctionError {
  return new HostFunctionError(
    direction === "FROM STDIN"
      ? "db_query refused: COPY ... FROM STDIN needs a data stream db_query cannot send; use insert ... select, or pass the rows as parameters (e.g. insert ... select * from json_populate_recordset(null::my_table, $1))"
      : "db_query refused: COPY ... TO STDOUT is not supported; select the rows instead",
    false,
  );
}

/** Rolls back and discards session state; false if the connection cannot be trusted to be clean. */
async function resetAfterError(client: pg.Client): Promise<boolean> {
  try {
    await client.query("rollback");
    await client.query("discard all");
    return true;
  } catch {
    return false;
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
  if (TRANSACTION_CONTROL.test(withoutLeadingComments(sql))) {
    throw new HostFunctionError(
      "db_query refused: transaction control is not allowed; each db_query call runs in a transaction of its own",
      false,
    );
  }
  return ctx.role;
}

/**
 * `sql` from its first token on, past whitespace and comments. Postgres
 * nests block comments: a strip that does not would end the first comment
 * at the inner close and let a commit, or a PREPARE TRANSACTION (which
 * outlives the connection and holds back vacuum), through.
 */
function withoutLeadingComments(sql: string): string {
  let i = 0;
  for (;;) {
    while (i < sql.length && /\s/.test(sql[i]!)) i++;
    if (sql.startsWith("--", i)) {
      const end = sql.indexOf("\n", i);
      if (end < 0) return "";
      i = end + 1;
    } else if (sql.startsWith("/*", i)) {
      let depth = 0;
      while (i < sql.length) {
        if (sql.startsWith("/*", i)) {
          depth++;
          i += 2;
        } else if (sql.startsWith("*/", i)) {
          depth--;
          i += 2;
          if (depth === 0) break;
        } else i++;
      }
      if (depth > 0) return "";
    } else return sql.slice(i);
  }
}

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
    const what =
      state === SQLSTATE.QUERY_CANCELED ? `${message} (the invocation's time ran out)` : message;
    return new HostFunctionError(`db_query failed: ${what} (${state})`, transient, {
      cause: error,
      ...(state && { sqlState: state }),
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
