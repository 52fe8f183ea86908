-- JavaScript handlers (issue 14): a function is either an Extism module
-- (runtime 'wasm', as before) or a .ts/.mts/.js/.mjs file compiled at deploy
-- and run in the sandbox's JavaScript engine (runtime 'js'). For 'js', wasm
-- holds the compiled script, so loading, hashing and verifying a function's
-- code stay one path; source keeps the file as the user wrote it, to read
-- back.
alter table pgfn.functions
  add column if not exists runtime text not null default 'wasm';
alter table pgfn.functions drop constraint if exists functions_runtime;
alter table pgfn.functions
  add constraint functions_runtime check (runtime in ('wasm', 'js'));
alter table pgfn.functions
  add column if not exists source text;

-- A run reads the runtime (not the source: up to 10 MB, like the module).
-- Columns are only ever added at the end, so create or replace keeps the
-- view's type, which pgfn.start_run and pgfn.begin_run declare variables of.
create or replace view pgfn.function_info as
select name, description, wasm_sha256, entrypoint, enabled, timeout_ms, memory_limit_mb,
       max_concurrency, max_attempts, retry_base_ms, retry_max_ms, env, allowed_hosts, db_role,
       on_error, ordering, circuit_error_rate, circuit_min_volume, circuit_window_ms,
       circuit_cooldown_ms, last_run_at, last_status, created_at, updated_at, runtime
from pgfn.functions;
