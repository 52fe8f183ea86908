/** The load generators: open loop (a fixed arrival rate) and closed loop (as fast as it goes). */
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { percentile } from "./stats.js";

export interface OpenLoopResult {
  /** Transactions due in the run (rate x seconds). */
  readonly scheduled: number;
  /** Transactions sent: those still waiting for a connection at the end were never sent. */
  readonly sent: number;
  /** Transactions committed. */
  readonly committed: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  /** Committed transactions per second of the run. */
  readonly achievedTps: number;
  /** Milliseconds from a transaction's scheduled arrival to its commit. */
  readonly commitP50Ms: number;
  readonly commitP99Ms: number;
}

/**
 * Open loop: transaction i is due at start + i / tps, whether or not earlier
 * ones have committed, spread over `connections` so one slow commit does not
 * hold up the next arrival. When every connection is busy, arrivals wait for
 * one, and that wait counts in their commit time (from due to committed):
 * a slow database shows as slow commits, not as a gentler schedule. At the
 * end of the run, arrivals that never got a connection are dropped, so an
 * overloaded system cannot stretch the run: the shortfall shows as
 * `achievedTps` below the offered rate.
 */
export async function openLoop(
  pool: pg.Pool,
  options: {
    readonly tps: number;
    readonly seconds: number;
    readonly sql: string;
    /** Connections to spread arrivals over; at most the pool's size. */
    readonly connections: number;
  },
): Promise<OpenLoopResult> {
  const { tps, seconds, sql, connections } = options;
  const scheduled = Math.max(1, Math.round(tps * seconds));
  const commitMs: number[] = [];
  let sent = 0;
  let committed = 0;
  let errors = 0;
  let firstError: string | undefined;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  const started = performance.now();
  const end = started + seconds * 1000;
  for (;;) {
    const now = performance.now();
    if (now >= end || sent >= scheduled) break;
    const due = Math.min(scheduled, Math.floor(((now - started) / 1000) * tps) + 1);
    for (; sent < due && inFlight < connections; sent++) {
      const dueAt = started + (sent * 1000) / tps;
      inFlight++;
      pool
        .query(sql)
        .then(
          () => {
            commitMs.push(performance.now() - dueAt);
            committed++;
          },
          (error: Error) => {
            errors++;
            firstError ??= error.message;
          },
        )
        .finally(() => {
          if (--inFlight === 0) drained?.();
        });
    }
    // Timers fire about every millisecond: at 3,000/s that is 3 arrivals a tick.
    await sleep(1);
  }
  if (inFlight > 0) await new Promise<void>((resolve) => (drained = resolve));
  const elapsed = (performance.now() - started) / 1000;
  commitMs.sort((a, b) => a - b);
  return {
    scheduled,
    sent,
    committed,
    errors,
    firstError,
    achievedTps: committed / elapsed,
    commitP50Ms: percentile(commitMs, 50),
    commitP99Ms: percentile(commitMs, 99),
  };
}

/**
 * Closed loop: `clients` connections, each committing `sql` one transaction
 * after another for `seconds`. Returns transactions per second.
 */
export async function closedLoop(
  url: string,
  options: { readonly clients: number; readonly seconds: number; readonly sql: string },
): Promise<number> {
  const clients = Array.from(
    { length: options.clients },
    () => new pg.Client({ connectionString: url, application_name: "pgfn-bench-load" }),
  );
  try {
    // All connected before the clock starts: a connection costs more than an insert.
    await Promise.all(clients.map((c) => c.connect()));
    const started = performance.now();
    const deadline = started + options.seconds * 1000;
    const counts = await Promise.all(
      clients.map(async (client) => {
        let n = 0;
        while (performance.now() < deadline) {
          await client.query(options.sql);
          n++;
        }
        return n;
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    return counts.reduce((a, b) => a + b, 0) / elapsed;
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
  }
}
