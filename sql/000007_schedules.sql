-- Schedules: a function runs at the slots of a cron expression, once per slot
-- however many daemons run, and catches up what it missed while none ran.
--
-- A daemon's scheduler (src/scheduler/) claims a due schedule FOR UPDATE SKIP
-- LOCKED, inserts one pgfn.events row per slot it fires (source 'schedule')
-- and moves next_run past the present, in one transaction; dispatch then runs
-- the events like any other. next_run is the cursor: slots before it were
-- either fired or deliberately skipped (catch_up), so missed slots survive a
-- restart of every daemon. Cron slots are computed in the daemon (croner), not
-- here, which is why next_run is null until a scheduler has seen the row.
create table if not exists pgfn.schedules (
  -- One schedule per function: pgfn.unschedule(name) needs nothing else.
  -- No foreign key, as for events: a function deleted later keeps its
  -- schedule, whose runs then fail visibly as FUNCTION_NOT_FOUND.
  function_name text primary key
    constraint schedules_function_name_format check (function_name ~ '^[a-z][a-z0-9_-]{0,63}$'),
  -- Five fields, minute hour day-of-month month day-of-week (or @daily, ...).
  cron text not null,
  timezone text not null default 'UTC',
  catch_up text not null default 'latest'
    constraint schedules_catch_up check (catch_up in ('all', 'latest', 'none')),
  -- The last slot fired (its scheduled time, not when it ran).
  last_run timestamptz,
  -- The next slot to fire; null until a scheduler has computed it.
  next_run timestamptz,
  -- Slots after this are due: set when the schedule is created or its cron or
  -- timezone changes, so a new schedule does not "catch up" on its past.
  active_since timestamptz not null default now(),
  -- Why the scheduler could not use this schedule (null when it can); such a
  -- row is left alone until pgfn.schedule() is called for it again.
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

comment on table pgfn.schedules is
  'Cron schedules, one per function (pgfn.schedule / pgfn.unschedule). last_run: the last slot fired; next_run: the next one.';

create index if not exists schedules_next_run_idx on pgfn.schedules (next_run);

-- The last line of defence for "once per slot": whatever the schedulers do,
-- a slot of a function is one event. Replays copy the payload on purpose and
-- are exempt.
create unique index if not exists events_schedule_slot_idx
  on pgfn.events (function_name, (payload ->> 'scheduled_time'))
  where source = 'schedule' and replay_of is null;

-- Why a cron expression is not acceptable, or null when it is. The grammar is
-- classic cron (what crontab(5) documents), which the daemon's parser
-- (croner, 5-part mode) accepts too: per field, a comma list of `*`, `N`,
-- `N-M`, `*/S` or `N-M/S`; names JAN-DEC and SUN-SAT; or one of @yearly,
-- @annually, @monthly, @weekly, @daily, @midnight, @hourly. Checked here so
-- that a typo is refused by the call that made it, not discovered hours later.
create or replace function pgfn.cron_error(p_cron text) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_fields text[];
  v_names constant text[] := array['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
  v_lo constant integer[] := array[0, 0, 1, 1, 0];
  v_hi constant integer[] := array[59, 23, 31, 12, 7];
  v_i integer;
  v_item text;
  v_m text[];
  v_a integer;
  v_b integer;
  v_step integer;
begin
  if p_cron is null or btrim(p_cron) = '' then
    return 'a cron expression is required, e.g. ''30 2 * * *'' (02:30 every day)';
  end if;
  if btrim(p_cron) like '@%' then
    if lower(btrim(p_cron)) in ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly') then
      return null;
    end if;
    return format('unknown cron nickname %s: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly', btrim(p_cron));
  end if;
  v_fields := regexp_split_to_array(btrim(p_cron), '\s+');
  if cardinality(v_fields) <> 5 then
    return format('cron %s has %s fields; it needs 5: minute hour day-of-month month day-of-week, e.g. ''30 2 * * *''',
      quote_literal(btrim(p_cron)), cardinality(v_fields));
  end if;
  for v_i in 1..5 loop
    foreach v_item in array string_to_array(v_fields[v_i], ',') loop
      -- Names become numbers first: month JAN=1..DEC=12, weekday SUN=0..SAT=6.
      if v_i = 4 then
        v_item := pgfn.cron_names(v_item, array['JAN','FEB','MAR','APR','MAY','JUN','JUL','AUG','SEP','OCT','NOV','DEC'], 1);
      elsif v_i = 5 then
        v_item := pgfn.cron_names(v_item, array['SUN','MON','TUE','WED','THU','FRI','SAT'], 0);
      end if;
      v_m := regexp_match(v_item, '^(?:(\*)|(\d{1,2})(?:-(\d{1,2}))?)(?:/(\d{1,3}))?$');
      if v_m is null or (v_m[2] is not null and v_m[3] is null and v_m[4] is not null) then
        return format('the %s field %s of cron %s is not valid: use *, N, N-M, */S or N-M/S, separated by commas',
          v_names[v_i], quote_literal(v_fields[v_i]), quote_literal(btrim(p_cron)));
      end if;
      if v_m[2] is not null then
        v_a := v_m[2]::integer;
        v_b := coalesce(v_m[3]::integer, v_a);
        if v_a > v_b then
          return format('the %s field %s of cron %s has a range that runs backwards: write it low to high',
            v_names[v_i], quote_literal(v_fields[v_i]), quote_literal(btrim(p_cron)));
        end if;
        if v_a < v_lo[v_i] or v_b > v_hi[v_i] then
          return format('the %s field %s of cron %s is out of range: it allows %s to %s',
            v_names[v_i], quote_literal(v_fields[v_i]), quote_literal(btrim(p_cron)), v_lo[v_i], v_hi[v_i]);
        end if;
      end if;
      if v_m[4] is not null then
        v_step := v_m[4]::integer;
        if v_step < 1 or v_step > v_hi[v_i] - v_lo[v_i] + 1 then
          return format('the %s field %s of cron %s has step %s; it must be 1 to %s',
            v_names[v_i], quote_literal(v_fields[v_i]), quote_literal(btrim(p_cron)), v_step, v_hi[v_i] - v_lo[v_i] + 1);
        end if;
      end if;
    end loop;
  end loop;
  return null;
end
$$;

-- Replaces month or weekday names in one cron list item by their numbers.
create or replace function pgfn.cron_names(p_item text, p_names text[], p_first integer) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_i integer;
  v_item text := upper(p_item);
begin
  for v_i in 1..cardinality(p_names) loop
    v_item := replace(v_item, p_names[v_i], (p_first + v_i - 1)::text);
  end loop;
  return v_item;
end
$$;

-- Why a time zone is not acceptable, or null when it is. pg_timezone_names
-- also lists files that are not zones to Node's Intl (posix/..., right/...,
-- Factory, localtime, posixrules); the daemon could not use those.
create or replace function pgfn.timezone_error(p_timezone text) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_timezone is not null
     and p_timezone !~ '^(posix|right)/'
     and p_timezone not in ('Factory', 'localtime', 'posixrules')
     and exists (select 1 from pg_timezone_names where name = p_timezone) then
    return null;
  end if;
  return format('unknown time zone %s: use an IANA name such as ''UTC'' or ''Europe/Berlin'' (see pg_timezone_names)',
    coalesce(quote_literal(p_timezone), 'null'));
end
$$;

-- Creates or changes a function's schedule. Calling it again with the same
-- cron and timezone keeps the schedule's place (a setup script may re-run);
-- a new cron or timezone starts afresh from now.
create or replace function pgfn.schedule(
  p_name text,
  p_cron text,
  p_catch_up text default 'latest',
  p_timezone text default 'UTC'
) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_error text;
  v_cron text := regexp_replace(btrim(p_cron), '\s+', ' ', 'g');
  v_created boolean;
begin
  if p_name is null or p_name !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'invalid function name %: use ^[a-z][a-z0-9_-]{0,63}$', coalesce(quote_literal(p_name), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  -- Unlike a trigger, a schedule is declared by name alone and fires on its
  -- own: a misspelt name would only show up as a dead letter per slot.
  if not exists (select 1 from pgfn.functions where name = p_name) then
    raise exception 'there is no function %: deploy it first (pgfn deploy % FILE.wasm), then schedule it', quote_literal(p_name), p_name
      using errcode = 'no_data_found';
  end if;
  v_error := pgfn.cron_error(p_cron);
  if v_error is not null then
    raise exception 'pgfn.schedule: %', v_error using errcode = 'invalid_parameter_value';
  end if;
  if p_catch_up is null or p_catch_up not in ('all', 'latest', 'none') then
    raise exception 'pgfn.schedule: unknown catch_up %: use ''all'' (every missed slot), ''latest'' (the most recent one) or ''none''',
      coalesce(quote_literal(p_catch_up), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  v_error := pgfn.timezone_error(p_timezone);
  if v_error is not null then
    raise exception 'pgfn.schedule: %', v_error using errcode = 'invalid_parameter_value';
  end if;

  insert into pgfn.schedules as s (function_name, cron, timezone, catch_up)
  values (p_name, v_cron, p_timezone, p_catch_up)
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
    case when v_created then 'scheduled' else 'rescheduled' end, p_name, quote_literal(v_cron), p_timezone, p_catch_up);
end
$$;

comment on function pgfn.schedule(text, text, text, text) is
  'Runs a function at the slots of a 5-field cron expression in a time zone (default UTC). catch_up after downtime: all, latest (default) or none. Returns what it did.';

create or replace function pgfn.unschedule(p_name text) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from pgfn.schedules where function_name = p_name;
  return found;
end
$$;

comment on function pgfn.unschedule(text) is
  'Removes a function''s schedule; returns false if it had none. Events already fired still run.';
