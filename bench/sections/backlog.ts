/**
 * Backlog drain: events committed while the consumer is stopped (a deploy,
 * an outage), then the consumer started. The figure is events/s from the
 * start until the last one is done, the consumer's start-up included, as
 * after a real outage. CPU and WAL cover the drain only: the inserts (and
 * the triggers' work) are done before the window opens.
 */
import { Consumer, type Context } from "../lib/context.js";
import { insertSql, SYSTEMS } from "../lib/systems.js";
import type { SystemName } from "../lib/options.js";
import {
  perRun,
  perRunCells,
  PER_RUN_HEADERS,
  type PerRun,
  type Usage,
  treeCpuUs,
  type UsageMeter,
} from "../lib/usage.js";

/** Rows per insert transaction: few, big transactions fill the backlog in seconds. */
const INSERT_CHUNK = 10_000;
/**
 * How often the drain is checked. Not faster: counting a 100,000-row
 * backlog costs the server CPU the consumer would otherwise get. The end
 * time comes from the last run's finished_at, so the poll does not blur it.
 */
const POLL_MS = 500;

export interface BacklogRow {
  readonly system: SystemName;
  /** Events committed before the consumer started. */
  readonly events: number;
  /** Of those, done when the wait ended. */
  readonly done: number;
  /** From the consumer's start until the last run finished; undefined if not all were done in time. */
  readonly drainMs: number | undefined;
  /** Done events per second from the consumer's start to the last finished run. */
  readonly eventsPerS: number;
  /**
   * CPU of a consumer from its start through its 50 warm-up events: the
   * share of the drain's daemon CPU that is start-up, which matters on a
   * small backlog.
   */
  readonly startupCpuMs: number;
  /** CPU and WAL from the consumer's start until the harness saw all done. */
  readonly usage: Usage;
  readonly perRun: PerRun;
}

export async function runBacklog(ctx: Context): Promise<BacklogRow[]> {
  const { backlogEvents, backlogTimeout, systems } = ctx.options;
  const rows: BacklogRow[] = [];
  for (const name of systems) {
    const system = SYSTEMS[name];
    const consumer = new Consumer(ctx, system);
    let meter: UsageMeter | undefined;
    try {
      // Started and warmed up once, so the module and the tables are ready,
      // then stopped: the backlog is committed with nothing consuming it.
      ctx.progress(`backlog: starting ${name}`);
      await consumer.fresh();
      const startupCpuMs = treeCpuUs(consumer.child!.process.pid!) / 1000;
      await consumer.stop();
      ctx.progress(`backlog: ${name}: committing ${backlogEvents} events, consumer stopped`);
      for (let left = backlogEvents; left > 0; left -= INSERT_CHUNK) {
        await ctx.pool.query(insertSql(system.table, Math.min(INSERT_CHUNK, left)));
      }

      meter = await consumer.meter();
      const { rows: clock } = await ctx.observer.query<{ t: Date }>(
        "select clock_timestamp() as t",
      );
      const startedAt = clock[0]!.t;
      const started = performance.now();
      ctx.progress(`backlog: ${name}: consumer started, draining`);
      await consumer.start();
      const drained = await consumer.waitDone(backlogTimeout * 1000, undefined, POLL_MS);
      const usage = await meter.stop();
      const { events, done } = await consumer.progress();
      const { rows: last } = await ctx.observer.query<{ t: Date | null }>(system.lastFinishSql, [
        consumer.watermark,
      ]);
      // Measured on the server's clock at both ends; when not drained, up to now.
      const drainMs =
        drained && last[0]!.t ? last[0]!.t.getTime() - startedAt.getTime() : undefined;
      const elapsedMs = drainMs ?? performance.now() - started;
      const row: BacklogRow = {
        system: name,
        events,
        done,
        drainMs,
        eventsPerS: (done / elapsedMs) * 1000,
        startupCpuMs,
        usage,
        perRun: perRun(usage, done),
      };
      ctx.progress(
        `backlog: ${name}: ${done}/${events} in ${(elapsedMs / 1000).toFixed(1)} s${drained ? "" : " (timed out)"}, ${row.eventsPerS.toFixed(0)}/s; per run: ${perRunCells(row.perRun).join(" / ")} (daemon us / postgres us / WAL B)`,
      );
      rows.push(row);
    } finally {
      meter?.close();
      await consumer.stop();
    }
  }
  return rows;
}

export function backlogTable(
  rows: readonly BacklogRow[],
  timeoutS: number,
): [string[], string[][]] {
  return [
    [
      "system",
      "events",
      "done",
      "drain s",
      "events/s",
      ...PER_RUN_HEADERS,
      "daemon start-up CPU ms",
    ],
    rows.map((r) => [
      r.system,
      String(r.events),
      String(r.done),
      r.drainMs === undefined ? `>${timeoutS}` : (r.drainMs / 1000).toFixed(1),
      r.eventsPerS.toFixed(0),
      ...perRunCells(r.perRun),
      r.startupCpuMs.toFixed(0),
    ]),
  ];
}
