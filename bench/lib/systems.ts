/**
 * The systems side by side: pgfn and the two baselines. Each has a load
 * table its trigger watches, a consumer process, and the same questions
 * asked of its own outbox: how many events, how many done, how long from
 * enqueue to the handler's (first) start. `$1` is an event id watermark:
 * only events after it count.
 */
import {
  startDirectWorker,
  startPgfnDaemon,
  startPollRelay,
  type Child,
  type ConsumerOptions,
} from "./children.js";
import type { SystemName } from "./options.js";

export interface System {
  readonly name: SystemName;
  /** The table whose inserts the system's trigger turns into work. */
  readonly table: string;
  /** The consumer, as a child process. */
  start(id: string, options: ConsumerOptions): Child;
  /** The highest event id so far. */
  readonly watermarkSql: string;
  /** `events` after $1 and how many of them have a finished, successful run (`done`). */
  readonly progressSql: string;
  /** Per event after $1: ms from enqueue to first start (or to now, if not started), `started`. */
  readonly latencySql: string;
  /** Events after $1 with more than one successful run. */
  readonly duplicatesSql: string;
  /** When the last successful run of an event after $1 finished (`t`, server clock). */
  readonly lastFinishSql: string;
}

export const SYSTEMS: Record<SystemName, System> = {
  pgfn: {
    name: "pgfn",
    table: "bench.load_pgfn",
    start: startPgfnDaemon,
    watermarkSql: "select coalesce(max(id), 0)::bigint as id from pgfn.events",
    progressSql: `select
        (select count(*) from pgfn.events where id > $1)::int as events,
        (select count(distinct event_id) from pgfn.function_runs
          where event_id > $1 and status = 'succeeded')::int as done`,
    latencySql: `select extract(epoch from coalesce(r.started_at, clock_timestamp()) - e.created_at) * 1000 as ms,
        r.started_at is not null as started
      from pgfn.events e
      left join (select event_id, min(started_at) as started_at from pgfn.function_runs
                  where event_id > $1 group by 1) r on r.event_id = e.id
      where e.id > $1`,
    duplicatesSql: `select count(*)::int as n from (select event_id from pgfn.function_runs
        where event_id > $1 and status = 'succeeded' group by 1 having count(*) > 1) d`,
    lastFinishSql: `select max(finished_at) as t from pgfn.function_runs
      where event_id > $1 and status = 'succeeded'`,
  },
  direct: {
    name: "direct",
    table: "bench.load_direct",
    start: startDirectWorker,
    watermarkSql: "select coalesce(max(id), 0)::bigint as id from bench.load_direct",
    progressSql: `select
        (select count(*) from bench.load_direct where id > $1)::int as events,
        (select count(distinct event_id) from bench.direct_runs
          where event_id > $1 and finished_at is not null)::int as done`,
    // A job not started yet is known only by its row: the row's insert time
    // is the same statement's, microseconds before the job's.
    latencySql: `select extract(epoch from coalesce(r.started_at, clock_timestamp()) - coalesce(r.created_at, l.created_at)) * 1000 as ms,
        r.started_at is not null as started
      from bench.load_direct l
      left join (select event_id, min(created_at) as created_at, min(started_at) as started_at
                   from bench.direct_runs where event_id > $1 group by 1) r on r.event_id = l.id
      where l.id > $1`,
    duplicatesSql: `select count(*)::int as n from (select event_id from bench.direct_runs
        where event_id > $1 and finished_at is not null group by 1 having count(*) > 1) d`,
    lastFinishSql: "select max(finished_at) as t from bench.direct_runs where event_id > $1",
  },
  poll: {
    name: "poll",
    table: "bench.load_poll",
    start: startPollRelay,
    watermarkSql: "select coalesce(max(id), 0)::bigint as id from bench.poll_outbox",
    progressSql: `select
        (select count(*) from bench.poll_outbox where id > $1)::int as events,
        (select count(distinct event_id) from bench.poll_runs
          where event_id > $1 and finished_at is not null)::int as done`,
    latencySql: `select extract(epoch from coalesce(r.started_at, clock_timestamp()) - o.created_at) * 1000 as ms,
        r.started_at is not null as started
      from bench.poll_outbox o
      left join (select event_id, min(started_at) as started_at from bench.poll_runs
                  where event_id > $1 group by 1) r on r.event_id = o.id
      where o.id > $1`,
    duplicatesSql: `select count(*)::int as n from (select event_id from bench.poll_runs
        where event_id > $1 and finished_at is not null group by 1 having count(*) > 1) d`,
    lastFinishSql: "select max(finished_at) as t from bench.poll_runs where event_id > $1",
  },
};

/** Empties every table the bench fills, so each run starts on small tables. Run with no consumer up. */
export const CLEAR_SQL = `truncate pgfn.events, pgfn.function_runs, pgfn.dead_letters, pgfn.daemons,
  graphile_worker._private_jobs, graphile_worker._private_job_queues,
  bench.load_none, bench.load_pgfn, bench.load_direct, bench.load_poll,
  bench.direct_runs, bench.poll_outbox, bench.poll_runs, pgfn.circuits cascade`;

/** One transaction inserting `rows` rows into `table`. */
export function insertSql(table: string, rows: number): string {
  return rows === 1
    ? `insert into ${table} (v) values ('x')`
    : `insert into ${table} (v) select 'x' from generate_series(1, ${rows})`;
}
