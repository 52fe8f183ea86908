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

-- Hands jobs locked by p_worker_ids back to graphile-worker, except
-- p_keep (jobs the caller knows it is running) and those locked for less
-- than p_min_age (a fetch still under way), and unlocks their named queues.
-- Each job gets back the attempt its fetch counted: graphile-worker counts
-- an attempt when it fetches (and locks) a job, and gives it back itself
-- only when it returns a job it never ran. A runner that stopped on its
-- own, or a fetch whose reply was lost with the connection, gives nothing
-- back: without this each such loss cost every job one attempt, and a job
-- lost as often as its max_attempts (4 for a function with 3) was never
-- fetched again. Neither is the handler's doing; pgfn counts the event's
-- attempts itself (function_runs, and the daemon refuses one past the
-- function's max_attempts, sql/000009), so giving the job's back never
-- lets an event run more than it may. Returns how many jobs were released.
create or replace function pgfn.release_jobs(
  p_worker_ids text[],
  p_keep bigint[] default '{}',
  p_min_age interval default '0'
) returns integer
language sql
set search_path = pg_catalog, pg_temp
as $$
  with released as (
    update graphile_worker._private_jobs
    set locked_by = null, locked_at = null, attempts = greatest(0, attempts - 1)
    where locked_by = any (p_worker_ids)
      and locked_at <= now() - p_min_age
      and not (id = any (p_keep))
    returning job_queue_id
  ), queues as (
    update graphile_worker._private_job_queues q
    set locked_by = null, locked_at = null
    where q.locked_by = any (p_worker_ids)
      and q.id in (select job_queue_id from released)
  )
  select count(*)::int from released
$$;

comment on function pgfn.release_jobs(text[], bigint[], interval) is
  'Unlocks the jobs (and their queues) locked by the given graphile-worker ids, except the kept ones and those locked for less than p_min_age, giving back the attempt their fetch counted. Returns how many.';

-- A daemon whose graphile-worker runner stopped on its own (graphile-worker
-- stops its pool when a job completion fails, e.g. while the database
-- restarts) starts a new runner in the same process. Before it does, this
-- releases what the stopped runner held: its jobs, locked by ids that
-- nobody uses any more (graphile-worker would release them only after its
-- 4-hour lock expiry), with their attempts given back (pgfn.release_jobs);
-- any queue still locked by those ids; and the attempts this daemon left
-- `running` for them. The caller guarantees that no runner of this daemon
-- is live (the stopped one has finished, the next has not started): every
-- `running` attempt of the daemon that came from a job is left over.
create or replace function pgfn.release_stopped_worker(p_daemon_id text, p_worker_ids text[])
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if cardinality(p_worker_ids) > 0 then
    perform pgfn.release_jobs(p_worker_ids);
    perform graphile_worker.force_unlock_workers(p_worker_ids);
  end if;
  return pgfn.abandon_orphaned_runs(p_daemon_id, '{}', interval '0');
end
$$;

comment on function pgfn.release_stopped_worker(text, text[]) is
  'Releases the jobs locked by a stopped graphile-worker runner of a live daemon, giving back the attempt their fetch counted, and abandons the attempts it left running. Returns how many attempts were abandoned. The daemon calls it before starting a new runner.';
