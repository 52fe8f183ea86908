/**
 * What a measured window cost: CPU of the consumer process, CPU of the
 * Postgres processes that served this bench, and WAL written. Divided by the
 * runs finished in the window these are steadier than throughput on a
 * shared machine: a neighbour slows a run down but does not make it cost
 * more CPU per event.
 *
 * CPU comes from /proc/<pid>/stat (utime + stime, all threads of a process),
 * so it needs Linux and, for Postgres, a server on this machine. A process
 * that exits is gone from /proc with its CPU, so every process is sampled
 * once a second and keeps its last value: an exit loses at most a second.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import type pg from "pg";

/** The harness's own queries (progress, this meter) run as this application, and are not charged. */
export const OBSERVER_APPLICATION = "pgfn-bench-observer";

const SAMPLE_EVERY_MS = 1000;

/** Clock ticks per second, the unit of utime/stime. */
const TICKS_PER_S = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export interface Usage {
  /** Wall-clock seconds of the window. */
  readonly seconds: number;
  /** CPU microseconds of the consumer process (and any process it started). */
  readonly consumerCpuUs: number;
  /**
   * CPU microseconds of the Postgres backends connected to the scratch
   * database (the writers' inserts and triggers, the consumer's queries,
   * autovacuum there) and of the server's shared background processes
   * (WAL writer, checkpointer, background writer); undefined when the
   * server is not on this machine.
   */
  readonly postgresCpuUs: number | undefined;
  /**
   * WAL bytes: of this database's records (walScope "database", see
   * WalWindow), or the whole server's LSN difference when those cannot be
   * told apart.
   */
  readonly walBytes: number;
  readonly walScope: "database" | "server";
  /** The server's LSN difference, every database's writes and page padding included. */
  readonly walServerBytes: number;
}

interface Stat {
  readonly ppid: number;
  /** Process start time, ticks since boot: tells a reused pid from the first. */
  readonly start: string;
  /** utime + stime, ticks. */
  readonly cpu: number;
}

function readStat(pid: number): Stat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may hold spaces: count from after it.
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15, starttime 22.
  return {
    ppid: Number(rest[1]),
    start: rest[19]!,
    cpu: Number(rest[11]) + Number(rest[12]),
  };
}

/** `root` and every process below it. */
function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    const stat = readStat(pid);
    if (!stat) continue;
    const siblings = children.get(stat.ppid) ?? [];
    siblings.push(pid);
    children.set(stat.ppid, siblings);
  }
  const tree: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const pid = queue.pop()!;
    tree.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/** CPU so far of a process and every process below it, microseconds. */
export function treeCpuUs(pid: number): number {
  const ticks = processTree(pid).reduce((sum, p) => sum + (readStat(p)?.cpu ?? 0), 0);
  return (ticks * 1e6) / TICKS_PER_S;
}

/**
 * Per process, its CPU at the start of the window (or 0 if it started
 * later) and the last value seen; the window's CPU is the sum of the
 * differences.
 */
class CpuTally {
  private readonly seen = new Map<string, { base: number; last: number }>();

  add(pids: readonly number[], first: boolean): void {
    for (const pid of pids) {
      const stat = readStat(pid);
      if (!stat) continue;
      const key = `${pid}/${stat.start}`;
      const known = this.seen.get(key);
      if (known) known.last = stat.cpu;
      else this.seen.set(key, { base: first ? stat.cpu : 0, last: stat.cpu });
    }
  }

  microseconds(): number {
    let ticks = 0;
    for (const { base, last } of this.seen.values()) ticks += last - base;
    return (ticks * 1e6) / TICKS_PER_S;
  }
}

/**
 * Whether the server's backends are processes on this machine: the
 * observer's own backend must be in /proc as `postgres` (and, when process
 * titles are on, name the scratch database).
 */
async function serverIsLocal(observer: pg.Pool): Promise<boolean> {
  const { rows } = await observer.query<{ pid: number; db: string }>(
    "select pg_backend_pid() as pid, current_database() as db",
  );
  const { pid, db } = rows[0]!;
  try {
    const comm = readFileSync(`/proc/${pid}/comm`, "utf8").trim();
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return comm === "postgres" && (cmdline.includes(db) || !cmdline.startsWith("postgres:"));
  } catch {
    return false;
  }
}

/**
 * The server processes charged to the bench: this database's backends but
 * the observer's, plus the shared background processes (datname null),
 * since the WAL they write and flush is largely ours. Other databases'
 * backends (tests running next to the bench) are left out.
 */
async function postgresPids(observer: pg.Pool): Promise<number[]> {
  const { rows } = await observer.query<{ pid: number }>(
    `select pid from pg_stat_activity
      where (datname = current_database() and application_name is distinct from $1)
         or (datname is null and backend_type <> 'client backend')`,
    [OBSERVER_APPLICATION],
  );
  return rows.map((r) => r.pid);
}

/**
 * WAL written over a window. The server's LSN difference counts every
 * database's writes, and on a server shared with test runs that is often
 * more than the bench's own. So where pg_walinspect is installed in the
 * scratch database (a superuser's bench; the harness tries), the window's
 * records are read back and only those are counted that touch one of this
 * database's relations or commit a transaction that did. Until then a
 * temporary replication slot keeps the window's WAL from being recycled by a
 * checkpoint; it belongs to the session held here and goes with it, so a
 * bench that dies leaves no slot behind.
 */
class WalWindow {
  private constructor(
    private readonly observer: pg.Pool,
    /** The session holding the slot; undefined: only the server's LSN difference. */
    private holder: pg.PoolClient | undefined,
    private readonly startLsn: string,
  ) {}

  static async open(observer: pg.Pool): Promise<WalWindow> {
    let holder: pg.PoolClient | undefined;
    try {
      const { rows } = await observer.query<{ ok: boolean }>(
        "select exists (select from pg_extension where extname = 'pg_walinspect') as ok",
      );
      if (rows[0]!.ok) {
        holder = await observer.connect();
        await holder.query("select pg_create_physical_replication_slot($1, true, true)", [
          `pgfn_bench_${process.pid}_${Date.now()}`,
        ]);
      }
    } catch {
      // Not allowed (no replication slots free, not a superuser): the server-wide figure only.
      holder?.release(true);
      holder = undefined;
    }
    // Flushed, not inserted: pg_walinspect reads only WAL already on disk.
    const { rows } = await observer.query<{ lsn: string }>(
      "select pg_current_wal_flush_lsn()::text as lsn",
    );
    return new WalWindow(observer, holder, rows[0]!.lsn);
  }

  /** Drops the slot (by ending its session); once. */
  close(): void {
    this.holder?.release(true);
    this.holder = undefined;
  }

  /** Bytes since open: this database's records when they can be told apart, and the server's. */
  async measure(): Promise<{ database: number | undefined; server: number }> {
    try {
      // The end must be flushed too: the records are read from disk.
      const { rows } = await this.observer.query<{ lsn: string; server: string }>(
        `select lsn::text, pg_wal_lsn_diff(lsn, $1::pg_lsn)::bigint as server
           from (select pg_current_wal_flush_lsn() as lsn) l`,
        [this.startLsn],
      );
      const end = rows[0]!.lsn;
      const server = Number(rows[0]!.server);
      if (!this.holder) return { database: undefined, server };
      const { rows: ours } = await this.observer.query<{ bytes: string | null }>(
        `with r as materialized (
           select xid, record_length,
                  block_ref like '%/' || (select oid from pg_database where datname = current_database()) || '/%' as ours
             from pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)),
         x as (select distinct xid from r where ours and xid <> '0')
         select sum(record_length)::bigint as bytes from r
          where ours or (xid <> '0' and xid in (select xid from x))`,
        [this.startLsn, end],
      );
      return { database: Number(ours[0]!.bytes ?? 0), server };
    } finally {
      this.close();
    }
  }
}

export class UsageMeter {
  private readonly consumer = new CpuTally();
  private readonly postgres = new CpuTally();
  private timer: NodeJS.Timeout | undefined;
  private sampling: Promise<void> = Promise.resolve();

  private constructor(
    private readonly observer: pg.Pool,
    /** The consumer's pid now: it may start (backlog) or restart after the meter. */
    private readonly consumerPid: () => number | undefined,
    private readonly local: boolean,
    private readonly wal: WalWindow,
    private readonly started: number,
  ) {}

  /** Starts a window: takes the first sample and then one a second. */
  static async start(
    observer: pg.Pool,
    consumerPid: () => number | undefined,
  ): Promise<UsageMeter> {
    const local = await serverIsLocal(observer);
    const meter = new UsageMeter(
      observer,
      consumerPid,
      local,
      await WalWindow.open(observer),
      performance.now(),
    );
    await meter.sample(true);
    meter.timer = setInterval(() => {
      // One sample at a time; a failed one (a connection blip) only loses precision.
      meter.sampling = meter.sampling.then(() => meter.sample(false)).catch(() => undefined);
    }, SAMPLE_EVERY_MS);
    // A section that fails mid-window must not be kept alive by its meter.
    meter.timer.unref();
    return meter;
  }

  private async sample(first: boolean): Promise<void> {
    const pid = this.consumerPid();
    if (pid !== undefined) this.consumer.add(processTree(pid), first);
    if (this.local) this.postgres.add(await postgresPids(this.observer), first);
  }

  /** Stops sampling without a result: for a section that failed. */
  close(): void {
    clearInterval(this.timer);
    this.wal.close();
  }

  /** Ends the window with a last sample. */
  async stop(): Promise<Usage> {
    clearInterval(this.timer);
    await this.sampling;
    await this.sample(false);
    const seconds = (performance.now() - this.started) / 1000;
    const wal = await this.wal.measure();
    return {
      seconds,
      consumerCpuUs: this.consumer.microseconds(),
      postgresCpuUs: this.local ? this.postgres.microseconds() : undefined,
      walBytes: wal.database ?? wal.server,
      walScope: wal.database === undefined ? "server" : "database",
      walServerBytes: wal.server,
    };
  }
}

/** Per finished run: what the tables show. */
export interface PerRun {
  readonly consumerUs: number;
  readonly postgresUs: number | undefined;
  readonly walBytes: number;
  readonly walScope: Usage["walScope"];
}

export function perRun(usage: Usage, runs: number): PerRun {
  const per = (v: number) => (runs > 0 ? v / runs : NaN);
  return {
    consumerUs: per(usage.consumerCpuUs),
    postgresUs: usage.postgresCpuUs === undefined ? undefined : per(usage.postgresCpuUs),
    walBytes: per(usage.walBytes),
    walScope: usage.walScope,
  };
}

/** What the columns mean, said once above each table that has them. */
export const PER_RUN_LEGEND =
  "daemon us/event = CPU (user + system) of the system's consumer process (pgfn start, the graphile-worker runner, the relay); postgres us/event = CPU of the Postgres processes serving the bench's database (writers, consumer, autovacuum) plus the server's background writers; WAL B/event = bytes of WAL records touching the bench's database (pg_walinspect; \"*\" = the whole server's pg_current_wal_lsn() difference, other databases included). All per run finished in the window.";

/** The table columns for a PerRun, and their cells. */
export const PER_RUN_HEADERS = ["daemon us/event", "postgres us/event", "WAL B/event"];

export function perRunCells(p: PerRun): string[] {
  const n = (v: number | undefined) =>
    v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(0);
  // "*": the whole server's WAL, other databases' writes included.
  return [
    n(p.consumerUs),
    n(p.postgresUs),
    `${n(p.walBytes)}${p.walScope === "server" ? "*" : ""}`,
  ];
}
