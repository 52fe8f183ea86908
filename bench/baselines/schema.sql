-- The tables the bench writes to: one per system, so each trigger sees only
-- its own rows, and all of the same shape. created_at is the server clock at
-- the row's insert, the clock every run's started_at is read from too.
create schema if not exists bench;

create table if not exists bench.load_none (
  id bigint generated always as identity primary key,
  v text not null,
  created_at timestamptz not null default clock_timestamp()
);
create table if not exists bench.load_pgfn (like bench.load_none including all);
create table if not exists bench.load_direct (like bench.load_none including all);
create table if not exists bench.load_poll (like bench.load_none including all);

-- pgfn as a user declares it: the `echo` example runs for every insert.
select pgfn.attach('bench.load_pgfn', 'echo', array['INSERT']);
