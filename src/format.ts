/**
 * Human-readable output for the CLI, and how durations are rounded: to
 * 0.1 ms for people (msText), to 0.01 ms in JSON (roundMs).
 */
import type { FunctionSummary } from "./db/functions.js";
import { RECENT_RUNS } from "./db/functions.js";
import type { RunLogLine, Run } from "./db/runs.js";
import { runtimeOf } from "./functionColumns.js";

/**
 * A duration in ms as JSON carries it (the API, `--json`, the daemon's log
 * line): to 0.01 ms. The clock gives 83.27845999999954; the digits past
 * the hundredths are timer noise, not information.
 */
export function roundMs(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/** A duration in ms for people: "83.3". */
export function msText(ms: number): string {
  return ms.toFixed(1);
}

/** A time for people, in UTC to the second: "2026-12-02 16:20:11". */
export function timeText(at: Date): string {
  return at.toISOString().replace("T", " ").slice(0, 19);
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** How much of a result or an error message a run's line shows. (80) */
const RUN_LINE_CHARS = 80;

/** One line per run, for `pgfn dev` and `pgfn start` in a terminal. */
export function formatRunLine(run: Run): string {
  const outcome =
    run.status === "succeeded"
      ? truncate(JSON.stringify(run.result), RUN_LINE_CHARS)
      : `${run.error_code ?? ""} ${truncate(run.error_message ?? "", RUN_LINE_CHARS)}`;
  const ms = run.duration_ms === null ? "-" : `${msText(run.duration_ms)} ms`;
  return `run ${run.id} event ${run.event_id} ${run.function_name} attempt ${run.attempt}: ${run.status} in ${ms} ${outcome}`;
}

/**
 * A failed run's whole message and the lines its handler logged (a thrown
 * error's stack among them): what the run's line cuts short, for one run
 * looked at on purpose (`pgfn invoke`).
 */
export function formatRunFailure(run: Run): string {
  // Said again only when the run's line cut it short.
  const message = run.error_message ?? "";
  const failure =
    message.length > RUN_LINE_CHARS ? `${run.error_code ?? "failed"}: ${message}` : "";
  const logged: RunLogLine[] = (Array.isArray(run.logs) ? run.logs : []).map((line) => {
    const l = (line ?? {}) as { at?: unknown; level?: unknown; message?: unknown };
    const at = typeof l.at === "string" ? new Date(l.at) : undefined;
    return {
      runId: run.id,
      at: at && !Number.isNaN(at.getTime()) ? at : run.started_at,
      level: typeof l.level === "string" ? l.level : "info",
      message: typeof l.message === "string" ? l.message : JSON.stringify(line),
    };
  });
  return [failure, logged.length > 0 && formatLogLines(logged)].filter(Boolean).join("\n\n");
}

/** A plain text table. */
export function formatTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd();
  return [line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

export function formatRunsTable(runs: readonly Run[]): string {
  if (runs.length === 0) return "(no runs)";
  return formatTable(
    ["run", "event", "function", "attempt", "status", "code", "ms", "started", "result / error"],
    runs.map((r) => [
      r.id,
      r.event_id,
      r.function_name,
      String(r.attempt),
      r.status,
      r.http_status === null ? "" : String(r.http_status),
      r.duration_ms === null ? "" : msText(r.duration_ms),
      timeText(r.started_at),
      truncate(
        r.status === "succeeded"
          ? JSON.stringify(r.result)
          : `${r.error_code ?? ""}: ${r.error_message ?? ""}`,
        60,
      ),
    ]),
  );
}

/** "33% (1/3)": the share of failed or abandoned runs among the latest finished ones. */
function errorRateText({ finished, failed }: FunctionSummary["recent"]): string {
  if (finished === 0) return "-";
  const percent = Math.round((failed / finished) * 100);
  return `${percent === 0 && failed > 0 ? "<1" : percent}% (${failed}/${finished})`;
}

function scheduleText(schedule: FunctionSummary["schedule"]): string {
  if (!schedule) return "-";
  const when = `${schedule.cron} ${schedule.timezone}`;
  return schedule.error ? `${when} (not firing: ${truncate(schedule.error, 50)})` : when;
}

/** `pgfn functions`: one row per function. */
export function formatFunctionsTable(functions: readonly FunctionSummary[]): string {
  if (functions.length === 0) return "(no functions: deploy one with `pgfn deploy NAME FILE.wasm`)";
  return formatTable(
    [
      "name",
      "runtime",
      "enabled",
      "last run",
      "last status",
      `errors (last ${RECENT_RUNS} runs)`,
      "schedule",
    ],
    functions.map(({ fn, schedule, recent }) => [
      fn.name,
      runtimeOf(fn),
      fn.enabled ? "yes" : "no",
      fn.last_run_at ? timeText(fn.last_run_at) : "-",
      fn.last_status ?? "-",
      errorRateText(recent),
      scheduleText(schedule),
    ]),
  );
}

/** `pgfn logs`: one row per log line, oldest first; a line's own newlines shown as \n. */
export function formatLogLines(lines: readonly RunLogLine[]): string {
  return formatTable(
    ["time", "level", "run", "message"],
    // A stack or any multi-line message keeps its lines: the later ones go
    // under the message column, so the other columns still read as one line.
    lines.flatMap((l) => {
      const [first = "", ...rest] = l.message.split(/\r?\n/);
      return [
        [l.at.toISOString().replace("T", " ").slice(0, 23), l.level, l.runId, first],
        ...rest.map((more) => ["", "", "", more]),
      ];
    }),
  );
}

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparseable URL)";
  }
}
