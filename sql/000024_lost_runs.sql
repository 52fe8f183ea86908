-- An attempt that nothing runs any more no longer strands its event when
-- its job is gone. Two paths end such attempts: the daemon's orphan sweep
-- (pgfn.abandon_orphaned_runs: attempts its runner lost in a database
-- outage) and the reaper (pgfn.reap_dead_daemons: a dead daemon's). Both
-- (000015) counted on the attempt's job to run the event again: the sweep
-- ended an attempt whose job was gone with will_retry = false and nothing
-- else (its run saying "its event runs again"; for an ordered function the
-- event counted as finished, pgfn.event_finished, and the events behind it
-- were let go while a job might still run it), the reaper with will_retry =
-- true and no job (an ordered function's later events then waited for it
-- for ever, since an attempt that will be retried keeps the event's place).
-- The job goes while the attempt stays `running` when:
-- * the job ran again and completed without starting the event: an ordered
--   function's turn, or max_concurrency, is held by the orphaned attempt
--   itself, so the job found the event refused, left it a wait job
--   (pgfn:wait:<id>) and completed; or another daemon ran the event as its
--   next attempt;
-- * graphile-worker will never run the job again: its tries ran out, or a
--   person removed it (graphile_worker.remove_job sets a locked job's tries
--   to its max_attempts) or completed or deleted it.
--
-- The decision has one owner, pgfn.abandon_lost_run, which both call; in
-- this order:
-- 1. a job will still run the event (the attempt's own, or one of the
--    event's jobs by key, or a batch holding it; locked now, or with tries
--    left): will_retry = true;
-- 2. a later attempt of the event exists: it decides the event's fate;
--    will_retry = true, as pgfn.abandon_earlier_runs says of such an attempt;
-- 3. the function allows another attempt (attempt < max_attempts, a missing
--    function allowing 1): will_retry = true, and a retry job
--    (pgfn.add_retry_job) starts the next attempt now; an ordered function
--    keeps the event's place, since it is not finished;
-- 4. otherwise the event is a dead letter (pgfn.dead_letter, which reports
--    it to on_error).
-- The reaper keeps its own rules before that: a synchronous invoke (no
-- job) and an attempt that was the event's last are dead letters at once,
-- as before, and the last attempt's one-event job is completed (a batch job
-- still runs its other events and finds this one dead-lettered). Its
-- release of the dead daemon's jobs comes first, as before, so a job it
-- released counts as one that will run the event; and the runners it
-- releases are the dead daemon's only: a job its attempt held that another
-- daemon's runner has taken since no longer puts that runner's every job up
-- for grabs. Every run's message says which of these happened. Synchronous
-- invokes are never touched by the sweep. Signatures unchanged, so create
-- or replace keeps owners and grants; none is a SECURITY DEFINER function,
-- search_path pinned as before.

-- An attempt that nothing runs any more (its daemon died, or lost it in a
-- database outage), ended as abandoned with p_error_code, the message
-- p_cause followed by what becomes of its event. The callers hand the
-- attempt's job back (or find it gone) before they call it, so the jobs it
-- finds are the ones that will run the event. Returns whether the attempt
-- was running: only the call that ended it acts, so an outcome recorded
-- meanwhile, or another sweep, has decided already. Not a SECURITY
-- DEFINER function: like pgfn.abandon_run, it runs with its caller's rights.
create or replace function pgfn.abandon_lost_run(p_run_id bigint, p_error_code text, p_cause text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run record;
begin
  select r.event_id, r.attempt, coalesce(f.max_attempts, 1) as max_attempts,
    exists (
      select 1 from graphile_worker._private_jobs j
      where (j.id = r.job_id
             or j.key in ('pgfn:event:' || r.event_id, 'pgfn:wait:' || r.event_id)
             or j.key like 'pgfn:retry:' || r.event_id || ':%'
             or (j.key like 'pgfn:batch:%'
                 and exists (select 1 from json_array_elements_text(j.payload -> 'event_ids') x(id)
                             where x.id = r.event_id::text)))
        -- A job out of tries that nobody holds is never fetched again.
        and (j.locked_at is not null or j.attempts < j.max_attempts)
    ) as job_left,
    (select max(l.attempt) from pgfn.function_runs l
     where l.event_id = r.event_id and l.id > r.id) as later_attempt
  into v_run
  from pgfn.function_runs r
  left join pgfn.functions f on f.name = r.function_name
  where r.id = p_run_id and r.status = 'running';
  if not found then
    return false;
  end if;

  if v_run.job_left then
    return pgfn.abandon_run(p_run_id, p_error_code,
      p_cause || 'it was abandoned and its event runs again.', true);
  elsif v_run.later_attempt is not null then
    return pgfn.abandon_run(p_run_id, p_error_code,
      p_cause || format('it was abandoned; its event ran again as attempt %s.', v_run.later_attempt), true);
  elsif v_run.attempt < v_run.max_attempts then
    if not pgfn.abandon_run(p_run_id, p_error_code,
         p_cause || format('it was abandoned, and as no job was left to run its event, attempt %s runs it again.',
                           v_run.attempt + 1),
         true) then
      return false;
    end if;
    perform pgfn.add_retry_job(v_run.event_id, v_run.attempt + 1, clock_timestamp());
  else
    if not pgfn.abandon_run(p_run_id, p_error_code,
         p_cause || format('it was abandoned, and as it was the last attempt its function allows (max_attempts %s) and no job was left to run its event, the event is a dead letter.',
                           v_run.max_attempts),
         false) then
      return false;
    end if;
    perform pgfn.dead_letter(p_run_id);
  end if;
  return true;
end
$$;

comment on function pgfn.abandon_lost_run(bigint, text, text) is
  'Abandons a running attempt that nothing runs any more (p_error_code, message p_cause and what follows) and sees that its event is not stranded: a job that will run it, a later attempt, or else its next attempt (pgfn.add_retry_job) or, with none left, a dead letter (pgfn.dead_letter). Returns whether the attempt was running. pgfn.abandon_orphaned_runs and pgfn.reap_dead_daemons call it.';

-- As in 000015_job_contract.sql, the decision through pgfn.abandon_lost_run.
-- Signature unchanged, so create or replace keeps the owner and grants.
create or replace function pgfn.abandon_orphaned_runs(
  p_daemon_id text,
  p_live_worker_ids text[],
  p_min_age interval
) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer := 0;
  v_run_id bigint;
begin
  for v_run_id in
    select r.id
    from pgfn.function_runs r
    where r.worker_id = p_daemon_id and r.status = 'running' and r.job_id is not null
      and r.started_at < clock_timestamp() - p_min_age
      and not exists (
        select 1 from graphile_worker.jobs j
        where j.id = r.job_id and j.locked_by = any (p_live_worker_ids)
      )
    order by r.id
  loop
    if pgfn.abandon_lost_run(v_run_id, 'INTERNAL',
         format('This attempt on daemon %s was cut short while the database was unreachable; ', p_daemon_id)) then
      v_count := v_count + 1;
    end if;
  end loop;
  return v_count;
end
$$;

comment on function pgfn.abandon_orphaned_runs(text, text[], interval) is
  'Abandons the running attempts of a live daemon whose jobs none of its live graphile-worker ids hold any more (cut short by a database outage); an event no job will run any more gets its next attempt (pgfn.add_retry_job) or, with none left, a dead letter (pgfn.dead_letter). Returns how many attempts. The daemon calls it with its heartbeat.';

-- As in 000015_job_contract.sql, plus: an attempt with attempts left goes
-- through pgfn.abandon_lost_run, after the dead daemon's jobs were released,
-- so one whose job is gone gets a retry job; and each run's message says
-- what becomes of its event. Signature unchanged (owner and grants kept).
create or replace function pgfn.reap_dead_daemons(p_stale interval, p_unlocked_after interval default null)
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_daemon pgfn.daemons;
  v_count integer := 0;
  v_workers text[];
  v_run record;
  v_cause text;
begin
  for v_daemon in
    select * from pgfn.daemons d
    where d.heartbeat_at < now() - p_stale
       or (d.holds_lock and d.heartbeat_at < now() - p_unlocked_after)
    for update skip locked
  loop
    -- Free lock: no live session of the daemon holds it. The test lock is
    -- ours until this transaction ends, which is harmless: the daemon is gone.
    if v_daemon.heartbeat_at >= now() - p_stale
       and not pg_try_advisory_xact_lock(pgfn.daemon_lock_key(v_daemon.id)) then
      continue;
    end if;
    -- Its runners, and one it started but had not recorded yet, found by
    -- the job its running attempt holds; never the runner of another
    -- daemon that took that job since: releasing it would free every job
    -- that live daemon is running, for a second daemon to run again.
    select array_agg(distinct w) into v_workers from (
      select unnest(v_daemon.graphile_worker_ids) as w
      union
      select j.locked_by from graphile_worker.jobs j
      join pgfn.function_runs r on r.job_id = j.id
      where r.worker_id = v_daemon.id and r.status = 'running' and j.locked_by is not null
        and not exists (select 1 from pgfn.daemons o
                        where o.id <> v_daemon.id and j.locked_by = any (o.graphile_worker_ids))
    ) s;

    if v_workers is not null then
      -- Its jobs get back the try their fetch counted (pgfn.release_jobs): a
      -- daemon's death is not the jobs' fault, and pgfn counts the events'
      -- attempts itself.
      perform pgfn.release_jobs(v_workers);
      perform graphile_worker.force_unlock_workers(v_workers);
    end if;

    v_cause := format('The daemon %s running this attempt stopped heartbeating; ', v_daemon.id);
    for v_run in
      select r.id, r.attempt, r.job_id, coalesce(f.max_attempts, 1) as max_attempts
      from pgfn.function_runs r left join pgfn.functions f on f.name = r.function_name
      where r.worker_id = v_daemon.id and r.status = 'running'
      for update of r
    loop
      if v_run.job_id is null then
        -- A synchronous invoke has no job to run again: its caller saw it fail.
        perform pgfn.abandon_run(v_run.id, 'TIMEOUT',
          v_cause || 'it was abandoned, and as a synchronous invoke is not run again, the event is a dead letter.',
          false);
        perform pgfn.dead_letter(v_run.id);
      elsif v_run.attempt >= v_run.max_attempts then
        -- No attempt left. A one-event job is done; a batch job still has
        -- other events to run, and finds this one dead-lettered (pgfn.begin_run).
        perform pgfn.abandon_run(v_run.id, 'TIMEOUT',
          v_cause || format('it was abandoned, and as it was the last attempt its function allows (max_attempts %s), the event is a dead letter.',
                            v_run.max_attempts),
          false);
        perform graphile_worker.complete_jobs(array(
          select j.id from graphile_worker._private_jobs j
          where j.id = v_run.job_id and coalesce(j.key, '') not like 'pgfn:batch:%'));
        perform pgfn.dead_letter(v_run.id);
      else
        perform pgfn.abandon_lost_run(v_run.id, 'TIMEOUT', v_cause);
      end if;
    end loop;

    delete from pgfn.daemons where id = v_daemon.id;
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;

comment on function pgfn.reap_dead_daemons(interval, interval) is
  'Abandons the running runs of daemons silent for longer than p_stale, or whose liveness lock is free and who were silent for longer than p_unlocked_after, and releases their jobs. A run''s event runs again by its job, or by a retry job when its job is gone (pgfn.abandon_lost_run); it becomes a dead letter when the run was its last attempt or a synchronous invoke. Returns how many daemons were reaped. Daemons call it.';
