-- Every dead letter goes to its function's on_error, whatever made it.
-- Until now the daemon added the error handler's event itself, after
-- recording a failure, and nothing else did: an event whose last attempt
-- died with its daemon was dead-lettered by the reaper
-- (pgfn.reap_dead_daemons) and never reported, though that is the
-- watchdog's very case (a handler that kills its daemon). Now the dead
-- letter and the error handler's event are one statement's work
-- (pgfn.dead_letter), so no path can write one without the other, and a
-- crash between them is not possible.
--
-- The error handler's event holds the run and its error as pgfn.dead_letter
-- found them, and names the event that failed by id: {"event": {"id": 42},
-- "run": {...}, "error": {...}}. The daemon gives the handler that event
-- as its own handler received it (src/worker/eventInput.ts, the one place
-- that shapes an event), so the shape is not written twice, in SQL and in
-- TypeScript. Events written before this migration hold it whole already.

-- As in 000015_job_contract.sql, plus the error handler's event. Only a new
-- dead letter adds one: when the event has an open dead letter already (two
-- outcomes raced, see 000015), that letter was reported when it was made,
-- and following a later run changes what it says, not how many there are.
-- Never for an error handler's own event (nor a replay of one: replays keep
-- the source), so error handlers cannot loop, even one that handles itself.
create or replace function pgfn.dead_letter(p_run_id bigint) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  -- Insert first, then follow: whether this call made the letter decides
  -- the error handler's event. A concurrent call for the same event waits
  -- for this one's commit here, then finds the letter below.
  insert into pgfn.dead_letters (event_id, function_name, last_run_id, error_code, error_message)
  select r.event_id, r.function_name, r.id, coalesce(r.error_code, 'INTERNAL'), r.error_message
  from pgfn.function_runs r where r.id = p_run_id
  on conflict (event_id) where resolved_at is null do nothing
  returning id into v_id;
  if v_id is not null then
    insert into pgfn.events (function_name, source, payload)
    select f.on_error, 'error_handler', jsonb_build_object(
      'event', jsonb_build_object('id', e.id),
      'run', jsonb_build_object(
        'id', r.id, 'attempt', r.attempt, 'status', r.status,
        'error_code', r.error_code, 'http_status', r.http_status,
        'error_message', r.error_message, 'duration_ms', r.duration_ms),
      'error', jsonb_build_object('code', r.error_code, 'message', r.error_message))
    from pgfn.function_runs r
    join pgfn.events e on e.id = r.event_id
    join pgfn.functions f on f.name = r.function_name
    where r.id = p_run_id and f.on_error is not null and e.source <> 'error_handler';
    return v_id;
  end if;
  update pgfn.dead_letters d
  set last_run_id = r.id, error_code = coalesce(r.error_code, 'INTERNAL'), error_message = r.error_message
  from pgfn.function_runs r
  where r.id = p_run_id and d.event_id = r.event_id and d.resolved_at is null
    and (d.last_run_id is null or d.last_run_id <= r.id)
  returning d.id into v_id;
  if v_id is null and not exists (select 1 from pgfn.function_runs r where r.id = p_run_id) then
    raise exception 'pgfn.dead_letter: there is no run %', p_run_id using errcode = 'no_data_found';
  end if;
  return v_id;
end
$$;

comment on function pgfn.dead_letter(bigint) is
  'Records the event of a run in the dead letters with the run''s error and, for a new dead letter, adds the event of the function''s on_error handler (never for an error handler''s own event); an open dead letter of the event follows its latest run. Returns the dead letter''s id (null when a later run''s is kept). The daemon and the reaper call it.';

-- As in 000014_named_api.sql, plus: an event stays while an error handler's
-- event names it, which the error handler (or a replay of it) is given
-- when it runs. The error handler's event is the younger, so it goes first
-- and the event it names at the next prune.
create or replace function pgfn.prune(older_than interval) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer;
begin
  if prune.older_than is null or prune.older_than < interval '0' then
    raise exception 'pgfn.prune needs a positive interval, e.g. pgfn.prune(''30 days'')'
      using errcode = 'invalid_parameter_value';
  end if;
  with doomed as (
    select e.id from pgfn.events e
    where e.created_at < now() - prune.older_than
      and e.dispatched_at is not null
      and exists (select 1 from pgfn.function_runs r where r.event_id = e.id)
      and not exists (select 1 from pgfn.function_runs r where r.event_id = e.id and r.status = 'running')
      and not exists (select 1 from pgfn.dead_letters d where d.event_id = e.id and d.resolved_at is null)
      and not exists (select 1 from pgfn.events h
                      where h.source = 'error_handler' and h.payload -> 'event' -> 'id' = to_jsonb(e.id))
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

comment on function pgfn.prune(interval) is
  'pgfn.prune(older_than): deletes events (and their runs) older than the interval that are finished, not dead-lettered, not named by an error handler''s event and not waiting for a job. Returns how many events.';
