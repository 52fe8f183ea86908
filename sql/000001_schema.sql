-- The pgfn schema: functions (what runs), events (the durable outbox: what
-- happened), function_runs (one row per attempt: what came of it).
-- Every statement is idempotent so a half-applied migration can simply re-run.

create schema if not exists pgfn;

comment on schema pgfn is
  'pgfn: committed rows run sandboxed WebAssembly handlers; every outcome is a row.';

create table if not exists pgfn.functions (
  name text primary key
    constraint functions_name_format check (name ~ '^[a-z][a-z0-9_-]{0,63}$'),
  description text not null default '',
  wasm bytea not null
    -- 10 MiB: the failure spec's PAYLOAD_TOO_LARGE limit for a module.
    constraint functions_wasm_size check (octet_length(wasm) between 8 and 10485760),
  wasm_sha256 text not null
    constraint functions_wasm_sha256_hex check (wasm_sha256 ~ '^[0-9a-f]{64}$'),
  -- The Extism export called for each event.
  entrypoint text not null default 'handle',
  enabled boolean not null default true,
  timeout_ms integer not null default 10000
    constraint functions_timeout_range check (timeout_ms between 1000 and 300000),
  memory_limit_mb integer not null default 128
    constraint functions_memory_range check (memory_limit_mb between 16 and 512),
  max_concurrency integer not null default 100
    constraint functions_concurrency_range check (max_concurrency between 1 and 10000),
  max_attempts integer not null default 3
    constraint functions_attempts_range check (max_attempts between 1 and 100),
  retry_base_ms integer not null default 1000
    constraint functions_retry_base_range check (retry_base_ms between 0 and 86400000),
  retry_max_ms integer not null default 300000
    constraint functions_retry_max_range check (retry_max_ms between 0 and 86400000),
  env jsonb not null default '{}'
    constraint functions_env_object check (jsonb_typeof(env) = 'object'),
  allowed_hosts text[] not null default '{}',
  db_role text,
  -- No foreign key: an error handler may be deployed after the function that
  -- names it, and deleting it must not rewrite other functions.
  on_error text
    constraint functions_on_error_format check (on_error ~ '^[a-z][a-z0-9_-]{0,63}$'),
  ordering text not null default 'none'
    constraint functions_ordering check (ordering in ('none', 'function', 'row')),
  last_run_at timestamptz,
  last_status text
    constraint functions_last_status check (last_status in ('running', 'succeeded', 'failed', 'abandoned')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint functions_retry_bounds check (retry_max_ms >= retry_base_ms)
);

-- The outbox. Rows are written by triggers inside the user's transaction, so
-- an event exists exactly when the row change committed.
create table if not exists pgfn.events (
  id bigint generated always as identity primary key,
  -- No foreign key either: an event for a function that is missing or
  -- disabled must survive (it fails as FUNCTION_NOT_FOUND and can be retried
  -- once the function is back), and a trigger may be declared before deploy.
  function_name text not null,
  source text not null default 'database'
    constraint events_source check (source in ('database', 'http', 'schedule', 'manual', 'error_handler')),
  table_schema text,
  table_name text,
  operation text
    constraint events_operation check (operation in ('INSERT', 'UPDATE', 'DELETE')),
  old jsonb,
  new jsonb,
  payload jsonb,
  -- clock_timestamp(), not now(): now() is the start of the user's
  -- transaction, which would inflate the measured commit-to-run lag.
  created_at timestamptz not null default clock_timestamp(),
  dispatched_at timestamptz
);

-- Dispatch scans only this: small while the daemon keeps up.
create index if not exists events_undispatched_idx
  on pgfn.events (id) where dispatched_at is null;
create index if not exists events_function_idx
  on pgfn.events (function_name, id);

create table if not exists pgfn.function_runs (
  id bigint generated always as identity primary key,
  event_id bigint not null references pgfn.events (id) on delete cascade,
  function_name text not null,
  wasm_sha256 text,
  attempt integer not null
    constraint function_runs_attempt_positive check (attempt >= 1),
  status text not null default 'running'
    constraint function_runs_status check (status in ('running', 'succeeded', 'failed', 'abandoned')),
  error_code text
    constraint function_runs_error_code check (error_code in (
      'FUNCTION_NOT_FOUND', 'INVALID_REQUEST', 'CONFLICT', 'PAYLOAD_TOO_LARGE',
      'CONCURRENCY_LIMIT', 'FUNCTION_ERROR', 'HOST_FUNCTION_ERROR', 'CIRCUIT_OPEN',
      'TIMEOUT', 'MEMORY_EXCEEDED', 'INTERNAL')),
  http_status integer,
  error_message text,
  result jsonb,
  -- [{ "level": "info", "message": "...", "at": "..." }, ...] from the handler's log calls.
  logs jsonb not null default '[]',
  duration_ms double precision,
  memory_peak_bytes bigint,
  started_at timestamptz not null default clock_timestamp(),
  finished_at timestamptz,
  will_retry boolean not null default false,
  next_attempt_at timestamptz,
  worker_id text,
  -- The graphile-worker job that ran this attempt (jobs are deleted when done).
  job_id bigint
);

create index if not exists function_runs_event_idx on pgfn.function_runs (event_id, attempt);
create index if not exists function_runs_function_idx on pgfn.function_runs (function_name, id desc);
create index if not exists function_runs_running_idx on pgfn.function_runs (worker_id) where status = 'running';
