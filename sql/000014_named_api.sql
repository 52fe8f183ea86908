-- The SQL API in named notation: every function the README documents for
-- people takes the argument names the README shows, so
--   select pgfn.schedule('tick', '* * * * *', catch_up => 'all');
-- works, and `\df pgfn.*` reads like the documentation. Until now the
-- parameters were called p_name, p_catch_up, ... and only positional calls
-- worked. Positional calls are unchanged: same argument types, same order,
-- same defaults.
--
-- Postgres cannot rename a parameter with CREATE OR REPLACE, so each function
-- is dropped and created again, with the body it had after 000013 (only the
-- parameter references change). Nothing in the catalog depends on these
-- functions (no view, default or trigger calls them; PL/pgSQL callers such as
-- pgfn.attach -> pgfn.detach and pgfn.retry -> pgfn.replay look them up at
-- run time). Whatever EXECUTE grants and owner an installation gave them are
-- put back at the end of this file.
--
-- Inside the bodies a parameter is always written qualified by its function
-- (schedule.name, replay.event_id): several are also column names (name,
-- event_id, function_name, cron, ...), and PL/pgSQL's default
-- variable_conflict = error would refuse an unqualified one in a query that
-- reads such a column. Columns in those queries are qualified too.
--
-- TABLE is a reserved word, so attach's and detach's first argument is
-- "table": positionally nothing changes; by name it is written
-- pgfn.attach("table" => 'public.users', function => 'fn').
--
-- The internal functions the daemon calls (begin_run, dispatch, reap_*, ...)
-- keep their p_ names: they are not an API for people.

-- Grants and owners as they are now, to restore after the re-creation
-- (default privileges, the usual case, have a null proacl and need nothing).
create temporary table pgfn_named_api_acl on commit drop as
select p.oid::regprocedure::text as signature, p.proacl, p.proowner
from pg_proc p
where p.pronamespace = 'pgfn'::regnamespace
  and p.oid in (
    'pgfn.attach(regclass, text, text[])'::regprocedure,
    'pgfn.detach(regclass, text)'::regprocedure,
    'pgfn.enable(text)'::regprocedure,
    'pgfn.disable(text)'::regprocedure,
    'pgfn.invoke_async(text, jsonb)'::regprocedure,
    'pgfn.replay(bigint)'::regprocedure,
    'pgfn.retry(bigint)'::regprocedure,
    'pgfn.retry_dead_letters(text, timestamptz)'::regprocedure,
    'pgfn.schedule(text, text, text, text)'::regprocedure,
    'pgfn.unschedule(text)'::regprocedure,
    'pgfn.prune(interval)'::regprocedure,
    'pgfn.close_circuit(text)'::regprocedure
  );

-- Triggers -------------------------------------------------------------------

drop function if exists pgfn.attach(regclass, text, text[]);
create function pgfn.attach(
  "table" regclass,
  function text,
  operations text[] default array['INSERT', 'UPDATE', 'DELETE']
) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ops text[];
  v_bad text;
  v_op text;
  v_trigger text;
  v_per_statement boolean := pgfn.statement_triggers_fit(attach."table");
  v_missing text;
begin
  if attach.function is null or attach.function !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'invalid function name %: use ^[a-z][a-z0-9_-]{0,63}$', coalesce(quote_literal(attach.function), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  select array_agg(distinct upper(op) order by upper(op)) into v_ops from unnest(attach.operations) op;
  if v_ops is null then
    raise exception 'pgfn.attach needs at least one operation (INSERT, UPDATE, DELETE)'
      using errcode = 'invalid_parameter_value';
  end if;
  select op into v_bad from unnest(v_ops) op where op is null or op not in ('INSERT', 'UPDATE', 'DELETE') limit 1;
  if found then
    raise exception 'invalid operation %: use INSERT, UPDATE or DELETE', coalesce(quote_literal(v_bad), 'null')
      using errcode = 'invalid_parameter_value';
  end if;

  -- Replace only triggers of this same function: a trigger of one of these
  -- names doing anything else is somebody's, and stays. All checked before
  -- anything is dropped.
  for v_trigger in select pgfn.trigger_name(attach.function, op) from unnest(v_ops) op loop
    if exists (select 1 from pg_trigger t where t.tgrelid = attach."table" and t.tgname = v_trigger)
      and not pgfn.trigger_sends_to(attach."table", v_trigger, attach.function) then
      raise exception 'trigger % on % already exists and does not send rows to pgfn function %; pgfn.attach leaves it alone: drop or rename it, or declare your own trigger with pgfn.enqueue(%)',
        quote_ident(v_trigger), attach."table", attach.function, quote_literal(attach.function)
        using errcode = 'duplicate_object';
    end if;
  end loop;
  -- Whatever pgfn.attach declared for this function before goes: 000013's
  -- names, and the one name 000002 and 000008 used for all operations at once.
  perform pgfn.detach(attach."table", attach.function);

  -- One trigger per operation: a trigger with a transition table may fire on
  -- one event only. drop + create rather than "create or replace trigger"
  -- (Postgres 14+) because the level may change.
  foreach v_op in array v_ops loop
    if v_op = 'UPDATE' or not v_per_statement then
      execute format(
        'create trigger %I after %s on %s for each row execute function pgfn.enqueue(%L)',
        pgfn.trigger_name(attach.function, v_op), v_op, attach."table", attach.function);
    else
      execute format(
        'create trigger %I after %s on %s referencing %s table as %I for each statement execute function pgfn.enqueue(%L)',
        pgfn.trigger_name(attach.function, v_op), v_op, attach."table",
        case v_op when 'INSERT' then 'new' else 'old' end,
        case v_op when 'INSERT' then 'pgfn_new' else 'pgfn_old' end,
        attach.function);
    end if;
  end loop;

  -- Writers lacking pgfn_writer would have every write refused from now on:
  -- say so while the person who can fix it is looking.
  select string_agg(quote_ident(w), ', ') into v_missing
  from pgfn.writers_without_writer_role(attach."table", v_ops) w;
  if v_missing is not null then
    raise notice 'pgfn: roles that may write % lack pgfn_writer, so their writes will fail: grant pgfn_writer to %', attach."table", v_missing;
  end if;
  if exists (
    select 1 from unnest(v_ops) op
    where case op when 'DELETE' then has_table_privilege('public', attach."table", op)
                  else has_any_column_privilege('public', attach."table", op) end
  ) then
    raise notice 'pgfn: PUBLIC may write %: every role that writes it needs "grant pgfn_writer to <role>"', attach."table";
  end if;
  return pgfn.trigger_name(attach.function);
end
$$;

comment on function pgfn.attach(regclass, text, text[]) is
  'pgfn.attach(table, function, operations default {INSERT,UPDATE,DELETE}): creates (or replaces) the triggers that send the table''s changes to the function: per statement for INSERT and DELETE on a plain table, per row otherwise. Returns the name stem: the INSERT trigger''s name; UPDATE''s and DELETE''s add '':update'' and '':delete''. Roles writing the table need pgfn_writer. By name, "table" needs its quotes (a reserved word).';

drop function if exists pgfn.detach(regclass, text);
create function pgfn.detach("table" regclass, function text) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_trigger text;
  v_dropped boolean := false;
begin
  -- Only ever a trigger that sends to this same function, under one of the
  -- names pgfn.attach gives or gave it (000002 cut names at 63 bytes).
  for v_trigger in
    select distinct n from unnest(array[
      pgfn.trigger_name(detach.function, 'INSERT'),
      pgfn.trigger_name(detach.function, 'UPDATE'),
      pgfn.trigger_name(detach.function, 'DELETE'),
      left('pgfn_' || detach.function, 63)
    ]) n
  loop
    if pgfn.trigger_sends_to(detach."table", v_trigger, detach.function) then
      execute format('drop trigger %I on %s', v_trigger, detach."table");
      v_dropped := true;
    end if;
  end loop;
  return v_dropped;
end
$$;

comment on function pgfn.detach(regclass, text) is
  'pgfn.detach(table, function): drops the triggers pgfn.attach created for the function; returns false if there were none. Never drops another function''s trigger.';

-- Functions: on and off -------------------------------------------------------

drop function if exists pgfn.enable(text);
create function pgfn.enable(name text) returns boolean
language sql as $$ select pgfn.set_enabled(enable.name, true) $$;

comment on function pgfn.enable(text) is
  'pgfn.enable(name): enables a function; returns true. Events that failed while it was disabled are in pgfn.dead_letters (pgfn.retry_dead_letters runs them again).';

drop function if exists pgfn.disable(text);
create function pgfn.disable(name text) returns boolean
language sql as $$ select pgfn.set_enabled(disable.name, false) $$;

comment on function pgfn.disable(text) is
  'pgfn.disable(name): disables a function; returns false. Its events keep arriving and fail as FUNCTION_NOT_FOUND into dead letters.';

-- Events ------------------------------------------------------------------------

drop function if exists pgfn.invoke_async(text, jsonb);
create function pgfn.invoke_async(name text, payload jsonb default '{}') returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  if invoke_async.name is null or invoke_async.name !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'invalid function name %: use ^[a-z][a-z0-9_-]{0,63}$', coalesce(quote_literal(invoke_async.name), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  insert into pgfn.events (function_name, source, payload)
  values (invoke_async.name, 'manual', invoke_async.payload)
  returning id into v_id;
  -- The listener is woken by pgfn.wake, as for every new event.
  return v_id;
end
$$;

comment on function pgfn.invoke_async(text, jsonb) is
  'pgfn.invoke_async(name, payload default ''{}''): queues one run of a function with a payload. Returns the event id; the run appears in pgfn.function_runs.';

drop function if exists pgfn.replay(bigint);
create function pgfn.replay(event_id bigint) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  insert into pgfn.events (function_name, source, table_schema, table_name, operation, old, new, payload, replay_of)
  select e.function_name, e.source, e.table_schema, e.table_name, e.operation, e.old, e.new, e.payload, e.id
  from pgfn.events e where e.id = replay.event_id
  returning id into v_id;
  if v_id is null then
    raise exception 'pgfn.replay: there is no event %', replay.event_id using errcode = 'no_data_found';
  end if;
  -- Whatever dead letter the original had is dealt with by this replay.
  update pgfn.dead_letters d set resolved_at = now(), retried_event_id = v_id
  where d.event_id = replay.event_id and d.resolved_at is null;
  -- The listener is woken by pgfn.wake, as for every new event.
  return v_id;
end
$$;

comment on function pgfn.replay(bigint) is
  'pgfn.replay(event_id): runs an event again as a new event (attempt 1); resolves its dead letter. Returns the new event id.';

drop function if exists pgfn.retry(bigint);
create function pgfn.retry(run_id bigint) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event bigint;
begin
  select r.event_id into v_event from pgfn.function_runs r where r.id = retry.run_id;
  if v_event is null then
    raise exception 'pgfn.retry: there is no run %', retry.run_id using errcode = 'no_data_found';
  end if;
  return pgfn.replay(v_event);
end
$$;

comment on function pgfn.retry(bigint) is
  'pgfn.retry(run_id): runs the event of a run again (see pgfn.replay). Returns the new event id.';

drop function if exists pgfn.retry_dead_letters(text, timestamptz);
create function pgfn.retry_dead_letters(
  function_name text default null,
  since timestamptz default null
) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer := 0;
  v_event bigint;
begin
  for v_event in
    select d.event_id from pgfn.dead_letters d
    where d.resolved_at is null
      and (retry_dead_letters.function_name is null or d.function_name = retry_dead_letters.function_name)
      and (retry_dead_letters.since is null or d.created_at >= retry_dead_letters.since)
    order by d.id
    for update skip locked
  loop
    perform pgfn.replay(v_event);
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;

comment on function pgfn.retry_dead_letters(text, timestamptz) is
  'pgfn.retry_dead_letters(function_name default null, since default null): replays every open dead letter (of one function, created since a time; null means any). Returns how many.';

drop function if exists pgfn.prune(interval);
create function pgfn.prune(older_than interval) returns integer
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
  'pgfn.prune(older_than): deletes events (and their runs) older than the interval that are finished, not dead-lettered and not waiting for a job. Returns how many events.';

-- Schedules and circuits ----------------------------------------------------------

drop function if exists pgfn.schedule(text, text, text, text);
create function pgfn.schedule(
  name text,
  cron text,
  catch_up text default 'latest',
  timezone text default 'UTC'
) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_error text;
  v_cron text := regexp_replace(btrim(schedule.cron), '\s+', ' ', 'g');
  v_created boolean;
begin
  if schedule.name is null or schedule.name !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'invalid function name %: use ^[a-z][a-z0-9_-]{0,63}$', coalesce(quote_literal(schedule.name), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  -- Unlike a trigger, a schedule is declared by name alone and fires on its
  -- own: a misspelt name would only show up as a dead letter per slot.
  if not exists (select 1 from pgfn.functions f where f.name = schedule.name) then
    raise exception 'there is no function %: deploy it first (pgfn deploy % FILE.wasm), then schedule it', quote_literal(schedule.name), schedule.name
      using errcode = 'no_data_found';
  end if;
  v_error := pgfn.cron_error(schedule.cron);
  if v_error is not null then
    raise exception 'pgfn.schedule: %', v_error using errcode = 'invalid_parameter_value';
  end if;
  if schedule.catch_up is null or schedule.catch_up not in ('all', 'latest', 'none') then
    raise exception 'pgfn.schedule: unknown catch_up %: use ''all'' (every missed slot), ''latest'' (the most recent one) or ''none''',
      coalesce(quote_literal(schedule.catch_up), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  v_error := pgfn.timezone_error(schedule.timezone);
  if v_error is not null then
    raise exception 'pgfn.schedule: %', v_error using errcode = 'invalid_parameter_value';
  end if;

  insert into pgfn.schedules as s (function_name, cron, timezone, catch_up)
  values (schedule.name, v_cron, schedule.timezone, schedule.catch_up)
  on conflict (function_name) do update set
    cron = excluded.cron,
    timezone = excluded.timezone,
    catch_up = excluded.catch_up,
    error = null,
    next_run = case when (s.cron, s.timezone) = (excluded.cron, excluded.timezone) then s.next_run end,
    active_since = case when (s.cron, s.timezone) = (excluded.cron, excluded.timezone) then s.active_since else now() end,
    updated_at = now()
  returning (xmax = 0) into v_created;

  return format('%s %s: %s (%s), catch_up %s; next_run is filled in by a running daemon''s scheduler',
    case when v_created then 'scheduled' else 'rescheduled' end, schedule.name, quote_literal(v_cron),
    schedule.timezone, schedule.catch_up);
end
$$;

comment on function pgfn.schedule(text, text, text, text) is
  'pgfn.schedule(name, cron, catch_up default ''latest'', timezone default ''UTC''): runs a function at the slots of a 5-field cron expression (or @hourly, @daily, ...) in a time zone. catch_up after downtime: all, latest or none. Scheduling a function again replaces its schedule. Returns what it did.';

drop function if exists pgfn.unschedule(text);
create function pgfn.unschedule(name text) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from pgfn.schedules s where s.function_name = unschedule.name;
  return found;
end
$$;

comment on function pgfn.unschedule(text) is
  'pgfn.unschedule(name): removes a function''s schedule; returns false if it had none. Events already fired still run.';

-- For people: close a circuit by hand (after a fix), letting deferred work through.
drop function if exists pgfn.close_circuit(text);
create function pgfn.close_circuit(name text) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  update pgfn.circuits c
  set state = 'closed', failures = 0, opened_at = null, probe_run_id = null, probe_started_at = null,
      window_started_at = clock_timestamp(), closed_at = clock_timestamp(),
      updated_at = clock_timestamp()
  where c.function_name = close_circuit.name;
  if not found then
    if not exists (select 1 from pgfn.functions f where f.name = close_circuit.name) then
      raise exception 'pgfn.close_circuit: no function named "%"', close_circuit.name
        using errcode = 'no_data_found';
    end if;
  end if;
  return format('circuit of %s is closed', close_circuit.name);
end
$$;

comment on function pgfn.close_circuit(text) is
  'pgfn.close_circuit(name): closes a function''s circuit by hand (after a fix), so the events it deferred run now. Returns a sentence.';

-- Grants and owners back as they were ------------------------------------------------

do $$
declare
  v_old record;
  v_grant record;
begin
  for v_old in select * from pgfn_named_api_acl loop
    if v_old.proowner <> (select p.proowner from pg_proc p where p.oid = v_old.signature::regprocedure) then
      execute format('alter function %s owner to %s', v_old.signature, v_old.proowner::regrole);
    end if;
    continue when v_old.proacl is null;
    execute format('revoke all on function %s from public', v_old.signature);
    for v_grant in select * from aclexplode(v_old.proacl) loop
      execute format('grant %s on function %s to %s%s',
        v_grant.privilege_type, v_old.signature,
        case when v_grant.grantee = 0 then 'public' else v_grant.grantee::regrole::text end,
        case when v_grant.is_grantable then ' with grant option' else '' end);
    end loop;
  end loop;
end
$$;
