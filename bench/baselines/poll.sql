-- `poll`, an outbox relay in the style of Hasura's event triggers: the
-- trigger writes the row into an outbox; a relay (poll.worker.ts) claims
-- batches of 100 with FOR UPDATE SKIP LOCKED, "delivers" each (records its
-- start), marks them delivered, and sleeps 1 s whenever a batch was not full.
create table if not exists bench.poll_outbox (
  id bigint generated always as identity primary key,
  payload jsonb not null,
  created_at timestamptz not null default clock_timestamp(),
  delivered_at timestamptz
);
create index if not exists poll_outbox_pending_idx on bench.poll_outbox (id) where delivered_at is null;

create or replace function bench.poll_enqueue() returns trigger
language plpgsql
as $$
begin
  insert into bench.poll_outbox (payload) values (to_jsonb(new));
  return null;
end
$$;

drop trigger if exists bench_poll on bench.load_poll;
create trigger bench_poll after insert on bench.load_poll
  for each row execute function bench.poll_enqueue();

create table if not exists bench.poll_runs (
  id bigint generated always as identity primary key,
  event_id bigint not null, -- bench.poll_outbox.id
  started_at timestamptz not null default clock_timestamp(),
  finished_at timestamptz
);
create index if not exists poll_runs_event_idx on bench.poll_runs (event_id);
