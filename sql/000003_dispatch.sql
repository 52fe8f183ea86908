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
