-- Declaring work is plain SQL:
--   create trigger welcome after insert on public.users
--     for each row execute function pgfn.enqueue('send_welcome_email');

-- security definer: a role that may write the user's table need not be
-- granted anything on pgfn to produce events. search_path is pinned so the
-- definer's rights cannot be hijacked through objects the caller creates.
create or replace function pgfn.enqueue() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_function text := tg_argv[0];
begin
  if tg_nargs <> 1 or v_function is null or v_function !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'pgfn.enqueue() needs one argument, the function name (^[a-z][a-z0-9_-]{0,63}$); trigger % on %.% passed %',
      tg_name, tg_table_schema, tg_table_name, coalesce(array_to_string(tg_argv, ', '), 'none')
      using errcode = 'invalid_parameter_value';
  end if;
  -- A BEFORE trigger returning null would silently cancel the user's row.
  if tg_when <> 'AFTER' or tg_level <> 'ROW' then
    raise exception 'pgfn.enqueue() must run AFTER ... FOR EACH ROW; trigger % on %.% is % ... FOR EACH %',
      tg_name, tg_table_schema, tg_table_name, tg_when, tg_level
      using errcode = 'invalid_parameter_value';
  end if;

  insert into pgfn.events (function_name, source, table_schema, table_name, operation, old, new)
  values (
    v_function, 'database', tg_table_schema, tg_table_name, tg_op,
    case when tg_op in ('UPDATE', 'DELETE') then to_jsonb(old) end,
    case when tg_op in ('INSERT', 'UPDATE') then to_jsonb(new) end
  );
  -- No NOTIFY here: pgfn.wake (below) decides at commit whether a listener
  -- needs waking.
  return null;
end
$$;

-- Waking the listener. NOTIFY takes a server-wide lock at commit, which
-- halves the INSERT rate of a busy table (measured: ~10-13k -> ~5.5k
-- transactions/s at 4 clients). While a listener is already polling
-- (pgfn.listener_state.awake_until, extended by every dispatch that found
-- work) nobody needs to wake it, so a committing transaction skips the
-- NOTIFY. The check runs as a deferred constraint trigger, i.e. at commit,
-- so the listener's promise to poll for a while after awake_until covers
-- the moment the event becomes visible. Whatever slips through (a listener
-- killed while awake) is found by the periodic sweep.
create unlogged table if not exists pgfn.listener_state (
  id boolean primary key default true constraint listener_state_one_row check (id),
  awake_until timestamptz
);
insert into pgfn.listener_state (id) values (true) on conflict do nothing;

-- security definer: at commit the trigger runs as the user's role, which
-- has no rights on pgfn.
create or replace function pgfn.wake() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- Once per transaction, however many events it wrote.
  if current_setting('pgfn.woken', true) = 'on' then
    return null;
  end if;
  perform set_config('pgfn.woken', 'on', true);
  if not exists (select 1 from pgfn.listener_state where awake_until > clock_timestamp()) then
    -- Empty: identical notifications in a transaction collapse into one,
    -- and no row data meets NOTIFY's 8000-byte limit. The listener reads
    -- the outbox; the notification is only a wake-up call.
    perform pg_notify('pgfn_events', '');
  end if;
  return null;
end
$$;

drop trigger if exists events_wake on pgfn.events;
create constraint trigger events_wake after insert on pgfn.events
  deferrable initially deferred
  for each row execute function pgfn.wake();

comment on function pgfn.enqueue() is
  'Trigger function: records the row change in pgfn.events for the function named by its argument. Use AFTER ... FOR EACH ROW.';

-- The trigger name pgfn.attach gives a function's trigger: deterministic, so
-- detach can find it, and within the 63-byte identifier limit.
create or replace function pgfn.trigger_name(p_function text) returns text
language sql immutable
as $$ select left('pgfn_' || p_function, 63) $$;

create or replace function pgfn.attach(
  p_table regclass,
  p_function text,
  p_operations text[] default array['INSERT', 'UPDATE', 'DELETE']
) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ops text[];
  v_bad text;
  v_trigger text := pgfn.trigger_name(p_function);
begin
  if p_function is null or p_function !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'invalid function name %: use ^[a-z][a-z0-9_-]{0,63}$', coalesce(quote_literal(p_function), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  select array_agg(distinct upper(op) order by upper(op)) into v_ops from unnest(p_operations) op;
  if v_ops is null then
    raise exception 'pgfn.attach needs at least one operation (INSERT, UPDATE, DELETE)'
      using errcode = 'invalid_parameter_value';
  end if;
  select op into v_bad from unnest(v_ops) op where op is null or op not in ('INSERT', 'UPDATE', 'DELETE') limit 1;
  if found then
    raise exception 'invalid operation %: use INSERT, UPDATE or DELETE', coalesce(quote_literal(v_bad), 'null')
      using errcode = 'invalid_parameter_value';
  end if;

  -- drop + create rather than "create or replace trigger" (Postgres 14+);
  -- no "if exists", whose NOTICE would be noise in psql.
  if exists (select 1 from pg_trigger where tgrelid = p_table and tgname = v_trigger) then
    execute format('drop trigger %I on %s', v_trigger, p_table);
  end if;
  execute format(
    'create trigger %I after %s on %s for each row execute function pgfn.enqueue(%L)',
    v_trigger, array_to_string(v_ops, ' or '), p_table, p_function
  );
  return v_trigger;
end
$$;

comment on function pgfn.attach(regclass, text, text[]) is
  'Creates (or replaces) the AFTER ... FOR EACH ROW trigger that sends the table''s changes to a function. Returns the trigger name.';

create or replace function pgfn.detach(p_table regclass, p_function text) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_trigger text := pgfn.trigger_name(p_function);
begin
  if not exists (select 1 from pg_trigger where tgrelid = p_table and tgname = v_trigger) then
    return false;
  end if;
  execute format('drop trigger %I on %s', v_trigger, p_table);
  return true;
end
$$;

comment on function pgfn.detach(regclass, text) is
  'Drops the trigger pgfn.attach created; returns false if there was none.';
