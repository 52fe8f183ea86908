-- Who may record events, and with whose rights the row becomes JSON.
--
-- Until now pgfn.enqueue() was SECURITY DEFINER and called to_jsonb(new).
-- to_jsonb of an enum, range or composite column calls any user-defined cast
-- to json, which then ran with the rights of pgfn's owner (the migrating
-- role, usually a superuser): the owner of an attached table could make
-- itself superuser with one insert. The rule from here on: nothing a table
-- writer controls (casts, functions reachable from a row or a table) runs
-- with pgfn's owner rights.
--
-- So the work is split in two:
-- * pgfn.enqueue() is SECURITY INVOKER. It builds the row's JSON as the role
--   writing the row, exactly as any other trigger of the table would run.
-- * pgfn.record_row_event(...) is SECURITY DEFINER and receives only finished
--   values (text and jsonb: nothing that can call user code) to insert into
--   pgfn.events. Only members of the NOLOGIN role pgfn_writer may call it.
--
-- Roles that write attached tables therefore need `grant pgfn_writer to
-- <role>`. So that upgrading keeps existing installations working, this
-- migration grants it to every role that may write a table that has a
-- pgfn.enqueue trigger today, and to the owner of each such table.

-- The role. Roles are cluster-wide, while migrations run per database under
-- a per-database lock: two databases migrating at once both try to create
-- it, hence the exception handler (which runs once per migration, not per
-- row).
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'pgfn_writer') then
    begin
      create role pgfn_writer nologin;
      comment on role pgfn_writer is
        'pgfn: roles that write tables attached to pgfn functions need this role (grant pgfn_writer to <role>). Its members may record row events in pgfn.events.';
    exception
      when duplicate_object or unique_violation then
        null; -- another database's migration created it a moment ago
      when insufficient_privilege then
        raise exception 'pgfn needs the role pgfn_writer, and % may not create roles: run "create role pgfn_writer nologin; grant pgfn_writer to % with admin option;" as a superuser, then migrate again',
          quote_ident(current_user), quote_ident(current_user)
          using errcode = 'insufficient_privilege';
    end;
  end if;
end
$$;

-- Needed to name pgfn.record_row_event from pgfn.enqueue(), which runs as
-- the writer. It gives no access to any table in pgfn: those have no grants,
-- and every other function in pgfn runs with its caller's rights.
grant usage on schema pgfn to pgfn_writer;

-- SECURITY DEFINER, audited: the only code that runs with pgfn's owner rights
-- here is this body and what the insert into pgfn.events fires.
-- * Its arguments are text and jsonb. The caller evaluates them, with its
--   own rights, before the call; a user-defined type passed in is cast to
--   text/jsonb on the caller's side too. Inside, jsonb and text are only
--   stored: no cast, comparison or operator of a user type is reachable.
-- * search_path is pinned to pg_catalog, pg_temp (pg_temp is never searched
--   for functions or operators); every object is schema-qualified; no
--   dynamic SQL.
-- * The insert fires what pgfn.events has: its defaults (identity,
--   clock_timestamp()), its check constraints (built-in operators on text)
--   and the deferred constraint trigger events_wake (pgfn.wake, audited
--   below). Nothing on pgfn.events may ever call code a user controls.
-- * EXECUTE is revoked from PUBLIC and granted to pgfn_writer only.
-- What remains: a member of pgfn_writer can record a 'database' event for
-- any function name with JSON of its choosing, from a trigger of its own.
-- That is what pgfn_writer means; grant it only to roles trusted to start
-- handlers (see the README, "Who may write attached tables").
-- The arguments are plain values on purpose: a later migration can add the
-- row key (DESIGN.md section 8) as an overload without touching this one.
create or replace function pgfn.record_row_event(
  p_function text,
  p_table_schema text,
  p_table_name text,
  p_operation text,
  p_old jsonb,
  p_new jsonb
) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- pgfn.enqueue() is the only intended caller. Outside a trigger (psql, a
  -- handler's db_query) a call is a forged event; refuse that easy path.
  if pg_trigger_depth() < 1 then
    raise exception 'pgfn.record_row_event is called only by the trigger function pgfn.enqueue(); attach the table with pgfn.attach instead'
      using errcode = 'insufficient_privilege';
  end if;
  insert into pgfn.events (function_name, source, table_schema, table_name, operation, old, new)
  values (p_function, 'database', p_table_schema, p_table_name, p_operation, p_old, p_new);
end
$$;

revoke all on function pgfn.record_row_event(text, text, text, text, jsonb, jsonb) from public;
grant execute on function pgfn.record_row_event(text, text, text, text, jsonb, jsonb) to pgfn_writer;

comment on function pgfn.record_row_event(text, text, text, text, jsonb, jsonb) is
  'Internal, called by pgfn.enqueue(): inserts a finished row event into pgfn.events. Executable by pgfn_writer only.';

-- SECURITY INVOKER from here on (the default; said out loud because it is
-- the point). A table's casts and the like run with the rights of the role
-- writing the row, like any other trigger on that table would run them.
-- search_path stays pinned so that to_jsonb, pg_has_role and the operators
-- below are pg_catalog's whatever the writer's search_path says.
create or replace function pgfn.enqueue() returns trigger
language plpgsql
security invoker
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
  -- Checked first, so that a writer without the role learns the fix rather
  -- than "permission denied for schema pgfn". A plain test, not an exception
  -- handler around the call: this runs for every row written.
  if not pg_has_role(current_user, 'pgfn_writer', 'USAGE') then
    raise exception 'role % may not record pgfn events for trigger % on %.%: grant pgfn_writer to %',
      quote_ident(current_user), quote_ident(tg_name), quote_ident(tg_table_schema),
      quote_ident(tg_table_name), quote_ident(current_user)
      using errcode = 'insufficient_privilege',
        hint = 'Every role that writes a table attached to a pgfn function needs the role pgfn_writer.';
  end if;

  perform pgfn.record_row_event(
    v_function, tg_table_schema, tg_table_name, tg_op,
    case when tg_op in ('UPDATE', 'DELETE') then to_jsonb(old) end,
    case when tg_op in ('INSERT', 'UPDATE') then to_jsonb(new) end
  );
  return null;
end
$$;

comment on function pgfn.enqueue() is
  'Trigger function: records the row change in pgfn.events for the function named by its argument. Use AFTER ... FOR EACH ROW. Roles writing the table need pgfn_writer.';

-- SECURITY DEFINER, audited (pgfn.wake, 000002, unchanged): the deferred
-- constraint trigger on pgfn.events, run at commit as pgfn's owner because
-- the committing role has no rights on pgfn.listener_state. It takes no
-- argument and reads no row data; it calls only current_setting,
-- set_config, clock_timestamp, pg_notify and a comparison of two
-- timestamptz, all pg_catalog's under its pinned search_path. A writer can
-- set pgfn.woken itself, which only skips its own wake-up (the periodic
-- sweep still finds the event). No user code reaches it. EXECUTE is taken
-- from PUBLIC: triggers fire without it, and nobody needs to create another
-- trigger calling it (members of pgfn_writer could, and send NOTIFYs at will).
revoke all on function pgfn.wake() from public;

-- The trigger name pgfn.attach gives a function's trigger: deterministic,
-- so detach can find it, and within the 63-byte identifier limit. Names up
-- to 58 characters keep their name from 000002 ('pgfn_' || name). Longer
-- ones (function names have up to 64) used to be cut at 63 bytes, so two
-- names sharing their first 58 characters got the same trigger: they now
-- end in 8 hex digits of a hash of the whole name. attach and detach also
-- check what a trigger calls before touching it, so even a collision never
-- replaces another function's trigger. sha256 rather than md5, which a
-- FIPS-mode server refuses. convert_to is deterministic here: names are ASCII.
create or replace function pgfn.trigger_name(p_function text) returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when octet_length('pgfn_' || p_function) <= 63 then 'pgfn_' || p_function
    else left('pgfn_' || p_function, 54) || '_' || left(encode(sha256(convert_to(p_function, 'UTF8')), 'hex'), 8)
  end
$$;

-- Whether trigger p_trigger on p_table calls pgfn.enqueue with p_function as
-- its first argument (tgargs holds the arguments, each ending in a zero
-- byte; a later migration may add a second one, the row key).
create or replace function pgfn.trigger_sends_to(p_table regclass, p_trigger text, p_function text) returns boolean
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select exists (
    select 1 from pg_trigger
    where tgrelid = p_table and tgname = p_trigger
      and tgfoid = 'pgfn.enqueue()'::regprocedure
      and tgnargs >= 1
      and substring(tgargs from 1 for octet_length(p_function) + 1) = convert_to(p_function, 'UTF8') || '\x00'::bytea
  )
$$;

-- Roles that may write p_table with one of p_operations but would be refused
-- by pgfn.enqueue() for lack of pgfn_writer: the table's owner and the roles
-- granted a privilege on it or on one of its columns (the roles an
-- administrator grants to; their members inherit pgfn_writer through them).
-- PUBLIC is left out: a role cannot be granted to it.
create or replace function pgfn.writers_without_writer_role(
  p_table regclass,
  p_operations text[] default array['INSERT', 'UPDATE', 'DELETE']
) returns setof name
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  with grantees as (
    select c.relowner as role
    from pg_class c where c.oid = p_table
    union
    select a.grantee
    from pg_class c, aclexplode(c.relacl) a
    where c.oid = p_table and a.privilege_type = any (p_operations)
    union
    select a.grantee
    from pg_attribute att, aclexplode(att.attacl) a
    where att.attrelid = p_table and a.privilege_type = any (p_operations)
  )
  select r.rolname
  from grantees g
  join pg_roles r on r.oid = g.role
  where not r.rolsuper
    and r.rolname <> 'pgfn_writer'
    and not pg_has_role(r.oid, 'pgfn_writer', 'USAGE')
  order by r.rolname
$$;

comment on function pgfn.writers_without_writer_role(regclass, text[]) is
  'Roles that may write the table (owner, grantees) but lack pgfn_writer, so their writes would fail on a pgfn trigger.';

-- Existing installations: grant pgfn_writer to whoever writes an attached
-- table today, so that no application breaks on upgrade. Members of such a
-- role inherit it; a role that may write only through pg_write_all_data or
-- PUBLIC's grants is reported, not granted (see the NOTICE).
do $$
declare
  v_table regclass;
  v_name text; -- schema-qualified whatever the session's search_path
  v_role name;
begin
  for v_table, v_name in
    select distinct t.tgrelid::regclass, format('%I.%I', n.nspname, c.relname)
    from pg_trigger t
    join pg_class c on c.oid = t.tgrelid
    join pg_namespace n on n.oid = c.relnamespace
    where t.tgfoid = 'pgfn.enqueue()'::regprocedure
  loop
    for v_role in select * from pgfn.writers_without_writer_role(v_table) loop
      execute format('grant pgfn_writer to %I', v_role);
      raise notice 'pgfn: granted pgfn_writer to % (it may write %, which has a pgfn trigger)', quote_ident(v_role), v_name;
    end loop;
    if has_table_privilege('public', v_table, 'INSERT, UPDATE, DELETE')
      or has_any_column_privilege('public', v_table, 'INSERT, UPDATE') then
      raise notice 'pgfn: PUBLIC may write %, which has a pgfn trigger: every role that writes it now needs "grant pgfn_writer to <role>"', v_name;
    end if;
  end loop;
end
$$;

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
  -- The name 000002 gave it; a trigger attached before 000008 may still have it.
  v_old_trigger text := left('pgfn_' || p_function, 63);
  v_missing text;
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

  -- Replace only a trigger of this same function: a trigger of that name
  -- doing anything else is somebody's, and stays.
  if exists (select 1 from pg_trigger where tgrelid = p_table and tgname = v_trigger)
    and not pgfn.trigger_sends_to(p_table, v_trigger, p_function) then
    raise exception 'trigger % on % already exists and does not send rows to pgfn function %; pgfn.attach leaves it alone: drop or rename it, or declare your own trigger with pgfn.enqueue(%)',
      quote_ident(v_trigger), p_table, p_function, quote_literal(p_function)
      using errcode = 'duplicate_object';
  end if;
  -- drop + create rather than "create or replace trigger" (Postgres 14+);
  -- no "if exists", whose NOTICE would be noise in psql.
  if pgfn.trigger_sends_to(p_table, v_trigger, p_function) then
    execute format('drop trigger %I on %s', v_trigger, p_table);
  end if;
  if v_old_trigger <> v_trigger and pgfn.trigger_sends_to(p_table, v_old_trigger, p_function) then
    execute format('drop trigger %I on %s', v_old_trigger, p_table);
  end if;
  execute format(
    'create trigger %I after %s on %s for each row execute function pgfn.enqueue(%L)',
    v_trigger, array_to_string(v_ops, ' or '), p_table, p_function
  );

  -- Writers lacking pgfn_writer would have every write refused from now on:
  -- say so while the person who can fix it is looking.
  select string_agg(quote_ident(w), ', ') into v_missing
  from pgfn.writers_without_writer_role(p_table, v_ops) w;
  if v_missing is not null then
    raise notice 'pgfn: roles that may write % lack pgfn_writer, so their writes will fail: grant pgfn_writer to %', p_table, v_missing;
  end if;
  if exists (
    select 1 from unnest(v_ops) op
    where case op when 'DELETE' then has_table_privilege('public', p_table, op)
                  else has_any_column_privilege('public', p_table, op) end
  ) then
    raise notice 'pgfn: PUBLIC may write %: every role that writes it needs "grant pgfn_writer to <role>"', p_table;
  end if;
  return v_trigger;
end
$$;

comment on function pgfn.attach(regclass, text, text[]) is
  'Creates (or replaces) the AFTER ... FOR EACH ROW trigger that sends the table''s changes to a function. Returns the trigger name. Roles writing the table need pgfn_writer.';

create or replace function pgfn.detach(p_table regclass, p_function text) returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_trigger text := pgfn.trigger_name(p_function);
  v_old_trigger text := left('pgfn_' || p_function, 63);
  v_dropped boolean := false;
begin
  -- Only ever a trigger that sends to this same function: with names cut to
  -- 63 bytes, another function's trigger may carry the name.
  if pgfn.trigger_sends_to(p_table, v_trigger, p_function) then
    execute format('drop trigger %I on %s', v_trigger, p_table);
    v_dropped := true;
  end if;
  if v_old_trigger <> v_trigger and pgfn.trigger_sends_to(p_table, v_old_trigger, p_function) then
    execute format('drop trigger %I on %s', v_old_trigger, p_table);
    v_dropped := true;
  end if;
  return v_dropped;
end
$$;

comment on function pgfn.detach(regclass, text) is
  'Drops the trigger pgfn.attach created for the function; returns false if there was none. Never drops another function''s trigger.';
