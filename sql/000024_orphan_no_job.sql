-- An orphaned attempt whose job is gone no longer strands its event.
-- pgfn.abandon_orphaned_runs (000015) ended such an attempt with
-- will_retry = false and did nothing else: no job ran the event again, no
-- dead letter reported it, and its run said "its event runs again". For a
-- function with ordering, will_retry = false also made the event finished
-- (pgfn.event_finished), so the events behind it were let go while a job
-- might still run it. The job goes while the attempt stays `running` when:
-- * the job ran again and completed without starting the event: an ordered
--   function's turn, or max_concurrency, is held by the orphaned attempt
--   itself, so the job found the event refused, left it a wait job
--   (pgfn:wait:<id>) and completed; or another daemon ran the event as its
--   next attempt;
-- * graphile-worker will never run the job again: its tries ran out, or a
--   person removed it (graphile_worker.remove_job sets a locked job's tries
--   to its max_attempts) or completed or deleted it.
-- Now, in that order:
-- 1. a job will still run the event (the attempt's own, or one of the
--    event's jobs by key, or a batch holding it; locked now, or with tries
--    left): will_retry = true, as before when the attempt's job existed;
-- 2. a later attempt of the event exists: it decides the event's fate;
--    will_retry = true, as pgfn.abandon_earlier_runs says of such an attempt;
-- 3. the function allows another attempt (the reaper's rule: attempt <
--    max_attempts, a missing function allowing 1): will_retry = true, and a
--    retry job of its own (pgfn.add_retry_job) starts the next attempt now;
--    an ordered function keeps the event's place, since it is not finished;
-- 4. otherwise the event is a dead letter (pgfn.dead_letter, which reports
--    it to on_error).
-- Each run's message says which. Synchronous invokes (no job) are still
-- never touched. Signature unchanged, so create or replace keeps the owner
-- and grants; not a SECURITY DEFINER function, search_path pinned as before.
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
  v_run record;
  v_cut text := format('This attempt on daemon %s was cut short while the database was unreachable; ', p_daemon_id);
begin
  for v_run in
    select r.id, r.event_id, r.attempt, coalesce(f.max_attempts, 1) as max_attempts,
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
    from pgfn.function_runs r
    left join pgfn.functions f on f.name = r.function_name
    where r.worker_id = p_daemon_id and r.status = 'running' and r.job_id is not null
      and r.started_at < clock_timestamp() - p_min_age
      and not exists (
        select 1 from graphile_worker.jobs j
        where j.id = r.job_id and j.locked_by = any (p_live_worker_ids)
      )
    order by r.id
  loop
    -- Only the call that ended the attempt acts on it: an outcome recorded
    -- meanwhile, or another sweep, has decided already.
    if v_run.job_left then
      continue when not pgfn.abandon_run(v_run.id, 'INTERNAL',
        v_cut || 'it was abandoned and its event runs again.', true);
    elsif v_run.later_attempt is not null then
      continue when not pgfn.abandon_run(v_run.id, 'INTERNAL',
        v_cut || format('it was abandoned; its event ran again as attempt %s.', v_run.later_attempt), true);
    elsif v_run.attempt < v_run.max_attempts then
      continue when not pgfn.abandon_run(v_run.id, 'INTERNAL',
        v_cut || format('it was abandoned, and as no job was left to run its event, attempt %s runs it again.',
                        v_run.attempt + 1),
        true);
      perform pgfn.add_retry_job(v_run.event_id, v_run.attempt + 1, clock_timestamp());
    else
      continue when not pgfn.abandon_run(v_run.id, 'INTERNAL',
        v_cut || format('it was abandoned, and as it was the last attempt its function allows (max_attempts %s) and no job was left to run its event, the event is a dead letter.',
                        v_run.max_attempts),
        false);
      perform pgfn.dead_letter(v_run.id);
    end if;
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;

comment on function pgfn.abandon_orphaned_runs(text, text[], interval) is
  'Abandons the running attempts of a live daemon whose jobs none of its live graphile-worker ids hold any more (cut short by a database outage); an event no job will run any more gets its next attempt (pgfn.add_retry_job) or, with none left, a dead letter (pgfn.dead_letter). Returns how many attempts. The daemon calls it with its heartbeat.';
