-- max_concurrency across every daemon: a run may start only while fewer than
-- max_concurrency runs of its function are `running`. Checked and recorded
-- under a per-function advisory lock, so two daemons cannot both take the
-- last slot.
create index if not exists function_runs_running_fn_idx
  on pgfn.function_runs (function_name) where status = 'running';

create or replace function pgfn.start_run(
  p_event_id bigint,
  p_function_name text,
  p_wasm_sha256 text,
  p_worker_id text,
  p_job_id bigint,
  p_max_concurrency integer
) returns table (id bigint, attempt integer)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_max_concurrency is not null then
    perform pg_advisory_xact_lock(hashtextextended('pgfn:concurrency:' || p_function_name, 0));
    if (select count(*) from pgfn.function_runs r
        where r.function_name = p_function_name and r.status = 'running') >= p_max_concurrency then
      return; -- no row: the caller waits (async) or answers 429 (sync)
    end if;
  end if;
  return query
    insert into pgfn.function_runs (event_id, function_name, wasm_sha256, attempt, status, worker_id, job_id)
    values (
      p_event_id, p_function_name, p_wasm_sha256,
      (select count(*) + 1 from pgfn.function_runs r where r.event_id = p_event_id),
      'running', p_worker_id, p_job_id
    )
    returning function_runs.id, function_runs.attempt;
end
$$;

comment on function pgfn.start_run(bigint, text, text, text, bigint, integer) is
  'Records the start of an attempt if the function is under max_concurrency; returns no row otherwise. The daemon calls it.';
