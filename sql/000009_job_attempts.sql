-- graphile-worker's own retries must never outlast the function's. A job
-- whose task throws (pgfn could not even record the attempt's failure: the
-- database went away) is retried by graphile-worker up to the job's
-- max_attempts, 25 unless told otherwise, and when those run out the event
-- is left with no dead letter and no on_error. Every pgfn_run job is
-- therefore added with the attempts its event has left, plus one: each
-- graphile-worker attempt of the job starts one attempt of the event
-- (pgfn.start_run numbers them), and the extra one never runs the handler
-- (the daemon refuses an attempt past the function's max_attempts) but
-- records the dead letter and enqueues on_error for an event whose last
-- attempt could not be recorded.
create or replace function pgfn.job_max_attempts(p_max_attempts integer, p_next_attempt integer)
returns integer
language sql immutable
set search_path = pg_catalog, pg_temp
as $$ select greatest(1, coalesce(p_max_attempts, 1) - p_next_attempt + 2) $$;

comment on function pgfn.job_max_attempts(integer, integer) is
  'graphile-worker max_attempts for the job that starts attempt p_next_attempt of an event whose function allows p_max_attempts: the attempts left, plus one that only records the dead letter. The daemon uses it.';

-- As in 000003_dispatch.sql, with max_attempts set on each job.
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
      null,
      -- A new event's first attempt; a missing function gets 1 + 1.
      pgfn.job_max_attempts(f.max_attempts, 1),
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
