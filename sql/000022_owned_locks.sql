-- pgfn's own serialization took transaction-level advisory locks on keys
-- anyone can compute (hashtextextended('pgfn:concurrency:' || function, 0),
-- 'pgfn:replay:' || event), and any role may take any advisory lock, a
-- handler's db_role with no privilege on pgfn included: holding the key of
-- a function stopped every start of its runs (each waiting with a worker
-- slot and a connection) for as long as the holder's transaction lasted.
-- pg_locks shows every key held, so no salt would hide them. Now they are
-- row locks on pgfn's own rows, which take UPDATE on pgfn's tables:
-- * pgfn.start_run: the function's row in pgfn.functions (FOR NO KEY UPDATE).
-- * pgfn.replay_event: the oldest event left of the replayed chain.
-- Both keep their signatures, so create or replace keeps their owners and
-- grants.

-- Admission ---------------------------------------------------------------------

-- As in 000012_ordering.sql, under a lock of the function's row instead of
-- an advisory lock. What it serializes is unchanged: every admission of the
-- function (max_concurrency's count, the ordering gate, the half-open
-- probe) on every daemon, one at a time, until each one's commit. The row
-- lock conflicts with deploys and PATCHes of the function (a start waits
-- for the new settings, which it then reads) and with the once-a-second
-- last_run_at update of an outcome (src/db/runs.ts, touchLastRun), never
-- with inserts that refer to the function. Each such transaction locks at
-- most this one row of pgfn.functions before pgfn.circuits (as
-- pgfn.circuit_record after an outcome does), so no order of them deadlocks.
create or replace function pgfn.start_run(
  p_event_id bigint,
  p_function_name text,
  p_wasm_sha256 text,
  p_worker_id text,
  p_job_id bigint,
  p_max_concurrency integer
) returns table (id bigint, attempt integer, probe boolean, refused text, retry_at timestamptz)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_circuit pgfn.circuits;
  v_fn pgfn.function_info;
  v_probe boolean := false;
  v_id bigint;
  v_attempt integer;
  v_turn record;
begin
  -- The row lock below is held until commit: waiting for the WAL flush
  -- with it would serialize every start of a function behind the disk
  -- (measured: ~350 starts/s). A `running` row lost in a server crash costs
  -- nothing: the outcome, written with a synchronous commit, flushes it too,
  -- and without one the job runs again.
  perform set_config('synchronous_commit', 'off', true);
  if p_max_concurrency is not null then
    -- The function's own row, not an advisory lock: any role may take any
    -- advisory key (pg_locks shows which), and so hold every admission of
    -- the function; locking a row of pgfn.functions takes UPDATE on it.
    -- NO KEY UPDATE: the KEY SHARE locks of inserting rows that refer to the
    -- function (events, runs, circuits) do not wait for it, nor it for them.
    perform 1 from pgfn.functions f where f.name = p_function_name for no key update;
    select * into v_circuit from pgfn.circuits c where c.function_name = p_function_name;
    if found and v_circuit.state <> 'closed' then
      select * into v_fn from pgfn.function_info f where f.name = p_function_name;
      if v_circuit.state = 'open'
         and v_circuit.opened_at + make_interval(secs => v_fn.circuit_cooldown_ms / 1000.0) > clock_timestamp() then
        return query select null::bigint, null::integer, false,
          'CIRCUIT_OPEN'::text, v_circuit.opened_at + make_interval(secs => v_fn.circuit_cooldown_ms / 1000.0);
        return;
      end if;
      -- Half-open: one probe at a time. A probe expires when its attempt
      -- was abandoned (its daemon died), or after the function's timeout and
      -- a margin (the TTL: its daemon may have died between recording the
      -- outcome and reporting it), so a lost probe cannot hold the circuit
      -- half-open for ever.
      if v_circuit.state = 'half_open' and v_circuit.probe_started_at is not null
         and v_circuit.probe_started_at + make_interval(secs => v_fn.timeout_ms / 1000.0 + 30) > clock_timestamp()
         and exists (select 1 from pgfn.function_runs r where r.id = v_circuit.probe_run_id and r.status <> 'abandoned') then
        return query select null::bigint, null::integer, false,
          'CIRCUIT_OPEN'::text, clock_timestamp() + make_interval(secs => least(v_fn.circuit_cooldown_ms, 2000) / 1000.0);
        return;
      end if;
      v_probe := true;
    end if;
    if exists (select 1 from pgfn.functions f
               where f.name = p_function_name and f.ordering in ('function', 'row')) then
      select * into v_turn from pgfn.ordered_turn(p_function_name, p_event_id);
      if v_turn.refused is not null then
        return query select null::bigint, null::integer, false, v_turn.refused, v_turn.retry_at;
        return;
      end if;
    end if;
    if (select count(*) from pgfn.function_runs r
        where r.function_name = p_function_name and r.status = 'running') >= p_max_concurrency then
      return query select null::bigint, null::integer, false, 'CONCURRENCY_LIMIT'::text, null::timestamptz;
      return;
    end if;
  end if;
  insert into pgfn.function_runs (event_id, function_name, wasm_sha256, attempt, status, worker_id, job_id)
  values (
    p_event_id, p_function_name, p_wasm_sha256,
    (select count(*) + 1 from pgfn.function_runs r where r.event_id = p_event_id),
    'running', p_worker_id, p_job_id
  )
  returning function_runs.id, function_runs.attempt into v_id, v_attempt;
  if v_probe then
    update pgfn.circuits c
    set state = 'half_open', probe_run_id = v_id, probe_started_at = clock_timestamp(), updated_at = clock_timestamp()
    where c.function_name = p_function_name;
  end if;
  return query select v_id, v_attempt, v_probe, null::text, null::timestamptz;
end
$$;

comment on function pgfn.start_run(bigint, text, text, text, bigint, integer) is
  'Records the start of an attempt if the circuit, the function''s ordering (pgfn.ordered_turn) and max_concurrency allow it, deciding under a lock of the function''s row in pgfn.functions; otherwise says why not (refused) and when to try again (retry_at). The daemon calls it.';

comment on function pgfn.ordered_turn(text, bigint) is
  'Whether an attempt of an event of a function with ordering may start now: none of the function is running and every earlier event is finished. refused is null, or ORDERING with retry_at, when to ask again. Call only under the lock of the function''s row (pgfn.start_run).';

-- Replays and retries -----------------------------------------------------------

-- As in 000016_second_thoughts.sql, under a row lock instead of an advisory lock.
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
  v_oldest bigint;
begin
  select coalesce(e.original_id, e.id) into v_original from pgfn.events e where e.id = p_event_id;
  if not found then
    return;
  end if;
  -- Two replays of one original at once would both find none before them.
  -- So they take turns on a row of the chain, the oldest still there (the
  -- original, unless pgfn.prune deleted it): not an advisory lock, which
  -- any role may take. NO KEY UPDATE does not wait for, nor hold up, the
  -- KEY SHARE that inserting a run of the event takes.
  loop
    select x.id into v_oldest from pgfn.events x
    where x.id = v_original or x.original_id = v_original
    order by x.id
    limit 1;
    -- All of it pruned meanwhile: the copy below finds nothing to copy.
    exit when v_oldest is null;
    perform 1 from pgfn.events x where x.id = v_oldest for no key update;
    exit when found;
    -- Pruned while we waited for it: the next oldest.
  end loop;
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
