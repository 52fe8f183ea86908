-- `direct`, the do-it-yourself floor: the trigger adds one graphile-worker job
-- per row, and a plain graphile-worker runner (direct.worker.ts) records when
-- each job started and finished. No outbox, no dispatch step, no sandbox.

-- created_at: the job's insert time, stamped in the trigger as pgfn stamps
-- pgfn.events.created_at, so the two latencies are measured alike.
create or replace function bench.direct_enqueue() returns trigger
language plpgsql
as $$
begin
  perform graphile_worker.add_job('bench_direct', json_build_object('id', new.id, 'created_at', clock_timestamp()));
  return null;
end
$$;

drop trigger if exists bench_direct on bench.load_direct;
create trigger bench_direct after insert on bench.load_direct
  for each row execute function bench.direct_enqueue();

create table if not exists bench.direct_runs (
  id bigint generated always as identity primary key,
  event_id bigint not null, -- bench.load_direct.id
  created_at timestamptz not null,
  started_at timestamptz not null default clock_timestamp(),
  finished_at timestamptz
);
create index if not exists direct_runs_event_idx on bench.direct_runs (event_id);
