/**
 * Queries on `pgfn.daemons` (sql/000005_daemons.sql) and the recovery of
 * what a daemon left behind: the heartbeat's, the reaper's and the worker
 * supervisor's calls. They take a plain pg pool: the heartbeat runs beside
 * the worker, outside Kysely.
 */
import { hostname } from "node:os";
import type pg from "pg";

/** What a daemon says about itself in `pgfn.daemons`. */
export interface DaemonRow {
  readonly id: string;
  /** graphile-worker's ids for its workers (jobs.locked_by). */
  readonly graphileWorkerIds: readonly string[];
  /** Whether it holds its liveness lock (pgfn.daemon_lock_key). */
  readonly holdsLock: boolean;
}

/**
 * Registers this process as a live daemon. `again`: after it was reaped
 * while alive, registered anew unless it already is; otherwise (at start)
 * a row left by an earlier process of the same id is taken over.
 */
export async function registerDaemon(
  pool: pg.Pool,
  daemon: DaemonRow,
  options: { readonly again?: boolean } = {},
): Promise<void> {
  const params = [daemon.id, hostname(), process.pid, daemon.graphileWorkerIds, daemon.holdsLock];
  if (options.again) {
    await pool.query(
      `insert into pgfn.daemons (id, hostname, pid, graphile_worker_ids, holds_lock) values ($1, $2, $3, $4, $5) on conflict (id) do nothing`,
      params,
    );
    return;
  }
  await pool.query(
    `insert into pgfn.daemons (id, hostname, pid, graphile_worker_ids, holds_lock) values ($1, $2, $3, $4, $5)
     on conflict (id) do update set heartbeat_at = now(), started_at = now(),
       graphile_worker_ids = excluded.graphile_worker_ids, holds_lock = excluded.holds_lock`,
    params,
  );
}

/** One heartbeat; false when the daemon's row is gone (it was reaped). */
export async function beatDaemon(pool: pg.Pool, daemon: DaemonRow): Promise<boolean> {
  const updated = await pool.query(
    `update pgfn.daemons set heartbeat_at = now(), graphile_worker_ids = $2, holds_lock = $3 where id = $1`,
    [daemon.id, daemon.graphileWorkerIds, daemon.holdsLock],
  );
  return (updated.rowCount ?? 0) > 0;
}

/** Notes that the daemon took its liveness lock again. */
export async function markLockHeld(pool: pg.Pool, daemonId: string): Promise<void> {
  await pool.query(`update pgfn.daemons set holds_lock = true where id = $1`, [daemonId]);
}

/** Removes the daemon's row: a clean exit leaves nothing to reap. */
export async function deleteDaemon(pool: pg.Pool, daemonId: string): Promise<void> {
  await pool.query(`delete from pgfn.daemons where id = $1`, [daemonId]);
}

/**
 * Takes the daemon's liveness lock (a session advisory lock,
 * pgfn.daemon_lock_key) on `client`, its own connection; false if another
 * session holds it.
 */
export async function tryDaemonLock(client: pg.Client, daemonId: string): Promise<boolean> {
  const { rows } = await client.query<{ ok: boolean }>(
    `select pg_try_advisory_lock(pgfn.daemon_lock_key($1)) as ok`,
    [daemonId],
  );
  return rows[0]?.ok ?? false;
}

/**
 * Abandons the daemon's attempts older than `minAgeMs` whose jobs none of
 * `liveIds` holds (pgfn.abandon_orphaned_runs). Returns how many.
 */
export async function abandonOrphanedRuns(
  pool: pg.Pool,
  daemonId: string,
  liveIds: readonly string[],
  minAgeMs: number,
): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `select pgfn.abandon_orphaned_runs($1, $2, make_interval(secs => $3)) as n`,
    [daemonId, liveIds, minAgeMs / 1000],
  );
  return rows[0]?.n ?? 0;
}

/**
 * Releases the jobs locked by `ids` for longer than `minAgeMs`, except
 * `keepJobIds` (pgfn.release_jobs). Returns how many.
 */
export async function releaseJobs(
  pool: pg.Pool,
  ids: readonly string[],
  keepJobIds: readonly string[],
  minAgeMs: number,
): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `select pgfn.release_jobs($1, $2, make_interval(secs => $3)) as n`,
    [ids, keepJobIds, minAgeMs / 1000],
  );
  return rows[0]?.n ?? 0;
}

/**
 * Reaps the daemons silent for `deadAfterMs`, or for `unlockedAfterMs` with
 * their liveness lock free (pgfn.reap_dead_daemons). Returns how many.
 */
export async function reapDeadDaemons(
  pool: pg.Pool,
  deadAfterMs: number,
  unlockedAfterMs: number,
): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `select pgfn.reap_dead_daemons(make_interval(secs => $1), make_interval(secs => $2)) as n`,
    [deadAfterMs / 1000, unlockedAfterMs / 1000],
  );
  return rows[0]?.n ?? 0;
}

/**
 * Releases what a stopped graphile-worker runner of this live daemon held
 * (pgfn.release_stopped_worker). Returns how many attempts were abandoned.
 */
export async function releaseStoppedWorker(
  pool: pg.Pool,
  daemonId: string,
  workerIds: readonly string[],
): Promise<number> {
  const { rows } = await pool.query<{ abandoned: number }>(
    `select pgfn.release_stopped_worker($1, $2) as abandoned`,
    [daemonId, workerIds],
  );
  return rows[0]?.abandoned ?? 0;
}
