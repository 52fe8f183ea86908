/**
 * Recovery from a crash: the consumer is SIGKILLed while an open-loop load
 * runs, another is started at once, and the clock runs from the kill until
 * every committed event has a successful run. The new consumer's start-up
 * is part of the figure, as it would be under a supervisor.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Consumer, type Context } from "../lib/context.js";
import { openLoop } from "../lib/load.js";
import { insertSql, SYSTEMS } from "../lib/systems.js";
import type { SystemName } from "../lib/options.js";

export interface RecoveryRow {
  readonly system: SystemName;
  readonly events: number;
  /** Events without a finished run when the consumer was killed. */
  readonly backlogAtKill: number;
  /** From the kill until all were done; undefined if not within the timeout. */
  readonly recoveryMs: number | undefined;
  /** Events with no successful run when the wait ended. */
  readonly notDone: number;
  /** Events with more than one successful run. */
  readonly duplicates: number;
  /** pgfn only: attempts cut short by the kill and retried. */
  readonly abandoned: number | undefined;
  /** pgfn only: from the kill until the last of those retries started. */
  readonly retriedMs: number | undefined;
}

export async function runRecovery(ctx: Context): Promise<RecoveryRow[]> {
  const { recoveryRate, recoverySeconds, recoveryTimeout, systems } = ctx.options;
  const rows: RecoveryRow[] = [];
  for (const name of systems) {
    const system = SYSTEMS[name];
    const consumer = new Consumer(ctx, system);
    try {
      ctx.progress(`recovery: starting ${name}`);
      await consumer.fresh();
      ctx.progress(`recovery: ${name} at ${recoveryRate}/s for ${recoverySeconds} s, then SIGKILL`);
      const load = await openLoop(ctx.pool, {
        tps: recoveryRate,
        seconds: recoverySeconds,
        sql: insertSql(system.table, 1),
        connections: ctx.options.clients,
      });
      if (load.errors > 0) {
        ctx.progress(`warning: ${load.errors} inserts failed, the first: ${load.firstError}`);
      }
      // The load has just stopped: the consumer is still busy with it.
      await consumer.child!.kill();
      const killedAt = performance.now();
      const { rows: clock } = await ctx.pool.query<{ now: Date }>(
        "select clock_timestamp() as now",
      );
      const atKill = await consumer.progress();
      await consumer.start();
      const deadline = killedAt + recoveryTimeout * 1000;
      let recoveryMs: number | undefined;
      let now = atKill;
      for (;;) {
        consumer.assertAlive();
        now = await consumer.progress();
        if (now.done >= now.events) {
          recoveryMs = performance.now() - killedAt;
          break;
        }
        if (performance.now() > deadline) break;
        await sleep(100);
      }
      const { rows: dup } = await ctx.pool.query<{ n: number }>(system.duplicatesSql, [
        consumer.watermark,
      ]);
      // echo never fails: every later attempt retries one the kill cut short.
      const retries =
        name === "pgfn"
          ? (
              await ctx.pool.query<{ abandoned: number; retried_ms: number | null }>(
                `select count(*) filter (where status = 'abandoned')::int as abandoned,
                        extract(epoch from max(started_at) filter (where attempt > 1) - $2) * 1000 as retried_ms
                   from pgfn.function_runs where event_id > $1`,
                [consumer.watermark, clock[0]!.now],
              )
            ).rows[0]
          : undefined;
      const row: RecoveryRow = {
        system: name,
        events: now.events,
        backlogAtKill: atKill.events - atKill.done,
        recoveryMs,
        notDone: now.events - now.done,
        duplicates: dup[0]!.n,
        abandoned: retries?.abandoned,
        retriedMs: retries?.retried_ms == null ? undefined : Number(retries.retried_ms),
      };
      ctx.progress(
        `recovery: ${name}: ${recoveryMs === undefined ? `not recovered in ${recoveryTimeout} s` : `${(recoveryMs / 1000).toFixed(1)} s`}, ${row.notDone} not done, ${row.duplicates} duplicates`,
      );
      rows.push(row);
    } finally {
      await consumer.stop();
    }
  }
  return rows;
}

export function recoveryTable(
  rows: readonly RecoveryRow[],
  timeoutS: number,
): [string[], string[][]] {
  return [
    [
      "system",
      "events",
      "backlog at kill",
      "recovery s",
      "not done",
      "duplicates",
      "abandoned attempts",
      "retried after s",
    ],
    rows.map((r) => [
      r.system,
      String(r.events),
      String(r.backlogAtKill),
      r.recoveryMs === undefined ? `>${timeoutS}` : (r.recoveryMs / 1000).toFixed(1),
      String(r.notDone),
      String(r.duplicates),
      r.abandoned === undefined ? "-" : String(r.abandoned),
      r.retriedMs === undefined ? "-" : (r.retriedMs / 1000).toFixed(1),
    ]),
  ];
}
