-- ordering = 'function': one event of the function at a time, in commit
-- order, decided by pgfn itself. Until now it rested on graphile-worker's
-- named queues, which run the jobs of a queue concurrently once the worker's
-- localQueue fetches several of them in one batch (graphile/worker#621, in
-- 0.17.3): two daemons started 24 events as 1,3,2,5,6,4,... with 153
-- overlapping pairs. The gate below holds whatever the job model does.
-- 'row' is served like 'function' for now: stricter than it needs to be,
-- never looser.

-- How far a function's events are known to be finished, so that the gate
-- reads only the events after that, never the function's whole history.
-- Written only under the per-function advisory lock of pgfn.start_run.
create table if not exists pgfn.ordering_progress (
  function_name text primary key references pgfn.functions (name) on delete cascade,
  -- Every event of the function with an id up to this one is finished, or
  -- will never exist (rolled back).
  done_through bigint not null default 0,
  -- Every event up to pending_through that pending_snapshot could see was
  -- finished. Ids are taken before commit, so a transaction then in progress
  -- may still commit an event below it; once every such transaction has
  -- ended, the finished prefix up to here becomes done_through.
  pending_through bigint,
  pending_snapshot pg_snapshot,
  updated_at timestamptz not null default now()
);

comment on table pgfn.ordering_progress is
  'Per ordered function: the events known to be finished (internal, for the ordering gate).';

-- Finished: the event will not run again unless a person replays it (which
-- makes a new event). It succeeded; or its last attempt failed or was
-- abandoned with no retry to come (a dead letter, or a synchronous invoke
-- whose caller got the error); or it has an open dead letter.
create or replace function pgfn.event_finished(p_event_id bigint) returns boolean
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select exists (
           select 1 from pgfn.function_runs r
           where r.event_id = p_event_id
             and (r.status = 'succeeded' or (r.status in ('failed', 'abandoned') and not r.will_retry)))
      or exists (
           select 1 from pgfn.dead_letters d
           where d.event_id = p_event_id and d.resolved_at is null)
$$;

comment on function pgfn.event_finished(bigint) is
  'Whether an event is done for good: it succeeded, or failed with no retry to come (dead letter). The ordering gate uses it.';

-- Whether an attempt of p_event_id may start now, for a function whose
-- events run one at a time in commit order. Call it only while holding the
-- function's advisory lock (pgfn.start_run takes it), and start the attempt
-- in the same transaction: the answer holds only until the lock is released.
--
-- It may start when (1) no attempt of the function is running, on any
-- daemon; and (2) every earlier event of the function is finished. An
-- earlier event that failed and waits for its retry holds the events behind
-- it (head of line) until it succeeds or becomes a dead letter; a dead
-- letter lets the next one go. "Earlier" is the event id, which is commit
-- order for events committed one after another; of two transactions
-- committing at the same time, the first one seen runs first.
--
-- refused is null when it may start; else 'ORDERING', with retry_at: when to
-- ask again, jitter included. The event next in line asks again soon (a
-- quarter of the time the running attempt has taken so far, 10 ms to 1 s,
-- or when the event ahead of it is due to retry); each event behind it 25 ms
-- later than the one before, up to 2 s more, so a backlog waits in line
-- instead of asking all at once.
create or replace function pgfn.ordered_turn(p_function text, p_event_id bigint)
returns table (refused text, retry_at timestamptz)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_progress pgfn.ordering_progress;
  v_done bigint;
  v_first bigint;
  v_through bigint;
  v_changed boolean := false;
  v_running_since timestamptz;
  v_retry_at timestamptz;
  v_behind integer;
begin
  select * into v_progress from pgfn.ordering_progress o where o.function_name = p_function;
  if not found then
    -- First use (a new function, or one switched to ordering): the first
    -- look reads its history once.
    insert into pgfn.ordering_progress (function_name) values (p_function)
    on conflict (function_name) do nothing;
    select * into v_progress from pgfn.ordering_progress o where o.function_name = p_function;
  end if;
  v_done := v_progress.done_through;

  -- Every transaction in progress when the pending prefix was seen has
  -- ended, so each event up to pending_through is visible now or never will
  -- be: the prefix is the part of it that is still finished.
  if v_progress.pending_snapshot is not null
     and pg_snapshot_xmin(pg_current_snapshot()) >= pg_snapshot_xmax(v_progress.pending_snapshot) then
    select min(e.id) into v_first
    from pgfn.events e
    where e.function_name = p_function and e.id > v_done and e.id <= v_progress.pending_through
      and not pgfn.event_finished(e.id);
    v_done := coalesce(v_first - 1, v_progress.pending_through);
    v_progress.pending_through := null;
    v_progress.pending_snapshot := null;
    v_changed := true;
  end if;

  -- The first unfinished event after the prefix: this one, or an earlier
  -- one that holds it. Reads the events since the prefix in id order,
  -- through the (function_name, id) index, and stops there.
  select e.id into v_first
  from pgfn.events e
  where e.function_name = p_function and e.id > v_done and not pgfn.event_finished(e.id)
  order by e.id
  limit 1;

  -- What this look found finished becomes the prefix once the transactions
  -- in progress now have ended: one of them may hold an id below it. The
  -- snapshot is taken after the look, so any such transaction is in it
  -- (a transaction's id is taken with its first write, which for a bare
  -- insert into pgfn.events comes a moment after its event id).
  if v_progress.pending_snapshot is null then
    v_through := coalesce(v_first - 1,
                          (select max(e.id) from pgfn.events e where e.function_name = p_function));
    if v_through > v_done then
      v_progress.pending_through := v_through;
      v_progress.pending_snapshot := pg_current_snapshot();
      v_changed := true;
    end if;
  end if;
  if v_changed then
    update pgfn.ordering_progress o
    set done_through = v_done, pending_through = v_progress.pending_through,
        pending_snapshot = v_progress.pending_snapshot, updated_at = clock_timestamp()
    where o.function_name = p_function;
  end if;

  -- (1) One at a time: also a second attempt of the running event (a
  -- duplicate job), or an event committed after a larger id began.
  select min(r.started_at) into v_running_since
  from pgfn.function_runs r
  where r.function_name = p_function and r.status = 'running';
  -- (2) Every earlier event finished.
  if v_running_since is null and (v_first is null or v_first >= p_event_id) then
    return query select null::text, null::timestamptz;
    return;
  end if;

  -- Refused. How far back in line (at most 80 looked at: 2 s).
  select count(*) into v_behind
  from (select 1 from pgfn.events e
        where e.function_name = p_function and e.id > v_first and e.id < p_event_id
        limit 80) q;
  if v_running_since is not null then
    v_retry_at := clock_timestamp() + make_interval(secs =>
      least(1.0, greatest(0.01, extract(epoch from clock_timestamp() - v_running_since) / 4)));
  else
    -- Held by v_first, which may wait for its retry.
    select r.next_attempt_at into v_retry_at
    from pgfn.function_runs r
    where r.event_id = v_first
    order by r.attempt desc
    limit 1;
    v_retry_at := greatest(v_retry_at, clock_timestamp() + interval '10 milliseconds');
  end if;
  return query select 'ORDERING'::text,
    v_retry_at + make_interval(secs => 0.025 * v_behind + random() * 0.01);
end
$$;

comment on function pgfn.ordered_turn(text, bigint) is
  'Whether an attempt of an event of a function with ordering may start now: none of the function is running and every earlier event is finished. refused is null, or ORDERING with retry_at, when to ask again. Call only under the function''s advisory lock (pgfn.start_run).';

-- As in 000006_admission.sql, with the ordering gate: under the same lock,
-- after the circuit (an open circuit defers to its cooldown, not to a poll)
-- and before max_concurrency.
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
  'Records the start of an attempt if the circuit, the function''s ordering (pgfn.ordered_turn) and max_concurrency allow it; otherwise says why not (refused) and when to try again (retry_at). The daemon calls it.';

-- Called when an attempt of an ordered function has been recorded: the
-- event now first in line (it may have been refused while this one ran)
-- runs now instead of at its deferral, which graphile-worker only finds at
-- its next poll (pollInterval, 1 s by default). Only a deferral
-- (pgfn:wait:<id>) is moved, never a retry, whose delay is the function's
-- policy. A hint: the gate decides, under the lock, whether it may start.
create or replace function pgfn.ordered_wake(p_function text) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_next bigint;
  v_jobs bigint[];
begin
  select e.id into v_next
  from pgfn.events e
  where e.function_name = p_function
    and e.id > coalesce((select o.done_through from pgfn.ordering_progress o where o.function_name = p_function), 0)
    and not pgfn.event_finished(e.id)
  order by e.id
  limit 1;
  if v_next is null then
    return;
  end if;
  select array_agg(j.id) into v_jobs
  from graphile_worker.jobs j
  where j.key = 'pgfn:wait:' || v_next and j.locked_at is null and j.run_at > now();
  if v_jobs is not null then
    perform graphile_worker.reschedule_jobs(v_jobs, run_at => now());
    -- What graphile-worker's add_jobs sends: idle workers fetch at once.
    perform pg_notify('jobs:insert', '{"count":1}');
  end if;
end
$$;

comment on function pgfn.ordered_wake(text) is
  'Runs the deferred job of the event first in line of an ordered function now (after an attempt of the function was recorded). The daemon calls it.';
