-- Many events per job. A graphile-worker job used to carry one event, so
-- every event paid for a job's insert, fetch, lock and delete, and for its
-- own round trips to start and finish its attempt. Now dispatch gives each
-- function's newly committed events to jobs of up to p_batch events
-- ({"event_ids": [...]}, job_key 'pgfn:batch:<first id>'); the daemon starts
-- them in one call (pgfn.begin_runs) and records their successes together.
-- Failures stay per event: a failed event's retry is a job of its own
-- ('pgfn:retry:<id>:<n>'), never its batch again.
--
-- One-event jobs keep their old shape ({"event_id": n}, 'pgfn:event:<id>'):
-- a batch of one, the events of a function with ordering <> 'none' (each
-- waits for its turn on its own, see pgfn.begin_run), retries and waits.

-- The old one-argument dispatch and three-argument dispatch_awake would make
-- calls with the defaults below ambiguous.
drop function if exists pgfn.dispatch_awake(integer, integer, integer);
drop function if exists pgfn.dispatch_awake(integer, integer, integer, integer);
drop function if exists pgfn.dispatch(integer);

create or replace function pgfn.dispatch(p_limit integer default 500, p_batch integer default 50)
returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids bigint[];
  v_specs graphile_worker.job_spec[];
begin
  -- No wait for the WAL flush: a server crash can lose this transaction
  -- only as a whole, jobs and dispatched_at together, and its events are
  -- then dispatched again. Waiting cost each pass a disk flush.
  perform set_config('synchronous_commit', 'off', true);
  with claimed as (
    select e.id, e.function_name
    from pgfn.events e
    where e.dispatched_at is null
    order by e.id
    limit greatest(p_limit, 1)
    for update skip locked
  ), numbered as (
    select c.id, c.function_name, f.ordering, f.max_attempts,
           row_number() over (partition by c.function_name order by c.id) - 1 as n
    from claimed c
    left join pgfn.functions f on f.name = c.function_name
  ), jobs as (
    select array_agg(id order by id) as ids, min(function_name) as function_name,
           min(max_attempts) as max_attempts
    from numbered
    -- An ordered function's events go one per job: each waits for its turn.
    group by function_name,
             case when ordering in ('function', 'row') then id else n / greatest(p_batch, 1) end
  )
  select
    (select array_agg(id order by id) from claimed),
    array_agg(row(
      'pgfn_run',
      case when cardinality(j.ids) = 1 then json_build_object('event_id', j.ids[1])
           else json_build_object('event_ids', j.ids) end,
      -- No named queue: the order of an ordered function's events is kept
      -- by pgfn.start_run (sql/000012_ordering.sql), whatever runs the jobs;
      -- a named queue only delayed the next event while its lock was held.
      null,
      null,
      -- One event's job: the event's first attempt, and one more that only
      -- records its dead letter (000009). A batch's tries are not any one
      -- event's: a try that fails (the database went away mid-batch) fails
      -- them all, started or not, and a batch running out of tries would
      -- strand its events. Each event's attempts are counted by pgfn (the
      -- daemon dead-letters one past its max_attempts), so a batch gets
      -- graphile-worker's usual 25.
      case when cardinality(j.ids) = 1 then pgfn.job_max_attempts(j.max_attempts, 1) else 25 end,
      case when cardinality(j.ids) = 1 then 'pgfn:event:' || j.ids[1]
           else 'pgfn:batch:' || j.ids[1] end,
      null, null
    )::graphile_worker.job_spec order by j.ids[1])
  into v_ids, v_specs
  from jobs j;

  if v_ids is null then
    return 0;
  end if;

  perform graphile_worker.add_jobs(v_specs);
  update pgfn.events set dispatched_at = clock_timestamp() where id = any (v_ids);
  return cardinality(v_ids);
end
$$;

comment on function pgfn.dispatch(integer, integer) is
  'Turns up to p_limit undispatched events into graphile-worker jobs of up to p_batch events of one function, and returns how many events. The daemon calls it; calling it by hand is harmless.';

-- As in 000003_dispatch.sql, passing the batch size on, and holding back
-- while the workers are behind. Jobs are cut when events are dispatched: a
-- listener that dispatched every few milliseconds whatever happened cut a
-- steady stream into jobs of one or two events, and a worker that fell
-- behind then worked through a queue of tiny jobs, paying a job's costs
-- per event. So while p_max_ready jobs are waiting to be taken, dispatch
-- waits too: events gather in the outbox, and the next dispatch makes
-- fuller jobs of them. Holding back counts as finding work: the listener
-- stays awake and keeps polling.
create or replace function pgfn.dispatch_awake(
  p_limit integer, p_awake_ms integer, p_margin_ms integer, p_batch integer default 50,
  p_max_ready integer default null
)
returns table (dispatched integer, may_sleep boolean, held_back boolean)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_n integer := 0;
  v_busy boolean := false;
  v_until timestamptz;
begin
  if p_max_ready is not null then
    select count(*) >= p_max_ready into v_busy
    from (
      select 1 from graphile_worker._private_jobs j
      where j.is_available and j.run_at <= now()
        and j.task_id = (select t.id from graphile_worker._private_tasks t where t.identifier = 'pgfn_run')
      limit p_max_ready
    ) ready;
  end if;
  if not v_busy then
    v_n := pgfn.dispatch(p_limit, p_batch);
  end if;
  if v_n > 0 or v_busy then
    perform 1 from pgfn.listener_state for update skip locked;
    if found then
      update pgfn.listener_state set awake_until = clock_timestamp() + make_interval(secs => p_awake_ms / 1000.0);
    elsif not exists (select 1 from pgfn.listener_state) then
      insert into pgfn.listener_state (id) values (true) on conflict do nothing;
    end if;
  end if;
  select awake_until into v_until from pgfn.listener_state;
  return query select v_n,
    v_n = 0 and not v_busy
      and (v_until is null or clock_timestamp() > v_until + make_interval(secs => p_margin_ms / 1000.0)),
    v_busy;
end
$$;

-- pgfn.begin_run for each of a job's events, in event order, in one round
-- trip. Rows for events that no longer exist are left out.
create or replace function pgfn.begin_runs(p_event_ids bigint[], p_worker_id text, p_job_id bigint)
returns table (
  event_id bigint, event jsonb, fn jsonb, done_run_id bigint,
  run_id bigint, attempt integer, probe boolean, refused text, retry_at timestamptz
)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  for v_id in select distinct u.id from unnest(p_event_ids) u(id) where u.id is not null order by 1 loop
    return query select v_id, b.* from pgfn.begin_run(v_id, p_worker_id, p_job_id) b;
  end loop;
end
$$;

comment on function pgfn.begin_runs(bigint[], text, bigint) is
  'pgfn.begin_run for each of the events, in event order, in one call. The daemon calls it.';

-- A daemon killed outright is known dead at once, not only after its
-- heartbeat went stale for PGFN_DEAD_AFTER_MS: each daemon holds a session
-- advisory lock (pgfn.daemon_lock_key) on a connection of its own, which
-- the server releases the moment the process's connections close. A daemon
-- that says it holds the lock (holds_lock), whose lock is free and whose
-- heartbeat is older than p_unlocked_after (a couple of beats: a live daemon
-- whose lock connection dropped takes the lock again at its next beat) is
-- reaped.
alter table pgfn.daemons add column if not exists holds_lock boolean not null default false;

create or replace function pgfn.daemon_lock_key(p_daemon_id text) returns bigint
language sql immutable
set search_path = pg_catalog, pg_temp
as $$ select hashtextextended('pgfn:daemon:' || p_daemon_id, 0) $$;

comment on function pgfn.daemon_lock_key(text) is
  'The session advisory lock a live daemon holds while it runs. The daemon takes it; the reaper tests it.';

-- As in 000005_daemons.sql, plus the lock test above; and an attempt with
-- none left no longer completes its job when that job carries other events
-- too: they still have to run. The job runs again instead, and finds this
-- event in the dead letters (pgfn.begin_run: done).
drop function if exists pgfn.reap_dead_daemons(interval);
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
  v_message text;
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
      select r.id, r.event_id, r.function_name, r.attempt, r.job_id, coalesce(f.max_attempts, 1) as max_attempts
      from pgfn.function_runs r left join pgfn.functions f on f.name = r.function_name
      where r.worker_id = v_daemon.id and r.status = 'running'
      for update of r
    loop
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
        if v_run.job_id is not null then
          perform graphile_worker.complete_jobs(array(
            select j.id from graphile_worker._private_jobs j
            where j.id = v_run.job_id and coalesce(j.key, '') not like 'pgfn:batch:%'));
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

-- A replay's pointer to the event it copies is no foreign key any more:
-- Postgres queues a referential-integrity check for every inserted event,
-- replay or not (measured: 15-30 us of each trigger-made event's insert).
-- Prune (below) clears the pointers to the events it deletes, which is what
-- the key's `on delete set null` did.
alter table pgfn.events drop constraint if exists events_replay_of_fkey;

-- As in 000004_failures.sql, except that a batch job's events are found in
-- its payload, not its key, and that replays of deleted events forget them.
create or replace function pgfn.prune(p_older_than interval) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer;
begin
  if p_older_than is null or p_older_than < interval '0' then
    raise exception 'pgfn.prune needs a positive interval, e.g. pgfn.prune(''30 days'')'
      using errcode = 'invalid_parameter_value';
  end if;
  with doomed as (
    select e.id from pgfn.events e
    where e.created_at < now() - p_older_than
      and e.dispatched_at is not null
      and exists (select 1 from pgfn.function_runs r where r.event_id = e.id)
      and not exists (select 1 from pgfn.function_runs r where r.event_id = e.id and r.status = 'running')
      and not exists (select 1 from pgfn.dead_letters d where d.event_id = e.id and d.resolved_at is null)
  ), waiting as (
    -- Every event a job still has to run: one-event jobs by key
    -- (pgfn:event:<id>, pgfn:wait:<id>, pgfn:retry:<id>:<n>), batches
    -- (pgfn:batch:<first id>) by payload.
    select split_part(j.key, ':', 3)::bigint as id
    from graphile_worker._private_jobs j
    where j.key ~ '^pgfn:(event|wait|retry):[0-9]+(:|$)'
    union
    select jsonb_array_elements_text(j.payload::jsonb -> 'event_ids')::bigint
    from graphile_worker._private_jobs j
    where j.key like 'pgfn:batch:%'
  ), gone as (
    delete from pgfn.events e using doomed
    where e.id = doomed.id and not exists (select 1 from waiting w where w.id = e.id)
    returning e.id
  ), forgotten as (
    -- Not a row deleted here: one statement must not change a row twice.
    update pgfn.events e set replay_of = null
    where e.replay_of in (select id from gone) and e.id not in (select id from gone)
  )
  select count(*) into v_count from gone;
  return v_count;
end
$$;

comment on function pgfn.reap_dead_daemons(interval, interval) is
  'Abandons the running runs of daemons silent for longer than p_stale, or whose liveness lock is free and who were silent for longer than p_unlocked_after; releases their jobs for retry (or dead-letters them past max_attempts). Returns how many daemons were reaped. Daemons call it.';

-- As in 000006_admission.sql, plus: an event that another job will run (its
-- 'pgfn:wait:<id>' job, made when it was deferred, or a job running an
-- attempt of it now) is not started by this one. A batch job that runs
-- again (its daemon died, a try failed) would otherwise start an event it
-- had deferred, while the wait job starts it too. refused = 'DEFERRED' says
-- so; nothing is recorded.
create or replace function pgfn.begin_run(p_event_id bigint, p_worker_id text, p_job_id bigint)
returns table (
  event jsonb, fn jsonb, done_run_id bigint,
  run_id bigint, attempt integer, probe boolean, refused text, retry_at timestamptz
)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event pgfn.events;
  v_fn pgfn.function_info;
  v_done bigint;
begin
  select * into v_event from pgfn.events e where e.id = p_event_id;
  if not found then
    return;
  end if;
  select * into v_fn from pgfn.function_info f where f.name = v_event.function_name;
  select r.id into v_done from pgfn.function_runs r
  where r.event_id = p_event_id
    and (r.status = 'succeeded' or (r.status = 'failed' and r.job_id = p_job_id))
  limit 1;
  if v_done is null then
    select d.last_run_id into v_done from pgfn.dead_letters d
    where d.event_id = p_event_id and d.resolved_at is null;
  end if;
  if v_done is not null then
    return query select to_jsonb(v_event), case when v_fn.name is not null then to_jsonb(v_fn) end, v_done,
      null::bigint, null::integer, false, null::text, null::timestamptz;
    return;
  end if;
  if p_job_id is not null and (
    -- Its wait job, still to be fetched. One already fetched either runs
    -- it (below) or has finished with it: a retry it scheduled may then
    -- start while it is completed.
    exists (select 1 from graphile_worker._private_jobs j
            where j.key = 'pgfn:wait:' || p_event_id and j.id <> p_job_id and j.locked_at is null)
    -- An attempt another job runs now.
    or exists (select 1 from pgfn.function_runs r
               where r.event_id = p_event_id and r.status = 'running'
                 and r.job_id is not null and r.job_id <> p_job_id)
  ) then
    return query select to_jsonb(v_event), case when v_fn.name is not null then to_jsonb(v_fn) end, null::bigint,
      null::bigint, null::integer, false, 'DEFERRED'::text, null::timestamptz;
    return;
  end if;
  return query
    select to_jsonb(v_event), case when v_fn.name is not null then to_jsonb(v_fn) end, null::bigint,
           s.id, s.attempt, s.probe, s.refused, s.retry_at
    from pgfn.start_run(p_event_id, v_event.function_name, v_fn.wasm_sha256, p_worker_id, p_job_id,
                        case when v_fn.enabled then v_fn.max_concurrency end) s;
end
$$;
