/**
 * Rows as the functions API answers with them (the shapes of schemas.ts):
 * ids as numbers, timestamps as ISO strings, secret env values redacted,
 * durations rounded (roundMs). `pgfn functions --json`, `runs --json` and
 * `invoke --json` print the same objects, so a script reads one format.
 */
import type { z } from "zod";
import type { FunctionInfo, FunctionSummary } from "../db/functions.js";
import type { Run } from "../db/runs.js";
import { runtimeOf, SHOWN_COLUMNS } from "../functionColumns.js";
import { roundMs } from "../format.js";
import { SECRET_KEY } from "../sandbox/host/redact.js";
import type { FunctionListItem, FunctionView, RunView } from "./schemas.js";

const iso = (d: Date) => d.toISOString();
const isoOrNull = (d: Date | null) => (d ? d.toISOString() : null);

/** A function as GET shows it (FunctionView): its shown columns, timestamps as ISO strings. */
export function functionView(fn: FunctionInfo): z.input<typeof FunctionView> {
  const view: Record<string, unknown> = {};
  for (const column of SHOWN_COLUMNS) {
    const value = fn[column];
    view[column] = value instanceof Date ? iso(value) : value;
  }
  // An API key put in env must not come back out of a GET.
  view.env = Object.fromEntries(
    Object.entries(fn.env).map(([k, v]) => [k, SECRET_KEY.test(k) ? "[redacted]" : v]),
  );
  return view as z.input<typeof FunctionView>;
}

/** A function as GET /functions/v1 lists it: its view, runtime, schedule and recent runs. */
export function functionListItem({
  fn,
  schedule,
  recent,
}: FunctionSummary): z.input<typeof FunctionListItem> {
  return {
    ...functionView(fn),
    runtime: runtimeOf(fn),
    schedule: schedule
      ? {
          cron: schedule.cron,
          timezone: schedule.timezone,
          catch_up: schedule.catch_up,
          next_run: isoOrNull(schedule.next_run),
          last_run: isoOrNull(schedule.last_run),
          error: schedule.error,
        }
      : null,
    recent_runs: {
      finished: recent.finished,
      failed: recent.failed,
      // Four places: a share of at most RECENT_RUNS runs needs no more.
      error_rate:
        recent.finished === 0 ? null : Math.round((recent.failed / recent.finished) * 1e4) / 1e4,
    },
  };
}

/** A run (one attempt) as the API and `--json` show it. */
export function runView(run: Run): z.input<typeof RunView> {
  return {
    id: Number(run.id),
    event_id: Number(run.event_id),
    function_name: run.function_name,
    wasm_sha256: run.wasm_sha256,
    attempt: run.attempt,
    status: run.status,
    error_code: run.error_code,
    http_status: run.http_status,
    error_message: run.error_message,
    result: (run.result ?? null) as never,
    logs: (run.logs ?? []) as never,
    duration_ms: run.duration_ms === null ? null : roundMs(run.duration_ms),
    memory_peak_bytes: run.memory_peak_bytes === null ? null : Number(run.memory_peak_bytes),
    started_at: iso(run.started_at),
    finished_at: isoOrNull(run.finished_at),
    will_retry: run.will_retry,
    next_attempt_at: isoOrNull(run.next_attempt_at),
    worker_id: run.worker_id,
  };
}
