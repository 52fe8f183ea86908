/**
 * Heartbeats and reaping. Each daemon marks itself alive in pgfn.daemons and,
 * on the same timer, reaps daemons that went silent (pgfn.reap_dead_daemons):
 * their running attempts are abandoned and their jobs released at once (a
 * retry job added where a job is gone, pgfn.abandon_lost_run), so a
 * SIGKILLed daemon's work is retried within seconds, not after
 * graphile-worker's 4-hour lock expiry.
 */
import pg from "pg";
import type { Logger } from "pino";
import {
  abandonOrphanedRuns,
  beatDaemon,
  deleteDaemon,
  markLockHeld,
  reapDeadDaemons,
  registerDaemon,
  releaseJobs,
  tryDaemonLock,
} from "../db/daemons.js";

export interface HeartbeatOptions {
  readonly pool: pg.Pool;
  /**
   * Where to open the connection that holds this daemon's liveness lock.
   * (Default: no lock; the daemon is known dead only once its heartbeat is
   * deadAfterMs old)
   */
  readonly connectionString?: string;
  /** This daemon's id (function_runs.worker_id). */
  readonly daemonId: string;
  readonly intervalMs: number;
  /** Silence after which another daemon reaps this one. */
  readonly deadAfterMs: number;
  /** graphile-worker's ids for this daemon's workers, as they are created. */
  readonly graphileWorkerIds: () => readonly string[];
  /**
   * The graphile-worker ids that hold the jobs of this daemon's runs under
   * way, or undefined while they are not known (the worker is starting):
   * each beat then abandons the attempts of this daemon whose job none of
   * them holds (pgfn.abandon_orphaned_runs). (Default: no such check)
   */
  readonly liveGraphileWorkerIds?: () => readonly string[] | undefined;
  /**
   * The running runner's ids and the jobs it knows it holds, or undefined
   * while none runs: each beat releases the jobs locked by those ids for
   * longer than ORPHAN_MIN_AGE_MS that it does not know of (locked by a
   * fetch whose reply was lost). (Default: no such check)
   */
  readonly heldJobs?: () =>
    { readonly ids: readonly string[]; readonly jobIds: readonly string[] } | undefined;
  readonly logger: Logger;
}

/**
 * An attempt younger than this is never taken for an orphan: a runner
 * started between reading the live ids and the query cannot have an older
 * one. (10000 ms)
 */
export const ORPHAN_MIN_AGE_MS = 10_000;

export interface Heartbeat {
  /** Beats and reaps once, now. */
  beat(): Promise<void>;
  /** Stops beating and removes this daemon's row (a clean exit leaves nothing to reap). */
  stop(): Promise<void>;
}

/**
 * Beats this many heartbeat intervals old, with its liveness lock free, make
 * a daemon dead: a live one whose lock connection dropped takes the lock
 * again at its next beat.
 */
const UNLOCKED_BEATS = 2.5;

export async function startHeartbeat(options: HeartbeatOptions): Promise<Heartbeat> {
  const { pool, daemonId, logger } = options;
  // The liveness lock (pgfn.daemon_lock_key): held on a connection of its
  // own, outside the pool, so that the server lets go of it the moment this
  // process dies, and so that a busy pool cannot make it look dead.
  let lockClient: pg.Client | undefined;
  const holdLock = async (): Promise<boolean> => {
    if (!options.connectionString) return false;
    if (lockClient) return true;
    const client = new pg.Client({
      connectionString: options.connectionString,
      application_name: "pgfn-liveness",
      connectionTimeoutMillis: options.intervalMs,
    });
    const lost = () => {
      if (lockClient === client) lockClient = undefined;
    };
    client.on("error", lost);
    client.on("end", lost);
    try {
      await client.connect();
      if (await tryDaemonLock(client, daemonId)) {
        lockClient = client;
        return true;
      }
    } catch {
      // Not now: the next beat tries again, and the heartbeat still counts.
    }
    await client.end().catch(() => undefined);
    return false;
  };
  await registerDaemon(pool, {
    id: daemonId,
    graphileWorkerIds: options.graphileWorkerIds(),
    holdsLock: await holdLock(),
  });
  let running: Promise<void> | undefined;
  // Since when this daemon has reached the database without a failed beat.
  // After an outage every daemon's heartbeat is stale, and a daemon that got
  // the database back first cannot tell a dead peer from one still
  // reconnecting: it reaps only once it has itself been back for
  // deadAfterMs, long enough for every live peer to have beaten again. At
  // start (0): at once, whatever died while no daemon ran.
  let connectedSince: number | undefined = 0;
  const beat = async () => {
    try {
      // The beat first: taking the lock again (a new connection) must never
      // delay it, or a live daemon could look dead.
      const locked = lockClient !== undefined;
      const self = {
        id: daemonId,
        graphileWorkerIds: options.graphileWorkerIds(),
        holdsLock: locked,
      };
      const beaten = await beatDaemon(pool, self);
      if (!locked && (await holdLock())) {
        await markLockHeld(pool, daemonId);
      }
      if (!beaten) {
        // Reaped while alive (a stall longer than PGFN_DEAD_AFTER_MS): our
        // running attempts were abandoned and retried elsewhere. Carry on,
        // registered again.
        logger.error(
          { operation: "heartbeat", worker_id: daemonId },
          "this daemon was reaped as dead after missing heartbeats; its running attempts were retried elsewhere (raise PGFN_DEAD_AFTER_MS if this recurs)",
        );
        await registerDaemon(pool, self, { again: true });
      }
      const live = options.liveGraphileWorkerIds?.();
      if (live) {
        const orphans = await abandonOrphanedRuns(pool, daemonId, live, ORPHAN_MIN_AGE_MS);
        if (orphans > 0) {
          logger.warn(
            { operation: "heartbeat", worker_id: daemonId, abandoned: orphans },
            "attempts cut short by a database outage were abandoned; their events run again, or are dead letters when no attempt is left",
          );
        }
      }
      const held = options.heldJobs?.();
      if (held) {
        // Jobs those ids locked by a fetch whose reply never reached the
        // runner; the age keeps a fetch still under way out of reach.
        const lost = await releaseJobs(pool, held.ids, held.jobIds, ORPHAN_MIN_AGE_MS);
        if (lost > 0) {
          logger.warn(
            { operation: "heartbeat", worker_id: daemonId, released: lost },
            "released jobs locked by a fetch whose reply was lost (the connection dropped); they run again",
          );
        }
      }
      connectedSince ??= Date.now();
      if (Date.now() - connectedSince < options.deadAfterMs) return;
      const reaped = await reapDeadDaemons(
        pool,
        options.deadAfterMs,
        UNLOCKED_BEATS * options.intervalMs,
      );
      if (reaped > 0) {
        logger.warn(
          { operation: "reap", daemons: reaped },
          "reaped silent daemons; their runs were abandoned and will be retried",
        );
      }
    } catch (error) {
      connectedSince = undefined;
      // A missed beat is survivable; several in a row make others reap us, which is right.
      logger.warn({ operation: "heartbeat", error: (error as Error).message }, "heartbeat failed");
    }
  };
  const timer = setInterval(() => {
    running ??= beat().finally(() => (running = undefined));
  }, options.intervalMs);
  timer.unref();
  return {
    beat: () => (running ??= beat().finally(() => (running = undefined))),
    async stop() {
      clearInterval(timer);
      await running;
      await deleteDaemon(pool, daemonId).catch(() => undefined);
      await lockClient?.end().catch(() => undefined);
    },
  };
}
