/** The one way pgfn opens a connection pool. */
import pg from "pg";
import type { Logger } from "pino";

/** Opens a pool whose connection errors (server restart, pg_terminate_backend) are logged, never fatal. */
export function createPool(connectionString: string, max: number, logger: Logger): pg.Pool {
  const pool = new pg.Pool({ connectionString, max, application_name: "pgfn" });
  // An idle client's error (server restart, pg_terminate_backend) would
  // otherwise crash the process; the pool replaces the client on next use.
  pool.on("error", (error) =>
    logger.warn({ operation: "pool", error: error.message }, "idle connection lost"),
  );
  // A checked-out client's error is also raised as its query's rejection;
  // without a listener the 'error' event itself would be fatal.
  pool.on("connect", (client) => {
    client.on("error", (error) =>
      logger.debug({ operation: "pool", error: error.message }, "connection error"),
    );
  });
  return pool;
}

/** The role the pool's connections run as. */
export async function currentRole(pool: pg.Pool): Promise<string | undefined> {
  const { rows } = await pool.query<{ role: string }>("select current_user as role");
  return rows[0]?.role;
}

/** One round trip to the server: throws if it cannot be reached. */
export async function ping(pool: pg.Pool): Promise<void> {
  await pool.query("select 1");
}
