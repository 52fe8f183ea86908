-- A daemon whose graphile-worker runner stopped on its own (graphile-worker
-- stops its pool when a job completion fails, e.g. while the database
-- restarts) starts a new runner in the same process. Before it does, this
-- releases what the stopped runner held: its jobs, locked by ids that
-- nobody uses any more (graphile-worker would release them only after its
-- 4-hour lock expiry), and the attempts this daemon left `running` for them.
-- The reaper cannot do either: the daemon is alive and heartbeating.
--
-- The caller guarantees that no job of this daemon is under way (the
-- stopped runner's runs have finished and the next runner has not started),
-- so every `running` attempt of this daemon that came from a job is left
-- over. Synchronous invokes (no job) are not touched: they may be running.
create or replace function pgfn.release_stopped_worker(p_daemon_id text, p_worker_ids text[])
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer;
begin
  if cardinality(p_worker_ids) > 0 then
    perform graphile_worker.force_unlock_workers(p_worker_ids);
  end if;
  -- Not counted against the function: the handler did nothing wrong. The
  -- job, unlocked above, runs the event again as the next attempt.
  with abandoned as (
    update pgfn.function_runs r
    set status = 'abandoned', error_code = 'INTERNAL', http_status = 500,
        error_message = format('The worker of daemon %s running this attempt stopped (the database was unreachable); the attempt was abandoned and its job released.', p_daemon_id),
        finished_at = clock_timestamp(),
        duration_ms = extract(epoch from clock_timestamp() - r.started_at) * 1000,
        will_retry = exists (select 1 from graphile_worker.jobs j where j.id = r.job_id)
    where r.worker_id = p_daemon_id and r.status = 'running' and r.job_id is not null
    returning 1
  )
  select count(*) into v_count from abandoned;
  return v_count;
end
$$;

comment on function pgfn.release_stopped_worker(text, text[]) is
  'Releases the jobs locked by a stopped graphile-worker runner of a live daemon and abandons the attempts it left running. Returns how many attempts were abandoned. The daemon calls it before starting a new runner.';
