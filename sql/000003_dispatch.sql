-- Dispatch: outbox rows become graphile-worker jobs, exactly once.
--
-- One transaction claims a batch of undispatched events (SKIP LOCKED, so
-- concurrent daemons take disjoint batches instead of waiting), adds one job
-- per event in a single add_jobs call, and marks the events dispatched. Either
-- all three happen or none: a crash between them leaves the events
-- undispatched, to be claimed again. job_key 'pgfn:event:<id>' makes a second
-- add for the same event update the pending job instead of duplicating it.
create or replace function pgfn.dispatch(p_limit integer default 500) returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids bigint[];
  v_specs graphile_worker.job_spec[];
begin
  with claimed as (
    select e.id, e.function_name
    from pgfn.events e
    where e.dispatched_at is null
    order by e.id
    limit greatest(p_limit, 1)
    for update skip locked
  )
  select
    array_agg(c.id order by c.id),
    array_agg(row(
      'pgfn_run',
      json_build_object('event_id', c.id),
      -- A named queue runs its jobs one at a time, in order: that is what
      -- ordering = 'function' promises. 'row' is served the same way for
      -- now (stricter than it needs to be, never looser).
      case when f.ordering in ('function', 'row') then 'pgfn:' || c.function_name end,
      null, null,
      'pgfn:event:' || c.id,
      null, null
    )::graphile_worker.job_spec order by c.id)
  into v_ids, v_specs
  from claimed c
  left join pgfn.functions f on f.name = c.function_name;

  if v_ids is null then
    return 0;
  end if;

  perform graphile_worker.add_jobs(v_specs);
  update pgfn.events set dispatched_at = clock_timestamp() where id = any (v_ids);
  return cardinality(v_ids);
end
$$;

comment on function pgfn.dispatch(integer) is
  'Turns up to p_limit undispatched events into graphile-worker jobs and returns how many. The daemon calls it; calling it by hand is harmless.';

-- Dispatch for a listener that polls while there is work (see pgfn.wake):
-- finding work keeps triggers from sending NOTIFY for p_awake_ms more; the
-- caller may go back to waiting for notifications (may_sleep) only once
-- p_margin_ms have passed after that, long enough for any transaction that
-- skipped its NOTIFY to have become visible to a poll.
create or replace function pgfn.dispatch_awake(p_limit integer, p_awake_ms integer, p_margin_ms integer)
returns table (dispatched integer, may_sleep boolean)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_n integer := pgfn.dispatch(p_limit);
  v_until timestamptz;
begin
  if v_n > 0 then
    -- Skip locked: if another listener's dispatch holds the row, it is
    -- extending the same promise; waiting for it would serialize commits.
    perform 1 from pgfn.listener_state for update skip locked;
    if found then
      update pgfn.listener_state set awake_until = clock_timestamp() + make_interval(secs => p_awake_ms / 1000.0);
    elsif not exists (select 1 from pgfn.listener_state) then
      -- Unlogged: a server crash empties it.
      insert into pgfn.listener_state (id) values (true) on conflict do nothing;
    end if;
  end if;
  select awake_until into v_until from pgfn.listener_state;
  return query select v_n,
    v_n = 0 and (v_until is null or clock_timestamp() > v_until + make_interval(secs => p_margin_ms / 1000.0));
end
$$;
