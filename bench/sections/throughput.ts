/**
 * Sustained end-to-end throughput: a fixed offered rate, open loop, for a
 * minute, with the backlog (events without a finished successful run)
 * sampled every few seconds. A system that keeps up shows runs/s close to
 * the offered rate and a flat backlog; one that cannot shows its ceiling
 * as runs/s and a backlog that grows.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Consumer, type Context } from "../lib/context.js";
import { openLoop } from "../lib/load.js";
import { slope } from "../lib/stats.js";
import { insertSql, SYSTEMS } from "../lib/systems.js";
import {
  perRun,
  perRunCells,
  PER_RUN_HEADERS,
  type PerRun,
  type Usage,
  type UsageMeter,
} from "../lib/usage.js";
import type { SystemName } from "../lib/options.js";

export interface BacklogSample {
  /** Seconds since the load started. */
  readonly t: number;
  readonly events: number;
  readonly done: number;
}

export interface ThroughputRow {
  readonly system: SystemName;
  readonly rowsPerTx: number;
  /** Offered events/s. */
  readonly offered: number;
  /** Events/s committed by the load generator. */
  readonly inserted: number;
  /** Events/s that got a finished successful run during the load. */
  readonly runsPerS: number;
  readonly backlogEnd: number;
  readonly backlogMax: number;
  /** Least-squares trend of the backlog, events/s. */
  readonly backlogTrend: number;
  /** The trend added more than one second of arrivals over the run. */
  readonly grew: boolean;
  /** CPU and WAL from the first backlog sample to the last. */
  readonly usage: Usage;
  /** The same, per run finished in that window. */
  readonly perRun: PerRun;
  readonly samples: readonly BacklogSample[];
}

export async function runThroughput(ctx: Context): Promise<ThroughputRow[]> {
  const { seconds, throughputRates, systems } = ctx.options;
  const sampleEveryMs = Math.min(5, Math.max(1, seconds / 10)) * 1000;
  const shapes = [
    { rowsPerTx: 1, offered: throughputRates[0] },
    { rowsPerTx: 10, offered: throughputRates[1] },
  ];
  const rows: ThroughputRow[] = [];
  for (const { rowsPerTx, offered } of shapes) {
    for (const name of systems) {
      const system = SYSTEMS[name];
      const consumer = new Consumer(ctx, system);
      let meter: UsageMeter | undefined;
      try {
        ctx.progress(`throughput: starting ${name}`);
        await consumer.fresh();
        ctx.progress(
          `throughput: ${name}, ${offered} events/s in ${rowsPerTx}-row transactions for ${seconds} s`,
        );
        const samples: BacklogSample[] = [];
        // The window runs from the first backlog sample to the last, as runs/s does.
        meter = await consumer.meter();
        const started = performance.now();
        const sample = async () => {
          const p = await consumer.progress();
          const s = { t: (performance.now() - started) / 1000, ...p };
          samples.push(s);
          return s;
        };
        let loading = true;
        // Settled into a value, not left rejected: a consumer that dies during
        // the load is reported after it, not as an unhandled rejection.
        const sampler = (async (): Promise<Error | undefined> => {
          await sample();
          while (loading) {
            await sleep(sampleEveryMs);
            if (!loading) break;
            consumer.assertAlive();
            const s = await sample();
            ctx.progress(
              `throughput: ${name} t=${s.t.toFixed(0)} s: ${s.events} events, ${s.done} done, backlog ${s.events - s.done}`,
            );
          }
          return undefined;
        })().catch((error: Error) => error);
        const load = await openLoop(ctx.pool, {
          tps: offered / rowsPerTx,
          seconds,
          sql: insertSql(system.table, rowsPerTx),
          connections: ctx.options.clients,
        }).finally(() => (loading = false));
        const samplerError = await sampler;
        if (samplerError) throw samplerError;
        const last = await sample();
        const usage = await meter.stop();
        if (load.errors > 0) {
          ctx.progress(`warning: ${load.errors} inserts failed, the first: ${load.firstError}`);
        }
        const first = samples[0]!;
        const backlog = samples.map((s) => [s.t, s.events - s.done] as const);
        const trend = slope(backlog);
        const row: ThroughputRow = {
          system: name,
          rowsPerTx,
          offered,
          inserted: load.achievedTps * rowsPerTx,
          runsPerS: (last.done - first.done) / (last.t - first.t),
          backlogEnd: last.events - last.done,
          backlogMax: Math.max(...backlog.map(([, b]) => b)),
          backlogTrend: trend,
          grew: trend * (last.t - first.t) > offered,
          usage,
          perRun: perRun(usage, last.done - first.done),
          samples,
        };
        ctx.progress(
          `throughput: ${name}: ${row.runsPerS.toFixed(0)} runs/s, backlog ${row.grew ? "grew" : "flat"} (${trend >= 0 ? "+" : ""}${trend.toFixed(0)}/s); per run: ${perRunCells(row.perRun).join(" / ")} (daemon us / postgres us / WAL B)`,
        );
        rows.push(row);
      } finally {
        meter?.close();
        await consumer.stop();
      }
    }
  }
  return rows;
}

export function throughputTable(rows: readonly ThroughputRow[]): [string[], string[][]] {
  return [
    [
      "system",
      "rows/tx",
      "offered/s",
      "inserted/s",
      "runs/s",
      "backlog end",
      "backlog max",
      "trend/s",
      "backlog grew",
      ...PER_RUN_HEADERS,
    ],
    rows.map((r) => [
      r.system,
      String(r.rowsPerTx),
      String(r.offered),
      r.inserted.toFixed(0),
      r.runsPerS.toFixed(0),
      String(r.backlogEnd),
      String(r.backlogMax),
      `${r.backlogTrend >= 0 ? "+" : ""}${r.backlogTrend.toFixed(0)}`,
      r.grew ? "yes" : "no",
      ...perRunCells(r.perRun),
    ]),
  ];
}
