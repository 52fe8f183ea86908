-- A lean write path: what attaching pgfn to a table costs its writers.
--
-- Measured before this migration (pgbench, 4 clients, fsync on, no consumer):
-- an attached table took a fraction of the plain table's insert rate. Two
-- costs went per row where once per statement or once per transaction does:
-- * the trigger: per row, a PL/pgSQL call of pgfn.enqueue() and one of
--   pgfn.record_row_event(), each switching search_path (and the second the
--   user), and one insert into pgfn.events;
-- * the wake-up check: a deferred constraint trigger event queued per event
--   row, each firing pgfn.wake() at commit, of which only the first did
--   anything.
--
-- So, from here on:
-- * pgfn.attach declares statement-level triggers with a transition table
--   for INSERT and DELETE: one call per statement records all its rows with
--   one insert (pgfn.record_row_events). UPDATE stays per row: an UPDATE's
--   old and new transition tables are two sets that Postgres documents no
--   pairing for, and a key cannot pair them either when the statement
--   changes the key (update t set id = id + 1 pairs every old row with the
--   wrong new one). Partitioned tables, partitions and inheritance parents
--   and children stay per row too: statement triggers fire only for the
--   table a statement names, so a row written through a parent would be
--   missed.
-- * events_wake is queued for the first event of a transaction only.
-- * pgfn.wake sends no NOTIFY while no daemon is registered (at the end of
--   this file): with no consumer running, that NOTIFY, not the trigger, cost
--   writers most.
-- Triggers written by hand, `for each row execute function
-- pgfn.enqueue('fn')`, keep working as they are. Triggers attached before
-- this migration are left as they are too (a migration takes no lock on
-- users' tables): `select pgfn.attach(...)` again turns them into the
-- statement-level ones.

-- SECURITY DEFINER, audited: the statement-level twin of
-- pgfn.record_row_event (000008), under the same rules.
-- * Its arguments are text and jsonb[]; the caller (pgfn.enqueue(), SECURITY
--   INVOKER) built the JSON with the writer's rights before the call. Inside,
--   the arrays are only unnested and stored: no cast, comparison or
--   operator of a user type is reachable.
-- * search_path is pinned to pg_catalog, pg_temp; every object is
--   schema-qualified; no dynamic SQL.
-- * The insert fires what pgfn.events has (000008's list: defaults, check
--   constraints, events_wake, whose WHEN below calls only pg_catalog's
--   current_setting and set_config).
-- * It refuses calls from outside a trigger, and EXECUTE is granted to
--   pgfn_writer only.
-- What remains is what pgfn_writer means: a member can record 'database'
-- events for any function with JSON of its choosing, from a trigger of its own.
create or replace function pgfn.record_row_events(
  p_function text,
  p_table_schema text,
  p_table_name text,
  p_operation text,
  p_rows jsonb[]
) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if pg_trigger_depth() < 1 then
    raise exception 'pgfn.record_row_events is called only by the trigger function pgfn.enqueue(); attach the table with pgfn.attach instead'
      using errcode = 'insufficient_privilege';
  end if;
  -- Only the operations whose rows need no pairing: one image per row.
  if p_operation is null or p_operation not in ('INSERT', 'DELETE') then
    raise exception 'pgfn.record_row_events records INSERT or DELETE rows, not %', coalesce(p_operation, 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  -- Rows in statement order, so event ids follow the rows as per-row
  -- triggers would number them.
  insert into pgfn.events (function_name, source, table_schema, table_name, operation, old, new)
  select p_function, 'database', p_table_schema, p_table_name, p_operation,
         case when p_operation = 'DELETE' then r.row end,
         case when p_operation = 'INSERT' then r.row end
  from unnest(p_rows) with ordinality as r(row, n)
  order by r.n;
end
$$;

revoke all on function pgfn.record_row_events(text, text, text, text, jsonb[]) from public;
grant execute on function pgfn.record_row_events(text, text, text, text, jsonb[]) to pgfn_writer;

comment on function pgfn.record_row_events(text, text, text, text, jsonb[]) is
  'Internal, called by pgfn.enqueue() at statement level: inserts one event per row of an INSERT or DELETE statement into pgfn.events. Executable by pgfn_writer only.';

-- The transition tables pgfn.attach declares, by the names pgfn.enqueue()
-- reads them under. A trigger's transition table is visible by that name to
-- the queries of its trigger function only, and comes before any table of
-- that name whatever the search_path.
--
-- SECURITY INVOKER, as in 000008: the rows become JSON with the rights of
-- the role writing them.
create or replace function pgfn.enqueue() returns trigger
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_function text := tg_argv[0];
  v_rows jsonb[];
begin
  if tg_nargs <> 1 or v_function is null or v_function !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'pgfn.enqueue() needs one argument, the function name (^[a-z][a-z0-9_-]{0,63}$); trigger % on %.% passed %',
      tg_name, tg_table_schema, tg_table_name, coalesce(array_to_string(tg_argv, ', '), 'none')
      using errcode = 'invalid_parameter_value';
  end if;
  -- A BEFORE trigger returning null would silently cancel the user's row.
  if tg_when <> 'AFTER' or (tg_level = 'STATEMENT' and tg_op not in ('INSERT', 'DELETE')) then
    raise exception 'pgfn.enqueue() must run AFTER ... FOR EACH ROW; trigger % on %.% is % % ... FOR EACH %',
      tg_name, tg_table_schema, tg_table_name, tg_when, tg_op, tg_level
      using errcode = 'invalid_parameter_value',
        hint = 'For INSERT and DELETE it may also run AFTER ... FOR EACH STATEMENT REFERENCING NEW TABLE AS pgfn_new (OLD TABLE AS pgfn_old), as pgfn.attach declares it.';
  end if;
  -- Checked first, so that a writer without the role learns the fix rather
  -- than "permission denied for schema pgfn". A plain test, not an exception
  -- handler around the call: this runs for every row or statement written.
  if not pg_has_role(current_user, 'pgfn_writer', 'USAGE') then
    raise exception 'role % may not record pgfn events for trigger % on %.%: grant pgfn_writer to %',
      quote_ident(current_user), quote_ident(tg_name), quote_ident(tg_table_schema),
      quote_ident(tg_table_name), quote_ident(current_user)
      using errcode = 'insufficient_privilege',
        hint = 'Every role that writes a table attached to a pgfn function needs the role pgfn_writer.';
  end if;

  if tg_level = 'ROW' then
    perform pgfn.record_row_event(
      v_function, tg_table_schema, tg_table_name, tg_op,
      case when tg_op in ('UPDATE', 'DELETE') then to_jsonb(old) end,
      case when tg_op in ('INSERT', 'UPDATE') then to_jsonb(new) end
    );
    return null;
  end if;

  -- Statement level: the rows in the order the statement wrote them (a
  -- transition table is read back in the order its rows were stored).
  if tg_op = 'INSERT' then
    select array_agg(to_jsonb(r)) into v_rows from pgfn_new r;
  else
    select array_agg(to_jsonb(r)) into v_rows from pgfn_old r;
  end if;
  -- A statement that wrote no row still fires its statement triggers.
  if v_rows is not null then
    perform pgfn.record_row_events(v_function, tg_table_schema, tg_table_name, tg_op, v_rows);
  end if;
  return null;
end
$$;

comment on function pgfn.enqueue() is
  'Trigger function: records the row change in pgfn.events for the function named by its argument. Use AFTER ... FOR EACH ROW, or (as pgfn.attach declares for INSERT and DELETE) AFTER ... FOR EACH STATEMENT with REFERENCING NEW TABLE AS pgfn_new / OLD TABLE AS pgfn_old. Roles writing the table need pgfn_writer.';

-- Waking the listener (000002): once per transaction is enough, and
-- pgfn.wake() already did its work only once per transaction, but the
-- trigger was queued, and fired at commit, for every event row. The WHEN
-- clause queues it for the first event only: it is evaluated as each event
-- row is inserted, and the first evaluation in a transaction notes that a
-- wake-up is queued (a transaction-local setting: a savepoint rolled back
-- takes back both the note and the queued trigger, so a later event queues
-- it again). CASE evaluates its branches in order, so set_config runs only
-- when the note is missing. A writer can set pgfn.wake_queued itself, which,
-- like pgfn.woken, only skips its own wake-up; the sweep still finds the
-- event.
drop trigger if exists events_wake on pgfn.events;
create constraint trigger events_wake after insert on pgfn.events
  deferrable initially deferred
  for each row
  when (case when pg_catalog.current_setting('pgfn.wake_queued', true) = 'on' then false
             else pg_catalog.set_config('pgfn.wake_queued', 'on', true) = 'on' end)
  execute function pgfn.wake();

-- The names of the triggers pgfn.attach gives a function on a table: the
-- stem (pgfn.trigger_name, 000008) for INSERT, the stem and ':update' or
-- ':delete' for the others. A colon never appears in a function name, so no
-- function's stem is another's suffixed name; a stem too long for the
-- suffix is shortened as 000008 shortens names, with a hash of the whole
-- function name.
create or replace function pgfn.trigger_name(p_function text, p_operation text) returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when p_operation = 'INSERT' then pgfn.trigger_name(p_function)
    when octet_length(pgfn.trigger_name(p_function) || ':' || lower(p_operation)) <= 63
      then pgfn.trigger_name(p_function) || ':' || lower(p_operation)
    else left('pgfn_' || p_function, 62 - 9 - octet_length(p_operation))
      || '_' || left(encode(sha256(convert_to(p_function, 'UTF8')), 'hex'), 8)
      || ':' || lower(p_operation)
  end
$$;

-- Whether pgfn.attach may declare statement-level triggers on p_table: a
-- plain table that neither inherits nor is inherited from. A statement
-- trigger fires only for the table the statement names: rows written into a
-- partition or child through its parent would be missed, and a parent's
-- transition table holds its children's rows under the parent's name.
create or replace function pgfn.statement_triggers_fit(p_table regclass) returns boolean
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select c.relkind = 'r' and not c.relispartition and not c.relhassubclass
    and not exists (select 1 from pg_inherits i where i.inhrelid = c.oid)
  from pg_class c where c.oid = p_table
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
  v_op text;
  v_trigger text;
  v_per_statement boolean := pgfn.statement_triggers_fit(p_table);
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

  -- Replace only triggers of this same function: a trigger of one of these
  -- names doing anything else is somebody's, and stays. All checked before
  -- anything is dropped.
  for v_trigger in select pgfn.trigger_name(p_function, op) from unnest(v_ops) op loop
    if exists (select 1 from pg_trigger where tgrelid = p_table and tgname = v_trigger)
      and not pgfn.trigger_sends_to(p_table, v_trigger, p_function) then
      raise exception 'trigger % on % already exists and does not send rows to pgfn function %; pgfn.attach leaves it alone: drop or rename it, or declare your own trigger with pgfn.enqueue(%)',
        quote_ident(v_trigger), p_table, p_function, quote_literal(p_function)
        using errcode = 'duplicate_object';
    end if;
  end loop;
  -- Whatever pgfn.attach declared for this function before goes: this
  -- migration's names, and the one name 000002 and 000008 used for all
  -- operations at once.
  perform pgfn.detach(p_table, p_function);

  -- One trigger per operation: a trigger with a transition table may fire on
  -- one event only. drop + create rather than "create or replace trigger"
  -- (Postgres 14+) because the level may change.
  foreach v_op in array v_ops loop
    if v_op = 'UPDATE' or not v_per_statement then
      execute format(
        'create trigger %I after %s on %s for each row execute function pgfn.enqueue(%L)',
        pgfn.trigger_name(p_function, v_op), v_op, p_table, p_function);
    else
      execute format(
        'create trigger %I after %s on %s referencing %s table as %I for each statement execute function pgfn.enqueue(%L)',
        pgfn.trigger_name(p_function, v_op), v_op, p_table,
        case v_op when 'INSERT' then 'new' else 'old' end,
        case v_op when 'INSERT' then 'pgfn_new' else 'pgfn_old' end,
        p_function);
    end if;
  end loop;

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
  return pgfn.trigger_name(p_function);
end
$$;

comment on function pgfn.attach(regclass, text, text[]) is
  'Creates (or replaces) the triggers that send the table''s changes to a function: per statement for INSERT and DELETE on a plain table, per row otherwise. Returns the name stem: the INSERT trigger''s name; UPDATE''s and DELETE''s add '':update'' and '':delete''. Roles writing the table need pgfn_writer.';

create or replace function pgfn.detach(p_table regclass, p_function text) returns boolean
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
    select distinct name from unnest(array[
      pgfn.trigger_name(p_function, 'INSERT'),
      pgfn.trigger_name(p_function, 'UPDATE'),
      pgfn.trigger_name(p_function, 'DELETE'),
      left('pgfn_' || p_function, 63)
    ]) name
  loop
    if pgfn.trigger_sends_to(p_table, v_trigger, p_function) then
      execute format('drop trigger %I on %s', v_trigger, p_table);
      v_dropped := true;
    end if;
  end loop;
  return v_dropped;
end
$$;

comment on function pgfn.detach(regclass, text) is
  'Drops the triggers pgfn.attach created for the function; returns false if there were none. Never drops another function''s trigger.';

-- No NOTIFY while no daemon is registered. A NOTIFY takes a server-wide lock
-- held through the commit's WAL flush, so notifying transactions commit one
-- at a time: with no pgfn daemon running, every writing transaction paid
-- that for a wake-up nobody could hear (measured: the attached table's
-- insert rate at 4 clients fell to a third or less of the same table with
-- the NOTIFY skipped). A daemon registers in
-- pgfn.daemons (000005) before its listener LISTENs and sweeps, and a
-- listener's first pass after LISTEN finds every event committed before it,
-- so a transaction that saw no daemon at its commit-time check is found by
-- that first pass, under the same assumption as the awake margin (000002):
-- the check runs just before the commit becomes visible. What slips past
-- it (a REPEATABLE READ transaction reads pgfn.daemons as of its start) is
-- found by the periodic sweep. A row left by a daemon that died keeps the
-- NOTIFY on, as before, until a live daemon reaps it.
--
-- SECURITY DEFINER, audited as in 000008: no argument, no row data; reads
-- pgfn.listener_state and pgfn.daemons (pgfn's tables, which no writer may
-- write) and calls only pg_catalog's current_setting, set_config,
-- clock_timestamp and pg_notify. EXECUTE stays revoked from PUBLIC.
create or replace function pgfn.wake() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- Once per transaction, however many events it wrote (events_wake's WHEN
  -- already queues it once; this covers SET CONSTRAINTS ... IMMEDIATE).
  if current_setting('pgfn.woken', true) = 'on' then
    return null;
  end if;
  perform set_config('pgfn.woken', 'on', true);
  if not exists (select 1 from pgfn.listener_state where awake_until > clock_timestamp())
    and exists (select 1 from pgfn.daemons) then
    -- Empty: identical notifications in a transaction collapse into one,
    -- and no row data meets NOTIFY's 8000-byte limit. The listener reads
    -- the outbox; the notification is only a wake-up call.
    perform pg_notify('pgfn_events', '');
  end if;
  return null;
end
$$;
