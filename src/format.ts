/** Human-readable output for the CLI. */
import type { Run } from "./db/runs.js";

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** One line per run, for `pgfn dev` and `pgfn start` in a terminal. */
export function formatRunLine(run: Run): string {
  const outcome =
    run.status === "succeeded"
      ? truncate(JSON.stringify(run.result), 80)
      : `${run.error_code ?? ""} ${truncate(run.error_message ?? "", 80)}`;
  const ms = run.duration_ms === null ? "-" : `${run.duration_ms.toFixed(1)} ms`;
  return `run ${run.id} event ${run.event_id} ${run.function_name} attempt ${run.attempt}: ${run.status} in ${ms} ${outcome}`;
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
      r.duration_ms === null ? "" : r.duration_ms.toFixed(1),
      r.started_at.toISOString().replace("T", " ").slice(0, 19),
      truncate(
        r.status === "succeeded"
          ? JSON.stringify(r.result)
          : `${r.error_code ?? ""}: ${r.error_message ?? ""}`,
        60,
      ),
    ]),
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
