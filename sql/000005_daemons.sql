-- Live daemons and what happens when one dies. Every daemon heartbeats; a
-- live one reaps the dead: their runs become `abandoned`, their
-- graphile-worker jobs are unlocked at once (not after graphile-worker's
-- 4-hour lock expiry) so another daemon runs the event again, or, past
-- max_attempts, the event goes to the dead letters.
create table if not exists pgfn.daemons (
  id text primary key,
  hostname text,
  pid integer,
  started_at timestamptz not null default now(),
  heartbeat_at timestamptz not null default now(),
  -- graphile-worker's ids for this daemon's workers (jobs.locked_by).
  graphile_worker_ids text[] not null default '{}'
);

create or replace function pgfn.reap_dead_daemons(p_stale interval) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_daemon pgfn.daemons;
  v_count integer := 0;
  v_workers text[];
  v_run record;
  v_retry boolean;
  v_message text;
begin
  for v_daemon in
    select * from pgfn.daemons where heartbeat_at < now() - p_stale
    for update skip locked
  loop
    -- The workers that held jobs for it: the ones it registered, and the
    -- lockers of the jobs its running runs came from.
    select array_agg(distinct w) into v_workers from (
      select unnest(v_daemon.graphile_worker_ids) as w
      union
      select j.locked_by from graphile_worker.jobs j
      join pgfn.function_runs r on r.job_id = j.id
      where r.worker_id = v_daemon.id and r.status = 'running' and j.locked_by is not null
    ) s;

    -- Unlocked first: complete_jobs only removes unlocked jobs. Nobody sees
    -- them unlocked before this transaction commits.
    if v_workers is not null then
      perform graphile_worker.force_unlock_workers(v_workers);
    end if;

    for v_run in
      select r.id, r.event_id, r.function_name, r.attempt, r.job_id, coalesce(f.max_attempts, 1) as max_attempts
      from pgfn.function_runs r left join pgfn.functions f on f.name = r.function_name
      where r.worker_id = v_daemon.id and r.status = 'running'
      for update of r
    loop
      -- A synchronous invoke has no job to run again: its caller saw it fail.
      v_retry := v_run.attempt < v_run.max_attempts and v_run.job_id is not null;
      v_message := format('The daemon %s running this attempt stopped heartbeating; the attempt was abandoned.', v_daemon.id);
      update pgfn.function_runs
      set status = 'abandoned', error_code = 'TIMEOUT', http_status = 504, error_message = v_message,
          finished_at = clock_timestamp(),
          duration_ms = extract(epoch from clock_timestamp() - started_at) * 1000,
          will_retry = v_retry,
          next_attempt_at = case when v_retry then clock_timestamp() end
      where id = v_run.id;
      if not v_retry then
        -- No attempt left: the job is done; the event goes to the dead letters.
        if v_run.job_id is not null then
          perform graphile_worker.complete_jobs(array[v_run.job_id]);
        end if;
        insert into pgfn.dead_letters (event_id, function_name, last_run_id, error_code, error_message)
        values (v_run.event_id, v_run.function_name, v_run.id, 'TIMEOUT', v_message)
        on conflict (event_id) where resolved_at is null do nothing;
      end if;
    end loop;

    delete from pgfn.daemons where id = v_daemon.id;
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;

comment on function pgfn.reap_dead_daemons(interval) is
  'Abandons the running runs of daemons silent for longer than the interval, releases their jobs for retry (or dead-letters them past max_attempts). Returns how many daemons were reaped. Daemons call it.';
