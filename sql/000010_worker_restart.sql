-- An attempt of this daemon's that nothing runs any more. While a job's run
-- is under way the job stays locked by the graphile-worker pool that
-- fetched it, from before the attempt is recorded `running` until after its
-- outcome is; so a `running` attempt of this daemon whose job is not locked
-- by one of the daemon's live pools or workers was cut short. That happens
-- when the database went away while the attempt was recorded: the daemon
-- could not mark it abandoned, and graphile-worker released its job. The
-- reaper would end it if the daemon had died, but the daemon lived on.
--
-- p_min_age keeps an attempt started after the caller read its live ids
-- (by a runner started meanwhile) out of reach. Synchronous invokes (no
-- job) are never touched: they may be running. Not counted against the
-- function: the handler did nothing wrong, and the event runs again as the
-- next attempt while its job exists.
create or replace function pgfn.abandon_orphaned_runs(
  p_daemon_id text,
  p_live_worker_ids text[],
  p_min_age interval
) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer;
begin
  with abandoned as (
    update pgfn.function_runs r
    set status = 'abandoned', error_code = 'INTERNAL', http_status = 500,
        error_message = format('This attempt on daemon %s was cut short while the database was unreachable; it was abandoned and its event runs again.', p_daemon_id),
        finished_at = clock_timestamp(),
        duration_ms = extract(epoch from clock_timestamp() - r.started_at) * 1000,
        will_retry = exists (select 1 from graphile_worker.jobs j where j.id = r.job_id)
    where r.worker_id = p_daemon_id and r.status = 'running' and r.job_id is not null
      and r.started_at < clock_timestamp() - p_min_age
      and not exists (
        select 1 from graphile_worker.jobs j
        where j.id = r.job_id and j.locked_by = any (p_live_worker_ids)
      )
    returning 1
  )
  select count(*) into v_count from abandoned;
  return v_count;
end
$$;

comment on function pgfn.abandon_orphaned_runs(text, text[], interval) is
  'Abandons the running attempts of a live daemon whose jobs none of its live graphile-worker ids hold any more (cut short by a database outage). Returns how many. The daemon calls it with its heartbeat.';

-- A daemon whose graphile-worker runner stopped on its own (graphile-worker
-- stops its pool when a job completion fails, e.g. while the database
-- restarts) starts a new runner in the same process. Before it does, this
-- releases what the stopped runner held: its jobs, locked by ids that
-- nobody uses any more (graphile-worker would release them only after its
-- 4-hour lock expiry), and the attempts this daemon left `running` for them.
-- The caller guarantees that no runner of this daemon is live (the stopped
-- one has finished, the next has not started): every `running` attempt of
-- the daemon that came from a job is left over.
create or replace function pgfn.release_stopped_worker(p_daemon_id text, p_worker_ids text[])
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if cardinality(p_worker_ids) > 0 then
    perform graphile_worker.force_unlock_workers(p_worker_ids);
  end if;
  return pgfn.abandon_orphaned_runs(p_daemon_id, '{}', interval '0');
end
$$;

comment on function pgfn.release_stopped_worker(text, text[]) is
  'Releases the jobs locked by a stopped graphile-worker runner of a live daemon and abandons the attempts it left running. Returns how many attempts were abandoned. The daemon calls it before starting a new runner.';
