/**
 * The daemon's Prometheus metrics (docs/design.md section 5). One registry per
 * daemon, never prom-client's global one: two daemons in one process (tests,
 * `pgfn dev`) must not count each other's runs. Counters are fed from the runs
 * this daemon records; gauges are read from the database on each scrape, so
 * every daemon reports the same backlog and breaker states.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Logger } from "pino";
import type { Db } from "./db/database.js";
import type { EventRow } from "./db/events.js";
import { countUndispatched } from "./db/events.js";
import { circuitStates, type CircuitState } from "./db/metrics.js";
import type { Run } from "./db/runs.js";

/** `pgfn_circuit_state` values: the order a breaker moves through as things get worse. */
export const CIRCUIT_STATE_VALUE: Readonly<Record<CircuitState, number>> = Object.freeze({
  closed: 0,
  half_open: 1,
  open: 2,
});

/** Handler durations: a millisecond echo up to the 300 s maximum timeout. */
const DURATION_BUCKETS = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
];
/** Commit-to-start lag: a few milliseconds when keeping up, minutes when a backlog builds. */
const LAG_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900];

export interface Metrics {
  readonly registry: Registry;
  /** Counts one recorded run (ExecutorDeps.onRunFinished). */
  observeRun(run: Run, event: EventRow): void;
}

export interface MetricsOptions {
  readonly db: Db;
  readonly logger: Logger;
}

export function createMetrics(options: MetricsOptions): Metrics {
  const { db, logger } = options;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });

  const invocations = new Counter({
    name: "functions_invocations_total",
    help: "Runs recorded by this daemon, by function and outcome (succeeded or failed).",
    labelNames: ["name", "status"] as const,
    registers: [registry],
  });
  const errors = new Counter({
    name: "functions_errors_total",
    help: "Failed runs recorded by this daemon, by function and error code (FUNCTION_ERROR, TIMEOUT, ...).",
    labelNames: ["name", "error_type"] as const,
    registers: [registry],
  });
  const timeouts = new Counter({
    name: "functions_timeout_total",
    help: "Runs stopped at their function's timeout_ms.",
    labelNames: ["name"] as const,
    registers: [registry],
  });
  const memoryExceeded = new Counter({
    name: "functions_memory_exceeded_total",
    help: "Runs stopped at their function's memory_limit_mb.",
    labelNames: ["name"] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "functions_duration_seconds",
    help: "Handler wall-clock time per run, by function.",
    labelNames: ["name"] as const,
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const lag = new Histogram({
    name: "pgfn_event_lag_seconds",
    help: "From an event's commit (created_at) to the start of its first run, by event source.",
    labelNames: ["source"] as const,
    buckets: LAG_BUCKETS,
    registers: [registry],
  });

  // Scrape-time gauges read the database. A failing query must not fail the
  // scrape (the process metrics are still worth having): log and keep the last value.
  new Gauge({
    name: "pgfn_events_undispatched",
    help: "Committed events not yet turned into jobs (the whole database, not this daemon).",
    registers: [registry],
    async collect() {
      try {
        this.set(await countUndispatched(db));
      } catch (error) {
        logger.warn({ operation: "metrics", error: (error as Error).message }, "backlog not read");
      }
    },
  });
  new Gauge({
    name: "pgfn_circuit_state",
    help: "Circuit breaker state per function: 0 closed, 1 half_open, 2 open.",
    labelNames: ["name"] as const,
    registers: [registry],
    async collect() {
      try {
        const states = await circuitStates(db);
        // Deleted functions must disappear from the scrape.
        this.reset();
        for (const { name, state } of states) this.set({ name }, CIRCUIT_STATE_VALUE[state]);
      } catch (error) {
        logger.warn({ operation: "metrics", error: (error as Error).message }, "circuits not read");
      }
    },
  });

  return {
    registry,
    observeRun(run, event) {
      const name = run.function_name;
      invocations.inc({ name, status: run.status });
      if (run.status === "failed") {
        errors.inc({ name, error_type: run.error_code ?? "INTERNAL" });
        if (run.error_code === "TIMEOUT") timeouts.inc({ name });
        if (run.error_code === "MEMORY_EXCEEDED") memoryExceeded.inc({ name });
      }
      if (run.duration_ms !== null) duration.observe({ name }, run.duration_ms / 1000);
      // Later attempts start after a chosen backoff; counting them would
      // report the retry policy as lag.
      if (run.attempt === 1) {
        const seconds = (run.started_at.getTime() - event.created_at.getTime()) / 1000;
        lag.observe({ source: event.source }, Math.max(0, seconds));
      }
    },
  };
}
