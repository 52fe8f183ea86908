-- The job contract, with one owner per rule. Until now the daemon
-- (TypeScript) and these migrations each wrote their own share of it: the
-- daemon added the retry's and the wait's jobs (task and keys written out
-- in TypeScript), four statements in two languages abandoned an attempt,
-- and two wrote a dead letter, with different rules for an event that had
-- one open already (the reaper kept the old one, the daemon overwrote it).
-- From here on the functions below own those rules, and the daemon calls
-- them.
--
-- The jobs pgfn makes, all for the task 'pgfn_run' (the daemon registers
-- its handler under that name, src/worker/tasks.ts; a test checks that
-- they agree):
--   pgfn:event:<id>          an event's first attempt (pgfn.dispatch)
--   pgfn:batch:<first id>    first attempts of a function's events (pgfn.dispatch)
--   pgfn:retry:<id>:<n>      attempt n, after a failure (pgfn.add_retry_job)
--   pgfn:wait:<id>           an attempt that may not start yet (pgfn.add_wait_job)
-- (the last two through pgfn.add_event_job).
-- pgfn.begin_run, pgfn.ordered_wake and pgfn.prune read these keys.

-- The one-event job that starts attempt p_attempt of an event at p_run_at,
-- under p_key. graphile-worker may try it as often as the event has
-- attempts left, plus one (pgfn.job_max_attempts, 000009). A second add
-- under the same key updates the job instead of adding another.
create or replace function pgfn.add_event_job(p_event_id bigint, p_key text, p_run_at timestamptz, p_attempt integer)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  perform graphile_worker.add_job(
    'pgfn_run',
    json_build_object('event_id', p_event_id),
    run_at => p_run_at,
    max_attempts => pgfn.job_max_attempts(
      (select f.max_attempts from pgfn.events e join pgfn.functions f on f.name = e.function_name
       where e.id = p_event_id),
      p_attempt),
    job_key => p_key);
end
$$;

comment on function pgfn.add_event_job(bigint, text, timestamptz, integer) is
  'Adds (or moves) the pgfn_run job that starts attempt p_attempt of an event at p_run_at, under the key p_key. pgfn.add_retry_job and pgfn.add_wait_job call it.';

-- Attempt p_attempt of an event, at p_run_at, after attempt p_attempt - 1
-- failed and may be retried. An outcome recorded twice moves the one job.
create or replace function pgfn.add_retry_job(p_event_id bigint, p_attempt integer, p_run_at timestamptz)
returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgfn.add_event_job(p_event_id, 'pgfn:retry:' || p_event_id || ':' || p_attempt, p_run_at, p_attempt)
$$;

comment on function pgfn.add_retry_job(bigint, integer, timestamptz) is
  'Adds the job that runs attempt p_attempt of an event at p_run_at (key pgfn:retry:<event>:<attempt>). The daemon calls it when it records a failure that is retried.';

-- An event whose attempt may not start now (its function's circuit is open,
-- it is at max_concurrency, or an earlier event of an ordered function goes
-- first) runs again in p_delay_ms, as a job of its own; the job that found
-- it waiting completes. Nothing is recorded: the event did not run. A
-- second wait for the same event moves the one job (pgfn.begin_run leaves
-- an event to its wait job).
create or replace function pgfn.add_wait_job(p_event_id bigint, p_delay_ms double precision)
returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgfn.add_event_job(
    p_event_id, 'pgfn:wait:' || p_event_id,
    clock_timestamp() + make_interval(secs => p_delay_ms / 1000.0),
    (select count(*)::integer + 1 from pgfn.function_runs r where r.event_id = p_event_id))
$$;

comment on function pgfn.add_wait_job(bigint, double precision) is
  'Adds the job that tries an event again in p_delay_ms, because its attempt could not start now (key pgfn:wait:<event>). The daemon calls it.';

-- The event of a run goes to the dead letters, with the run's error.
--
-- One open dead letter per event (dead_letters_event_open_idx). When the
-- event has one already, two outcomes raced: a daemon that stalled past
-- PGFN_DEAD_AFTER_MS was reaped (its attempt abandoned, the event
-- dead-lettered as TIMEOUT) and then recorded the attempt's real outcome,
-- or a late outcome of an earlier attempt arrived after a later one. The
-- dead letter then follows the event's latest run, and that run's latest
-- word: a run with a smaller id than the one it points at changes nothing,
-- the same run or a later one replaces its error, so that a dead letter
-- always says what its last_run_id says. created_at stays: it is when the
-- event became a dead letter (pgfn.retry_dead_letters' since).
create or replace function pgfn.dead_letter(p_run_id bigint) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  insert into pgfn.dead_letters as d (event_id, function_name, last_run_id, error_code, error_message)
  select r.event_id, r.function_name, r.id, coalesce(r.error_code, 'INTERNAL'), r.error_message
  from pgfn.function_runs r where r.id = p_run_id
  on conflict (event_id) where resolved_at is null do update
    set last_run_id = excluded.last_run_id, error_code = excluded.error_code,
        error_message = excluded.error_message
    where d.last_run_id is null or d.last_run_id <= excluded.last_run_id
  returning d.id into v_id;
  if v_id is null and not exists (select 1 from pgfn.function_runs r where r.id = p_run_id) then
    raise exception 'pgfn.dead_letter: there is no run %', p_run_id using errcode = 'no_data_found';
  end if;
  return v_id;
end
$$;

comment on function pgfn.dead_letter(bigint) is
  'Records the event of a run in the dead letters with the run''s error; an open dead letter of the event follows its latest run. Returns the dead letter''s id (null when a later run''s is kept). The daemon and the reaper call it.';

-- Ends an attempt that nothing runs any more (its daemon died, or pgfn lost
-- track of it when the database went away): TIMEOUT when its daemon
-- stopped heartbeating under it, as a handler that never returns would;
-- INTERNAL when pgfn itself could not finish it. Only a `running` attempt
-- is touched, so an outcome recorded meanwhile stands. p_will_retry says
-- whether a job runs the event again; it is free to do so from now.
-- Returns whether the attempt was running.
create or replace function pgfn.abandon_run(
  p_run_id bigint, p_error_code text, p_message text, p_will_retry boolean
) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_error_code is null or p_error_code not in ('TIMEOUT', 'INTERNAL') then
    raise exception 'pgfn.abandon_run: an abandoned attempt is TIMEOUT or INTERNAL, not %',
      coalesce(p_error_code, 'null') using errcode = 'invalid_parameter_value';
  end if;
  update pgfn.function_runs
  set status = 'abandoned', error_code = p_error_code,
      http_status = case p_error_code when 'TIMEOUT' then 504 else 500 end,
      error_message = p_message,
      finished_at = clock_timestamp(),
      duration_ms = extract(epoch from clock_timestamp() - started_at) * 1000,
      will_retry = p_will_retry,
      next_attempt_at = case when p_will_retry then clock_timestamp() end
  where id = p_run_id and status = 'running';
  return found;
end
$$;

comment on function pgfn.abandon_run(bigint, text, text, boolean) is
  'Ends a running attempt that nothing runs any more as abandoned (TIMEOUT or INTERNAL). Returns whether it was running. The daemon and the reaper call it.';

-- A daemon leaves an attempt `running` when the database refused to record
-- its outcome, failure included, and then the job runs again. Two ways find
-- such an attempt, for two cases, and both end it with pgfn.abandon_run:
-- * the job runs again on the same daemon: the next attempt ends the
--   earlier ones as it starts (this function). The job is locked by the
--   daemon's live runner again, so the orphan sweep below cannot tell the
--   earlier attempt from a live one; left to it, the attempt would hold a
--   max_concurrency slot, and an ordered function's turn, until the job
--   completed.
-- * the job went back to graphile-worker, or is gone: the daemon's
--   heartbeat finds the attempt (pgfn.abandon_orphaned_runs).
-- Another daemon's attempts are not touched: the reaper ends those if it died.
create or replace function pgfn.abandon_earlier_runs(p_run_id bigint) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer := 0;
  v_id bigint;
begin
  for v_id in
    select r.id from pgfn.function_runs r
    join pgfn.function_runs this on this.id = p_run_id
    where r.event_id = this.event_id and r.id < this.id
      and r.status = 'running' and r.worker_id = this.worker_id
    order by r.id
  loop
    if pgfn.abandon_run(v_id, 'INTERNAL',
         'pgfn could not record the outcome of this attempt (the database refused it); the next attempt ended it.',
         true) then
      v_count := v_count + 1;
    end if;
  end loop;
  return v_count;
end
$$;

comment on function pgfn.abandon_earlier_runs(bigint) is
  'Abandons the attempts of a run''s event that its daemon left running before it (their outcome could not be recorded). Returns how many. The daemon calls it when a job starts a later attempt.';

-- As in 000010_worker_restart.sql, through pgfn.abandon_run.
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
begin
  for v_run in
    select r.id, exists (select 1 from graphile_worker.jobs j where j.id = r.job_id) as has_job
    from pgfn.function_runs r
    where r.worker_id = p_daemon_id and r.status = 'running' and r.job_id is not null
      and r.started_at < clock_timestamp() - p_min_age
      and not exists (
        select 1 from graphile_worker.jobs j
        where j.id = r.job_id and j.locked_by = any (p_live_worker_ids)
      )
    order by r.id
  loop
    if pgfn.abandon_run(v_run.id, 'INTERNAL',
         format('This attempt on daemon %s was cut short while the database was unreachable; it was abandoned and its event runs again.', p_daemon_id),
         v_run.has_job) then
      v_count := v_count + 1;
    end if;
  end loop;
  return v_count;
end
$$;

-- As in 000011_batch_jobs.sql, through pgfn.abandon_run and pgfn.dead_letter.
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
  v_retry boolean;
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
    select array_agg(distinct w) into v_workers from (
      select unnest(v_daemon.graphile_worker_ids) as w
      union
      select j.locked_by from graphile_worker.jobs j
      join pgfn.function_runs r on r.job_id = j.id
      where r.worker_id = v_daemon.id and r.status = 'running' and j.locked_by is not null
    ) s;

    if v_workers is not null then
      -- Its jobs get back the try their fetch counted (pgfn.release_jobs): a
      -- daemon's death is not the jobs' fault, and pgfn counts the events'
      -- attempts itself.
      perform pgfn.release_jobs(v_workers);
      perform graphile_worker.force_unlock_workers(v_workers);
    end if;

    for v_run in
      select r.id, r.attempt, r.job_id, coalesce(f.max_attempts, 1) as max_attempts
      from pgfn.function_runs r left join pgfn.functions f on f.name = r.function_name
      where r.worker_id = v_daemon.id and r.status = 'running'
      for update of r
    loop
      -- A synchronous invoke has no job to run again: its caller saw it fail.
      v_retry := v_run.attempt < v_run.max_attempts and v_run.job_id is not null;
      perform pgfn.abandon_run(v_run.id, 'TIMEOUT',
        format('The daemon %s running this attempt stopped heartbeating; the attempt was abandoned.', v_daemon.id),
        v_retry);
      if not v_retry then
        -- No attempt left. A one-event job is done; a batch job still has
        -- other events to run, and finds this one dead-lettered (pgfn.begin_run).
        if v_run.job_id is not null then
          perform graphile_worker.complete_jobs(array(
            select j.id from graphile_worker._private_jobs j
            where j.id = v_run.job_id and coalesce(j.key, '') not like 'pgfn:batch:%'));
        end if;
        perform pgfn.dead_letter(v_run.id);
      end if;
    end loop;

    delete from pgfn.daemons where id = v_daemon.id;
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;
