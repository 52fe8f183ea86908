-- The circuit breaker, one row per function, shared by every daemon.
-- closed: runs go through; failures and successes are counted over a window.
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
  -- Outcomes counted since window_started_at (closed state only).
  window_started_at timestamptz not null default now(),
  successes integer not null default 0,
  failures integer not null default 0,
  opened_at timestamptz,
  -- The single run let through while half_open, and when it started.
  probe_run_id bigint,
  probe_started_at timestamptz,
  updated_at timestamptz not null default now()
);

comment on table pgfn.circuits is
  'Circuit breaker state per function, shared by every daemon. No row means closed.';
