-- Failure handling: dead letters, replays, and the psql operations on them.

-- A replayed event points at the one it copies.
alter table pgfn.events add column if not exists replay_of bigint references pgfn.events (id) on delete set null;

-- Terminal failures awaiting a person. One row per event that ran out of
-- attempts (or could not be retried at all); resolved when retried.
create table if not exists pgfn.dead_letters (
  id bigint generated always as identity primary key,
  event_id bigint not null references pgfn.events (id) on delete cascade,
  function_name text not null,
  last_run_id bigint references pgfn.function_runs (id) on delete set null,
  error_code text not null,
  error_message text,
  created_at timestamptz not null default now(),
  resolved_at timestamptz,
  retried_event_id bigint references pgfn.events (id) on delete set null
);
create index if not exists dead_letters_open_idx on pgfn.dead_letters (function_name, created_at) where resolved_at is null;
create unique index if not exists dead_letters_event_open_idx on pgfn.dead_letters (event_id) where resolved_at is null;

-- Copies an event as a new one (attempts start again at 1) and wakes the
-- listener. Returns the new event's id. Works while no daemon runs: the
-- event waits in the outbox.
create or replace function pgfn.replay(p_event_id bigint) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  insert into pgfn.events (function_name, source, table_schema, table_name, operation, old, new, payload, replay_of)
  select function_name, source, table_schema, table_name, operation, old, new, payload, id
  from pgfn.events where id = p_event_id
  returning id into v_id;
  if v_id is null then
    raise exception 'pgfn.replay: there is no event %', p_event_id using errcode = 'no_data_found';
  end if;
  -- Whatever dead letter the original had is dealt with by this replay.
  update pgfn.dead_letters set resolved_at = now(), retried_event_id = v_id
  where event_id = p_event_id and resolved_at is null;
  -- The listener is woken by pgfn.wake, as for every new event.
  return v_id;
end
$$;

comment on function pgfn.replay(bigint) is
  'Runs an event again as a new event (attempt 1); resolves its dead letter. Returns the new event id.';

create or replace function pgfn.retry(p_run_id bigint) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event bigint;
begin
  select event_id into v_event from pgfn.function_runs where id = p_run_id;
  if v_event is null then
    raise exception 'pgfn.retry: there is no run %', p_run_id using errcode = 'no_data_found';
  end if;
  return pgfn.replay(v_event);
end
$$;

comment on function pgfn.retry(bigint) is
  'Runs the event of a run again (see pgfn.replay). Returns the new event id.';

create or replace function pgfn.retry_dead_letters(
  p_function_name text default null,
  p_since timestamptz default null
) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer := 0;
  v_event bigint;
begin
  for v_event in
    select event_id from pgfn.dead_letters
    where resolved_at is null
      and (p_function_name is null or function_name = p_function_name)
      and (p_since is null or created_at >= p_since)
    order by id
    for update skip locked
  loop
    perform pgfn.replay(v_event);
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;

comment on function pgfn.retry_dead_letters(text, timestamptz) is
  'Replays every open dead letter (of one function, since a time). Returns how many.';

create or replace function pgfn.invoke_async(p_name text, p_payload jsonb default '{}') returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  if p_name is null or p_name !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'invalid function name %: use ^[a-z][a-z0-9_-]{0,63}$', coalesce(quote_literal(p_name), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  insert into pgfn.events (function_name, source, payload) values (p_name, 'manual', p_payload)
  returning id into v_id;
  -- The listener is woken by pgfn.wake, as for every new event.
  return v_id;
end
$$;

comment on function pgfn.invoke_async(text, jsonb) is
  'Queues one run of a function with a payload. Returns the event id; the run appears in pgfn.function_runs.';

create or replace function pgfn.set_enabled(p_name text, p_enabled boolean) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  update pgfn.functions set enabled = p_enabled, updated_at = now() where name = p_name;
  if not found then
    raise exception 'there is no function %', quote_literal(p_name) using errcode = 'no_data_found';
  end if;
  return p_enabled;
end
$$;

create or replace function pgfn.enable(p_name text) returns boolean
language sql as $$ select pgfn.set_enabled(p_name, true) $$;
create or replace function pgfn.disable(p_name text) returns boolean
language sql as $$ select pgfn.set_enabled(p_name, false) $$;

comment on function pgfn.enable(text) is 'Enables a function; returns true. Events that failed while it was disabled are in pgfn.dead_letters.';
comment on function pgfn.disable(text) is 'Disables a function; returns false. Its events keep arriving and fail as FUNCTION_NOT_FOUND into dead letters.';

-- Deletes finished history: events older than the interval whose every run
-- has finished and that have no open dead letter (runs go with them).
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
      -- No job still to run it (pgfn:event:<id>, pgfn:wait:<id>, pgfn:retry:<id>:<n>).
      and not exists (select 1 from graphile_worker.jobs j
                      where j.key like 'pgfn:%' and split_part(j.key, ':', 3) = e.id::text)
  ), gone as (
    delete from pgfn.events e using doomed where e.id = doomed.id returning 1
  )
  select count(*) into v_count from gone;
  return v_count;
end
$$;

comment on function pgfn.prune(interval) is
  'Deletes events (and their runs) older than the interval that are finished and not dead-lettered. Returns how many events.';

-- Views for people.
create or replace view pgfn.failures as
select r.id as run_id, r.event_id, r.function_name, r.attempt, r.error_code, r.http_status,
       r.error_message, r.will_retry, r.next_attempt_at, r.started_at, r.finished_at,
       e.source, e.table_schema, e.table_name, e.operation,
       d.id as dead_letter_id, d.resolved_at
from pgfn.function_runs r
join pgfn.events e on e.id = r.event_id
left join pgfn.dead_letters d on d.last_run_id = r.id
where r.status in ('failed', 'abandoned')
order by r.id desc;

create or replace view pgfn.pending as
select e.id as event_id, e.function_name, e.source, e.created_at,
       case when e.dispatched_at is null then 'undispatched' else 'queued' end as state,
       now() - e.created_at as age
from pgfn.events e
where e.dispatched_at is null
   or (not exists (select 1 from pgfn.function_runs r where r.event_id = e.id))
order by e.id;

create or replace view pgfn.stats as
select r.function_name,
       count(*) as runs,
       count(*) filter (where r.status = 'succeeded') as succeeded,
       count(*) filter (where r.status <> 'succeeded' and r.status <> 'running') as failed,
       round(count(*) filter (where r.status in ('failed', 'abandoned'))::numeric / nullif(count(*), 0), 4) as error_rate,
       percentile_cont(0.5) within group (order by r.duration_ms) as p50_ms,
       percentile_cont(0.95) within group (order by r.duration_ms) as p95_ms
from pgfn.function_runs r
where r.started_at > now() - interval '1 hour'
group by r.function_name;

comment on view pgfn.stats is 'Per function, the last hour: runs, failures, error rate, p50 and p95 duration (ms).';
