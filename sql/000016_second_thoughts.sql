-- Three calls that did what they were told when what they were told was a
-- mistake, found by trying pgfn as a new user would (issue 13):
-- * pgfn.attach on a table whose own trigger already sends the same rows to
--   the same function: every row became two events (two e-mails).
-- * pgfn.retry / pgfn.replay of an event that had been run again already:
--   the handler ran once more, under a new event id, so a handler keyed on
--   event.id could not tell. Now a second replay of the same event is
--   refused unless forced, and every event carries the id of the event its
--   replays started from (events.original_id), which the handler receives as
--   its idempotency_key.
-- * pgfn.schedule with a cron that names no date that exists ('0 0 30 2 *'):
--   it replaced a working schedule and the daemon only said so in
--   pgfn.schedules.error.
--
-- pgfn.replay and pgfn.retry gain an argument (force), so, as in
-- 000014_named_api.sql, they are dropped and created again and the EXECUTE
-- grants and owner an installation gave them are put back at the end.
-- pgfn.attach and pgfn.cron_error keep their signatures and are replaced.

-- Attach ----------------------------------------------------------------------

-- As in 000014, plus: a trigger under a name pgfn.attach does not give, that
-- already sends the rows of one of these operations to the same function,
-- is refused. The README's own tour did this (a hand-written `welcome`
-- trigger, then pgfn.attach), and each insert made two events. Nothing
-- legitimate needs both: a trigger of one's own that sends a subset of the
-- rows (WHEN, UPDATE OF) would have its rows sent twice too.
create or replace function pgfn.attach(
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
  v_own record;
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

  -- tgtype's bits for the operations: 4 INSERT, 8 DELETE, 16 UPDATE
  -- (TRIGGER_TYPE_* in Postgres' pg_trigger.h). The names excluded are the
  -- ones pgfn.detach drops: pgfn.attach's own, replaced below.
  select t.tgname, string_agg(o.op, ' and ' order by o.op) as ops into v_own
  from pg_trigger t
  join (values ('INSERT', 4), ('DELETE', 8), ('UPDATE', 16)) o(op, bit) on t.tgtype & o.bit <> 0
  where t.tgrelid = attach."table" and not t.tgisinternal
    and t.tgfoid = 'pgfn.enqueue()'::regprocedure
    and t.tgnargs >= 1
    and substring(t.tgargs from 1 for octet_length(attach.function) + 1) = convert_to(attach.function, 'UTF8') || '\x00'::bytea
    and t.tgname <> all (array[
      pgfn.trigger_name(attach.function, 'INSERT'),
      pgfn.trigger_name(attach.function, 'UPDATE'),
      pgfn.trigger_name(attach.function, 'DELETE'),
      left('pgfn_' || attach.function, 63)])
    and o.op = any (v_ops)
  group by t.tgname
  order by t.tgname
  limit 1;
  if found then
    raise exception 'trigger % on % already sends its % rows to pgfn function % (it calls pgfn.enqueue(%)); attaching as well would record each of those rows twice. Keep that trigger and do not attach, or drop it (drop trigger % on %) and attach again',
      quote_ident(v_own.tgname), attach."table", v_own.ops, attach.function, quote_literal(attach.function),
      quote_ident(v_own.tgname), attach."table"
      using errcode = 'duplicate_object';
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
  'pgfn.attach(table, function, operations default {INSERT,UPDATE,DELETE}): creates (or replaces) the triggers that send the table''s changes to the function: per statement for INSERT and DELETE on a plain table, per row otherwise. Returns the name stem: the INSERT trigger''s name; UPDATE''s and DELETE''s add '':update'' and '':delete''. Refuses when a trigger of your own already sends those rows to the function. Roles writing the table need pgfn_writer. By name, "table" needs its quotes (a reserved word).';

-- Replays ---------------------------------------------------------------------

-- The event a chain of replays started from: a replay of a replay points at
-- the same original. Null for an event that is no replay. No foreign key,
-- unlike replay_of: pgfn.prune may delete the original while a replay stays,
-- and the replay must keep the same idempotency key.
alter table pgfn.events add column if not exists original_id bigint;

comment on column pgfn.events.original_id is
  'For a replay (pgfn.replay, pgfn.retry): the event its chain of replays started from; null otherwise. The handler receives coalesce(original_id, id) as idempotency_key.';

-- Replays made before this migration. Each walks up replay_of to the oldest
-- event still there (pgfn.prune forgets a pruned original: replay_of null).
with recursive up (id, ancestor, depth) as (
  select e.id, e.replay_of, 1 from pgfn.events e
  where e.replay_of is not null and e.original_id is null
  union all
  select up.id, e.replay_of, up.depth + 1
  from up join pgfn.events e on e.id = up.ancestor
  where e.replay_of is not null
)
update pgfn.events e set original_id = root.ancestor
from (select distinct on (up.id) up.id, up.ancestor from up order by up.id, up.depth desc) root
where e.id = root.id;

-- Replays are few: a partial index finds an original's replays without
-- costing the outbox's inserts anything but a predicate check.
create index if not exists events_original_id_idx on pgfn.events (original_id) where original_id is not null;

-- Copies an event as a new one (attempt 1), unless a replay of the same
-- original was made after it (the event was replayed already, or it is an
-- older copy than the latest): then, unless p_force, nothing is copied and
-- replayed_as / replayed_at name that later replay. All null: there is no
-- such event. pgfn.replay, pgfn.retry and pgfn.retry_dead_letters call it.
create or replace function pgfn.replay_event(
  p_event_id bigint,
  p_force boolean,
  out new_event_id bigint,
  out replayed_as bigint,
  out replayed_at timestamptz
)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_original bigint;
begin
  select coalesce(e.original_id, e.id) into v_original from pgfn.events e where e.id = p_event_id;
  if not found then
    return;
  end if;
  -- Two replays of one original at once would both find none before them.
  -- Not a row lock on the original: inserting a run of it takes FOR KEY
  -- SHARE on its row, and a replay left in an open transaction would hold
  -- that up.
  perform pg_advisory_xact_lock(hashtextextended('pgfn:replay:' || v_original, 0));
  select x.id, x.created_at into replayed_as, replayed_at
  from pgfn.events x
  where x.original_id = v_original and x.id > p_event_id
  order by x.id desc
  limit 1;
  if replayed_as is not null and not p_force then
    return;
  end if;
  insert into pgfn.events (function_name, source, table_schema, table_name, operation, old, new, payload, replay_of, original_id)
  select e.function_name, e.source, e.table_schema, e.table_name, e.operation, e.old, e.new, e.payload, e.id, v_original
  from pgfn.events e where e.id = p_event_id
  returning id into new_event_id;
  if new_event_id is null then
    -- Pruned meanwhile.
    replayed_as := null;
    replayed_at := null;
    return;
  end if;
  -- Whatever dead letter the original had is dealt with by this replay.
  update pgfn.dead_letters d set resolved_at = now(), retried_event_id = new_event_id
  where d.event_id = p_event_id and d.resolved_at is null;
  -- The listener is woken by pgfn.wake, as for every new event.
end
$$;

comment on function pgfn.replay_event(bigint, boolean, out bigint, out bigint, out timestamptz) is
  'Internal: copies an event as a new one, unless (without p_force) a later replay of the same original exists; then returns that one as replayed_as, replayed_at. pgfn.replay, pgfn.retry and pgfn.retry_dead_letters call it.';

-- How a time reads in a refusal: to the second, in UTC, whatever the session's TimeZone.
create or replace function pgfn.utc_text(p_at timestamptz) returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$ select to_char(p_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"') $$;

-- Grants and owners as they are now (of either signature: this file may run
-- again), to restore on the new signatures.
create temporary table pgfn_second_thoughts_acl on commit drop as
select p.proname::text as name, p.proacl, p.proowner
from pg_proc p
where p.oid in (
  select to_regprocedure(s) from unnest(array[
    'pgfn.replay(bigint)', 'pgfn.retry(bigint)',
    'pgfn.replay(bigint, boolean)', 'pgfn.retry(bigint, boolean)']) s
);

drop function if exists pgfn.replay(bigint);
drop function if exists pgfn.replay(bigint, boolean);
create function pgfn.replay(event_id bigint, force boolean default false) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_new bigint;
  v_as bigint;
  v_at timestamptz;
begin
  select r.new_event_id, r.replayed_as, r.replayed_at into v_new, v_as, v_at
  from pgfn.replay_event(replay.event_id, coalesce(replay.force, false)) r;
  if v_new is not null then
    return v_new;
  end if;
  if v_as is null then
    raise exception 'pgfn.replay: there is no event %', replay.event_id using errcode = 'no_data_found';
  end if;
  raise exception 'event % was already replayed: it was run again as event %, created %', replay.event_id, v_as, pgfn.utc_text(v_at)
    using errcode = 'object_not_in_prerequisite_state',
          hint = format('Replaying it again runs its handler once more (with the same idempotency_key). To do so anyway: select pgfn.replay(%s, force => true);', replay.event_id);
end
$$;

comment on function pgfn.replay(bigint, boolean) is
  'pgfn.replay(event_id, force default false): runs an event again as a new event (attempt 1) with the same idempotency_key; resolves its dead letter. Refuses an event that was replayed already (pgfn.replay or pgfn.retry) unless force. Returns the new event id.';

drop function if exists pgfn.retry(bigint);
drop function if exists pgfn.retry(bigint, boolean);
create function pgfn.retry(run_id bigint, force boolean default false) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event bigint;
  v_new bigint;
  v_as bigint;
  v_at timestamptz;
begin
  select r.event_id into v_event from pgfn.function_runs r where r.id = retry.run_id;
  if v_event is null then
    raise exception 'pgfn.retry: there is no run %', retry.run_id using errcode = 'no_data_found';
  end if;
  select r.new_event_id, r.replayed_as, r.replayed_at into v_new, v_as, v_at
  from pgfn.replay_event(v_event, coalesce(retry.force, false)) r;
  if v_new is not null then
    return v_new;
  end if;
  if v_as is null then
    -- Deleted after the run was read (pgfn.prune takes the runs with it).
    raise exception 'pgfn.retry: there is no run %', retry.run_id using errcode = 'no_data_found';
  end if;
  -- The CLI (pgfn retry) shows this message with its own --force hint.
  raise exception 'run % was already retried: its event % was run again as event %, created %', retry.run_id, v_event, v_as, pgfn.utc_text(v_at)
    using errcode = 'object_not_in_prerequisite_state',
          hint = format('Retrying it again runs its handler once more (with the same idempotency_key). To do so anyway: select pgfn.retry(%s, force => true);', retry.run_id);
end
$$;

comment on function pgfn.retry(bigint, boolean) is
  'pgfn.retry(run_id, force default false): runs the event of a run again (see pgfn.replay). Refuses a run whose event was retried or replayed already unless force. Returns the new event id.';

-- As in 000014, except for an open dead letter of an event that was run
-- again already (a late outcome of it, recorded after the replay resolved
-- its first letter): it is resolved, pointing at that replay, not replayed
-- a second time, and not counted.
create or replace function pgfn.retry_dead_letters(
  function_name text default null,
  since timestamptz default null
) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer := 0;
  v_skipped integer := 0;
  v_event bigint;
  v_new bigint;
  v_as bigint;
begin
  for v_event in
    select d.event_id from pgfn.dead_letters d
    where d.resolved_at is null
      and (retry_dead_letters.function_name is null or d.function_name = retry_dead_letters.function_name)
      and (retry_dead_letters.since is null or d.created_at >= retry_dead_letters.since)
    order by d.id
    for update skip locked
  loop
    select r.new_event_id, r.replayed_as into v_new, v_as from pgfn.replay_event(v_event, false) r;
    if v_new is not null then
      v_count := v_count + 1;
    elsif v_as is not null then
      update pgfn.dead_letters d set resolved_at = now(), retried_event_id = v_as
      where d.event_id = v_event and d.resolved_at is null;
      v_skipped := v_skipped + 1;
    end if;
  end loop;
  if v_skipped > 0 then
    raise notice 'pgfn.retry_dead_letters: % dead letter(s) were of events already run again by pgfn.retry or pgfn.replay; resolved, pointing at that replay (retried_event_id), not run twice. pgfn.replay(event_id, force => true) runs one once more.', v_skipped;
  end if;
  return v_count;
end
$$;

comment on function pgfn.retry_dead_letters(text, timestamptz) is
  'pgfn.retry_dead_letters(function_name default null, since default null): replays every open dead letter (of one function, created since a time; null means any). A letter of an event that was run again already is resolved, pointing at that replay, not replayed twice. Returns how many were replayed.';

-- Schedules --------------------------------------------------------------------

-- The values a cron field lists, for a field pgfn.cron_error has found
-- valid: `*`, N, N-M, */S, N-M/S, names (p_names, numbered from p_first).
create or replace function pgfn.cron_values(
  p_field text, p_lo integer, p_hi integer, p_names text[] default null, p_first integer default null
) returns integer[]
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_item text;
  v_m text[];
  v_values integer[] := '{}';
  v_from integer;
  v_to integer;
begin
  foreach v_item in array string_to_array(p_field, ',') loop
    if p_names is not null then
      v_item := pgfn.cron_names(v_item, p_names, p_first);
    end if;
    v_m := regexp_match(v_item, '^(?:(\*)|(\d{1,2})(?:-(\d{1,2}))?)(?:/(\d{1,3}))?$');
    v_from := coalesce(v_m[2]::integer, p_lo);
    v_to := case when v_m[1] is not null then p_hi else coalesce(v_m[3]::integer, v_from) end;
    v_values := v_values || array(select generate_series(v_from, v_to, coalesce(v_m[4]::integer, 1)));
  end loop;
  return v_values;
end
$$;

-- As in 000007, plus a cron that is valid but names no date that exists:
-- '0 0 30 2 *', '0 0 31 4,6,9,11 *'. The daemon's parser (croner, 5-part
-- mode) matches a day when day-of-month OR day-of-week matches if both
-- fields are restricted, and only by day-of-month when day-of-week is
-- exactly '*' (a restricted day-of-week, even '0-6' or '*/1', matches days
-- in every month). So a cron never fires exactly when day-of-week is '*' and
-- no listed month has the smallest listed day; February counts 29 days,
-- since '0 0 29 2 *' fires every leap year. test/schedules.test.ts checks
-- that this and croner agree.
create or replace function pgfn.cron_error(p_cron text) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_fields text[];
  v_names constant text[] := array['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
  v_lo constant integer[] := array[0, 0, 1, 1, 0];
  v_hi constant integer[] := array[59, 23, 31, 12, 7];
  v_months constant text[] := array['JAN','FEB','MAR','APR','MAY','JUN','JUL','AUG','SEP','OCT','NOV','DEC'];
  v_month_days constant integer[] := array[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
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
        v_item := pgfn.cron_names(v_item, v_months, 1);
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
  if v_fields[5] = '*' and not exists (
    select 1 from unnest(pgfn.cron_values(v_fields[4], 1, 12, v_months, 1)) m
    where v_month_days[m] >= (select min(d) from unnest(pgfn.cron_values(v_fields[3], 1, 31)) d)
  ) then
    return format('cron %s never fires: no month of its month field %s has a day of its day-of-month field %s (February has 29 days at most, April, June, September and November 30)',
      quote_literal(btrim(p_cron)), quote_literal(v_fields[4]), quote_literal(v_fields[3]));
  end if;
  return null;
end
$$;

-- Grants and owners back as they were ------------------------------------------------

do $$
declare
  v_old record;
  v_grant record;
  v_signature text;
begin
  for v_old in select * from pgfn_second_thoughts_acl loop
    v_signature := format('pgfn.%s(bigint, boolean)', v_old.name);
    if v_old.proowner <> (select p.proowner from pg_proc p where p.oid = v_signature::regprocedure) then
      execute format('alter function %s owner to %s', v_signature, v_old.proowner::regrole);
    end if;
    continue when v_old.proacl is null;
    execute format('revoke all on function %s from public', v_signature);
    for v_grant in select * from aclexplode(v_old.proacl) loop
      execute format('grant %s on function %s to %s%s',
        v_grant.privilege_type, v_signature,
        case when v_grant.grantee = 0 then 'public' else v_grant.grantee::regrole::text end,
        case when v_grant.is_grantable then ' with grant option' else '' end);
    end loop;
  end loop;
end
$$;
