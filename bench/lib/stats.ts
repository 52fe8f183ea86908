/** Percentiles, and latencies that have not ended yet. */

/** The p-th percentile of an ascending array (nearest rank); NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

/** A latency sample: `open` when the handler had not started by the cutoff, so `ms` is a lower bound. */
export interface Sample {
  readonly ms: number;
  readonly open: boolean;
}

export interface LatencySummary {
  readonly count: number;
  /** Samples whose handler had not started by the cutoff. */
  readonly open: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
  /** Per figure: true when open samples may lie under it, so the true value may be larger. */
  readonly lowerBound: { p50: boolean; p95: boolean; p99: boolean; max: boolean };
}

/**
 * Percentiles over every event, started or not. An event still waiting at
 * the cutoff counts with its wait so far, a lower bound: leaving it out would
 * report the events that got through and hide the ones that did not.
 */
export function summarise(samples: readonly Sample[]): LatencySummary {
  const sorted = [...samples].sort((a, b) => a.ms - b.ms);
  const ms = sorted.map((s) => s.ms);
  // An open sample's true value is larger than its `ms`, so it can move past
  // any rank at or above its own: a percentile is exact only when no open
  // sample sorts at or below it.
  const firstOpen = sorted.findIndex((s) => s.open);
  const bound = (p: number) =>
    firstOpen !== -1 && firstOpen <= Math.ceil((p / 100) * sorted.length) - 1;
  return {
    count: sorted.length,
    open: sorted.filter((s) => s.open).length,
    p50: percentile(ms, 50),
    p95: percentile(ms, 95),
    p99: percentile(ms, 99),
    max: ms.at(-1) ?? NaN,
    lowerBound: { p50: bound(50), p95: bound(95), p99: bound(99), max: firstOpen !== -1 },
  };
}

/** Least-squares slope of y over x. */
export function slope(points: readonly (readonly [number, number])[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}
