/**
 * Commit-to-handler-start latency under an open-loop load: single-row
 * transactions at a fixed arrival rate; per event, from its enqueue (the
 * trigger's clock_timestamp()) to its first handler start, both read from
 * the server's clock.
 */
import { Consumer, type Context } from "../lib/context.js";
import { openLoop } from "../lib/load.js";
import { summarise, type LatencySummary } from "../lib/stats.js";
import { insertSql, SYSTEMS } from "../lib/systems.js";
import type { SystemName } from "../lib/options.js";
import {
  perRun,
  perRunCells,
  PER_RUN_HEADERS,
  type PerRun,
  type Usage,
  type UsageMeter,
} from "../lib/usage.js";

/** The longest wait, after the load, for every event to have started. */
const DRAIN_MS = 5000;

export interface LatencyRow {
  readonly system: SystemName;
  readonly rate: number;
  /** Committed single-row transactions per second. */
  readonly achieved: number;
  readonly commitP99Ms: number;
  readonly insertErrors: number;
  /** Whether every event had started by the end of the drain. */
  readonly drained: boolean;
  readonly latency: LatencySummary;
  /** CPU and WAL from the load's start to the end of the drain. */
  readonly usage: Usage;
  /** The same, per run finished by the end of the drain. */
  readonly perRun: PerRun;
}

export async function runLatency(ctx: Context): Promise<LatencyRow[]> {
  const { rates, latencySeconds, systems } = ctx.options;
  // Long enough to drain whatever a system can keep up with; a system that
  // cannot is measured with its queue, not waited out.
  const drainMs = DRAIN_MS;
  const rows: LatencyRow[] = [];
  for (const name of systems) {
    const system = SYSTEMS[name];
    const consumer = new Consumer(ctx, system);
    let dirty = true;
    let meter: UsageMeter | undefined;
    try {
      for (const rate of rates) {
        // A backlog left by the last rate would be measured again here.
        if (dirty) {
          ctx.progress(`latency: starting ${name}`);
          await consumer.fresh();
        } else {
          await consumer.mark();
        }
        ctx.progress(`latency: ${name} at ${rate}/s for ${latencySeconds} s`);
        meter = await consumer.meter();
        const load = await openLoop(ctx.pool, {
          tps: rate,
          seconds: latencySeconds,
          sql: insertSql(system.table, 1),
          connections: ctx.options.clients,
        });
        if (load.errors > 0) {
          ctx.progress(`warning: ${load.errors} inserts failed, the first: ${load.firstError}`);
        }
        const drained = await consumer.waitDone(drainMs);
        const usage = await meter.stop();
        const { done } = await consumer.progress();
        dirty = !drained;
        const { rows: samples } = await ctx.pool.query<{ ms: number; started: boolean }>(
          system.latencySql,
          [consumer.watermark],
        );
        const latency = summarise(samples.map((s) => ({ ms: Number(s.ms), open: !s.started })));
        ctx.progress(
          `latency: ${name} at ${rate}/s: ${load.achievedTps.toFixed(0)}/s committed, p50 ${latency.p50.toFixed(1)} ms, p99 ${latency.p99.toFixed(1)} ms${drained ? "" : `, ${latency.open} not started after ${drainMs / 1000} s`}`,
        );
        rows.push({
          system: name,
          rate,
          achieved: load.achievedTps,
          commitP99Ms: load.commitP99Ms,
          insertErrors: load.errors,
          drained,
          latency,
          usage,
          perRun: perRun(usage, done),
        });
      }
    } finally {
      meter?.close();
      await consumer.stop();
    }
  }
  return rows;
}

const ms = (value: number, lowerBound: boolean) =>
  Number.isNaN(value) ? "-" : `${lowerBound ? ">" : ""}${value.toFixed(1)}`;

export function latencyTable(rows: readonly LatencyRow[]): [string[], string[][]] {
  return [
    [
      "system",
      "offered/s",
      "achieved/s",
      "commit p99 ms",
      "events",
      "not started",
      "p50 ms",
      "p95 ms",
      "p99 ms",
      "max ms",
      ...PER_RUN_HEADERS,
    ],
    rows.map((r) => [
      r.system,
      String(r.rate),
      r.achieved.toFixed(0),
      r.commitP99Ms.toFixed(1),
      String(r.latency.count),
      String(r.latency.open),
      ms(r.latency.p50, r.latency.lowerBound.p50),
      ms(r.latency.p95, r.latency.lowerBound.p95),
      ms(r.latency.p99, r.latency.lowerBound.p99),
      ms(r.latency.max, r.latency.lowerBound.max),
      ...perRunCells(r.perRun),
    ]),
  ];
}
