-- Whether an attempt may start: max_concurrency across every daemon, and the
-- function's circuit breaker. Both are decided in pgfn.start_run under one
-- per-function advisory lock, so two daemons cannot both take the last slot
-- or both become the half-open probe.

create index if not exists function_runs_running_fn_idx
  on pgfn.function_runs (function_name) where status = 'running';

-- The circuit breaker, one row per function, shared by every daemon.
-- closed: runs go through; failures are counted over a window.
-- open: the error rate passed the threshold; work is deferred, not failed.
-- half_open: the cooldown passed; one probe run decides (success closes,
-- failure opens again). A probe whose daemon died expires after a TTL.
alter table pgfn.functions
  add column if not exists circuit_error_rate real not null default 0.5
    constraint functions_circuit_error_rate check (circuit_error_rate > 0 and circuit_error_rate <= 1),
  add column if not exists circuit_min_volume integer not null default 20
    constraint functions_circuit_min_volume check (circuit_min_volume >= 1),
  add column if not exists circuit_window_ms integer not null default 60000
    constraint functions_circuit_window check (circuit_window_ms between 1000 and 86400000),
  add column if not exists circuit_cooldown_ms integer not null default 30000
    constraint functions_circuit_cooldown check (circuit_cooldown_ms between 100 and 86400000);

create table if not exists pgfn.circuits (
  function_name text primary key references pgfn.functions (name) on delete cascade,
  state text not null default 'closed'
    constraint circuits_state check (state in ('closed', 'open', 'half_open')),
  -- Failures counted since window_started_at (closed state only).
  window_started_at timestamptz not null default now(),
  failures integer not null default 0,
  opened_at timestamptz,
  -- Outcomes before the last close do not count against the function again.
  closed_at timestamptz,
  -- The single run let through while half_open, and when it started.
  probe_run_id bigint,
  probe_started_at timestamptz,
  updated_at timestamptz not null default now()
);

comment on table pgfn.circuits is
  'Circuit breaker state per function, shared by every daemon. No row means closed.';

-- The error rate is counted from function_runs over the last window_ms
-- (sliding), only once the failures counter (tumbling, cheap) says the
-- circuit could open: a healthy function's runs never write to pgfn.circuits.
create index if not exists function_runs_finished_idx
  on pgfn.function_runs (function_name, finished_at);

-- A function without its module: what a run needs to know, without reading
-- (and detoasting) up to 10 MB of WebAssembly per event. List new columns of
-- pgfn.functions here too.
create or replace view pgfn.function_info as
select name, description, wasm_sha256, entrypoint, enabled, timeout_ms, memory_limit_mb,
       max_concurrency, max_attempts, retry_base_ms, retry_max_ms, env, allowed_hosts, db_role,
       on_error, ordering, circuit_error_rate, circuit_min_volume, circuit_window_ms,
       circuit_cooldown_ms, last_run_at, last_status, created_at, updated_at
from pgfn.functions;

-- The outcomes that say the function is unhealthy. Not found, bad input,
-- limits of ours and abandoned attempts say nothing about it.
create or replace function pgfn.circuit_counts(p_error_code text) returns boolean
language sql immutable
as $$ select p_error_code in ('FUNCTION_ERROR', 'HOST_FUNCTION_ERROR', 'TIMEOUT', 'MEMORY_EXCEEDED') $$;

-- Starts an attempt if the function's circuit and max_concurrency allow it,
-- all under one per-function advisory lock so daemons cannot race past
-- either. refused is null for a started run; else 'CIRCUIT_OPEN' or
-- 'CONCURRENCY_LIMIT', with retry_at when waiting makes sense.
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
begin
  -- The advisory lock below is held until commit: waiting for the WAL flush
  -- with it would serialize every start of a function behind the disk
  -- (measured: ~350 starts/s). A `running` row lost in a server crash costs
  -- nothing: the outcome, written with a synchronous commit, flushes it too,
  -- and without one the job runs again.
  perform set_config('synchronous_commit', 'off', true);
  if p_max_concurrency is not null then
    perform pg_advisory_xact_lock(hashtextextended('pgfn:concurrency:' || p_function_name, 0));
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
  'Records the start of an attempt if the circuit and max_concurrency allow it; otherwise says why not (refused) and when to try again (retry_at). The daemon calls it.';

-- What an attempt's outcome does to its function's circuit. Called after the
-- outcome is recorded; cheap for a healthy function (one indexed read).
create or replace function pgfn.circuit_record(p_run_id bigint) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_run pgfn.function_runs;
  v_fn pgfn.function_info;
  v_circuit pgfn.circuits;
  v_total integer;
  v_failed integer;
begin
  select * into v_run from pgfn.function_runs r where r.id = p_run_id;
  if not found or v_run.status not in ('succeeded', 'failed') then
    return null;
  end if;
  select * into v_circuit from pgfn.circuits c where c.function_name = v_run.function_name for update;

  if found and v_circuit.probe_run_id = v_run.id and v_circuit.state = 'half_open' then
    if v_run.status = 'succeeded' then
      update pgfn.circuits
      set state = 'closed', failures = 0, opened_at = null, probe_run_id = null, probe_started_at = null,
          window_started_at = clock_timestamp(), closed_at = clock_timestamp(), updated_at = clock_timestamp()
      where function_name = v_run.function_name;
      return 'closed';  -- a transition: the daemon logs it
    elsif pgfn.circuit_counts(v_run.error_code) then
      update pgfn.circuits
      set state = 'open', opened_at = clock_timestamp(), probe_run_id = null, probe_started_at = null,
          updated_at = clock_timestamp()
      where function_name = v_run.function_name;
      return 'reopened';
    end if;
    -- The probe proved nothing either way (not found, bad input): the next attempt probes.
    update pgfn.circuits set probe_run_id = null, probe_started_at = null, updated_at = clock_timestamp()
    where function_name = v_run.function_name;
    return 'half_open';
  end if;

  if v_run.status = 'succeeded' or not pgfn.circuit_counts(v_run.error_code) then
    return coalesce(v_circuit.state, 'closed');
  end if;
  if v_circuit.state <> 'closed' then
    return v_circuit.state; -- a straggler that started before the circuit opened
  end if;

  select * into v_fn from pgfn.function_info f where f.name = v_run.function_name;
  if not found then
    return null;
  end if;
  if v_circuit.function_name is null then
    insert into pgfn.circuits (function_name)
    values (v_run.function_name)
    on conflict (function_name) do nothing;
    select * into v_circuit from pgfn.circuits c where c.function_name = v_run.function_name for update;
  end if;
  -- The counter is tumbling: past the window's length it starts again.
  if v_circuit.window_started_at + make_interval(secs => v_fn.circuit_window_ms / 1000.0) < clock_timestamp() then
    v_circuit.window_started_at := clock_timestamp();
    v_circuit.failures := 0;
  end if;
  v_circuit.failures := v_circuit.failures + 1;
  if v_circuit.failures >= v_fn.circuit_min_volume * v_fn.circuit_error_rate then
    -- The exact rate, over outcomes that finished within the last window.
    select count(*), count(*) filter (where r.status = 'failed' and pgfn.circuit_counts(r.error_code))
    into v_total, v_failed
    from pgfn.function_runs r
    where r.function_name = v_run.function_name
      and r.finished_at > greatest(clock_timestamp() - make_interval(secs => v_fn.circuit_window_ms / 1000.0),
                                   coalesce(v_circuit.closed_at, '-infinity'))
      and r.status in ('succeeded', 'failed');
    if v_total >= v_fn.circuit_min_volume and v_failed >= v_total * v_fn.circuit_error_rate then
      v_circuit.state := 'open';
      v_circuit.opened_at := clock_timestamp();
    end if;
  end if;
  update pgfn.circuits
  set state = v_circuit.state, failures = v_circuit.failures, opened_at = v_circuit.opened_at,
      window_started_at = v_circuit.window_started_at,
      updated_at = clock_timestamp()
  where function_name = v_run.function_name;
  return case when v_circuit.state = 'open' then 'opened' else v_circuit.state end;
end
$$;

comment on function pgfn.circuit_record(bigint) is
  'Counts a finished attempt against its function''s circuit: opens it past the error rate, and a half-open probe closes or reopens it. Returns the state, or the transition (opened, reopened, closed). The daemon calls it.';

-- For people: close a circuit by hand (after a fix), letting deferred work through.
create or replace function pgfn.close_circuit(p_function_name text) returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  update pgfn.circuits
  set state = 'closed', failures = 0, opened_at = null, probe_run_id = null, probe_started_at = null,
      window_started_at = clock_timestamp(), closed_at = clock_timestamp(),
      updated_at = clock_timestamp()
  where function_name = p_function_name;
  if not found then
    if not exists (select 1 from pgfn.functions where name = p_function_name) then
      raise exception 'pgfn.close_circuit: no function named "%"', p_function_name
        using errcode = 'no_data_found';
    end if;
  end if;
  return format('circuit of %s is closed', p_function_name);
end
$$;


-- Everything a worker does before running an event, in one round trip (it
-- is the hot path): the event, its function, whether it is already done
-- (then it must not run again), and the start of the attempt as
-- pgfn.start_run decides it. No row: the event no longer exists.
--
-- Done means: it succeeded (in any job); or this very job already recorded
-- its failure (a job runs again after a crash or an internal error, and the
-- failure's retry, if any, is a job of its own); or it is in the dead
-- letters, waiting for a person.
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
  return query
    select to_jsonb(v_event), case when v_fn.name is not null then to_jsonb(v_fn) end, null::bigint,
           s.id, s.attempt, s.probe, s.refused, s.retry_at
    from pgfn.start_run(p_event_id, v_event.function_name, v_fn.wasm_sha256, p_worker_id, p_job_id,
                        case when v_fn.enabled then v_fn.max_concurrency end) s;
end
$$;

comment on function pgfn.begin_run(bigint, text, bigint) is
  'Loads an event and its function and starts an attempt (see pgfn.start_run), in one call. The daemon calls it.';
