/**
 * What a trigger costs the writer: single-row INSERT transactions per second
 * at 1, 4 and 16 closed-loop clients into the same table shape, with no
 * trigger (`none`) and with each system's trigger. Twice: with no consumer
 * running (the trigger's cost alone) and with the system's consumer running,
 * as deployed. The second is the one that counts: pgfn skips its NOTIFY
 * while its listener is awake, which it only is when it runs; and the
 * consumer's CPU competes with the writers on a small machine, which is
 * part of the price too.
 */
import { Consumer, type Context } from "../lib/context.js";
import { closedLoop } from "../lib/load.js";
import { CLEAR_SQL, insertSql, SYSTEMS } from "../lib/systems.js";
import type { SystemName } from "../lib/options.js";

/** Each cell is measured this many times and averaged. */
export const ROUNDS = 2;

export type WritePathMode = "alone" | "consumer";

export interface WritePathRow {
  /** alone: no consumer runs; consumer: each system's consumer runs meanwhile. */
  readonly mode: WritePathMode;
  readonly clients: number;
  /** Transactions per second, by system (`none`: no trigger), the mean of the rounds. */
  readonly tps: Readonly<Partial<Record<SystemName | "none", number>>>;
}

export async function runWritePath(ctx: Context): Promise<WritePathRow[]> {
  const { writepathClients, writepathSeconds, systems } = ctx.options;
  const tables: [SystemName | "none", string][] = [
    ["none", "bench.load_none"],
    ...systems.map((s) => [s, SYSTEMS[s].table] as [SystemName, string]),
  ];
  const rows: WritePathRow[] = [];
  await ctx.pool.query(CLEAR_SQL);
  // Untimed: the first connections and the first pages cost more than the rest.
  await closedLoop(ctx.url, { clients: 4, seconds: 1, sql: insertSql("bench.load_none", 1) });
  await ctx.pool.query(CLEAR_SQL);
  for (const mode of ["alone", "consumer"] as const) {
    for (const clients of writepathClients) {
      const sums: Partial<Record<SystemName | "none", number>> = {};
      // Systems interleaved within a client count, forwards then backwards: a
      // neighbour's burst of CPU or fsync then lands on a cell of each, not on
      // one system's whole column.
      for (let round = 0; round < ROUNDS; round++) {
        for (const [name, table] of round % 2 === 0 ? tables : [...tables].reverse()) {
          const consumer =
            mode === "consumer" && name !== "none" ? new Consumer(ctx, SYSTEMS[name]) : undefined;
          await consumer?.fresh();
          try {
            const tps = await closedLoop(ctx.url, {
              clients,
              seconds: writepathSeconds,
              sql: insertSql(table, 1),
            });
            sums[name] = (sums[name] ?? 0) + tps;
            ctx.progress(
              `write path (${mode}): ${name}, ${clients} client(s): ${tps.toFixed(0)} tx/s`,
            );
          } finally {
            await consumer?.stop();
          }
          await ctx.pool.query(CLEAR_SQL);
        }
      }
      const tps = Object.fromEntries(
        Object.entries(sums).map(([name, sum]) => [name, sum / ROUNDS]),
      ) as Partial<Record<SystemName | "none", number>>;
      rows.push({ mode, clients, tps });
    }
  }
  return rows;
}

export function writePathTable(
  rows: readonly WritePathRow[],
  systems: readonly SystemName[],
): [string[], string[][]] {
  return [
    ["consumers", "clients", "none tx/s", ...systems.map((s) => `${s} tx/s (% of none)`)],
    rows.map((r) => [
      r.mode === "alone" ? "none" : "running",
      String(r.clients),
      (r.tps.none ?? NaN).toFixed(0),
      ...systems.map((s) => {
        const v = r.tps[s] ?? NaN;
        return `${v.toFixed(0)} (${((v / (r.tps.none ?? NaN)) * 100).toFixed(0)}%)`;
      }),
    ]),
  ];
}
