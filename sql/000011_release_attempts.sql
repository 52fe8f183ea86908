-- As in 000010_worker_restart.sql, and the stopped runner's jobs get back
-- the graphile-worker attempt their fetch counted. graphile-worker counts a
-- job's attempt when it fetches (and locks) it, and gives it back itself
-- only when it returns a job it never ran. A runner that stopped on its own
-- gives nothing back: without this, each stop cost every job it held one
-- attempt, and a job held by as many stopped runners as its max_attempts
-- (4 for a function with 3) was never fetched again: its event never ran
-- (or, when it had run, its job stayed forever). A stop is not the
-- handler's doing; pgfn counts the event's attempts itself (function_runs,
-- and the daemon refuses one past the function's max_attempts, sql/000009),
-- so giving the job's back never lets an event run more than it may.
create or replace function pgfn.release_stopped_worker(p_daemon_id text, p_worker_ids text[])
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if cardinality(p_worker_ids) > 0 then
    update graphile_worker._private_jobs
    set attempts = greatest(0, attempts - 1)
    where locked_by = any (p_worker_ids);
    perform graphile_worker.force_unlock_workers(p_worker_ids);
  end if;
  return pgfn.abandon_orphaned_runs(p_daemon_id, '{}', interval '0');
end
$$;

comment on function pgfn.release_stopped_worker(text, text[]) is
  'Releases the jobs locked by a stopped graphile-worker runner of a live daemon, giving back the attempt their fetch counted, and abandons the attempts it left running. Returns how many attempts were abandoned. The daemon calls it before starting a new runner.';
