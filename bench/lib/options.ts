/**
 * `npm run bench`'s options. Parsed before anything is started, so a typo
 * costs a second, not a Postgres start-up.
 */
import { parseArgs } from "node:util";

export const SECTIONS = [
  "latency",
  "throughput",
  "writepath",
  "recovery",
  "backlog",
  "sandbox",
] as const;
export type Section = (typeof SECTIONS)[number];
export const SYSTEMS = ["pgfn", "direct", "poll"] as const;
export type SystemName = (typeof SYSTEMS)[number];

export interface BenchOptions {
  readonly quick: boolean;
  readonly only: readonly Section[];
  readonly systems: readonly SystemName[];
  /** Open-loop arrival rates for the latency table, events/s. (Default: 100,1000,3000) */
  readonly rates: readonly number[];
  /** Seconds of load per latency rate. (Default: 10; --quick: 3) */
  readonly latencySeconds: number;
  /** Seconds of sustained load per throughput row. (Default: 60; --quick: 10) */
  readonly seconds: number;
  /** Offered events/s for the single-row and the 10-row throughput rows. (Default: 1500,5000) */
  readonly throughputRates: readonly [number, number];
  /** Client counts for the write path. (Default: 1,4,16) */
  readonly writepathClients: readonly number[];
  /** Seconds per write-path cell, measured twice. (Default: 3; --quick: 1) */
  readonly writepathSeconds: number;
  /** Events/s while the daemon is killed. (Default: 500) */
  readonly recoveryRate: number;
  /** Seconds of load before the kill. (Default: 4; --quick: 2) */
  readonly recoverySeconds: number;
  /** Longest wait for recovery after the kill. (Default: 20; --quick: 12) */
  readonly recoveryTimeout: number;
  /** Connections the open-loop generator spreads arrivals over. (Default: 16) */
  readonly clients: number;
  /** PGFN_WORKER_CONCURRENCY of the daemon, and the direct runner's concurrency. (Default: 10) */
  readonly daemonConcurrency: number;
  /** Events committed with the consumer stopped, then drained. (Default: 100000; --quick: 5000) */
  readonly backlogEvents: number;
  /** Longest wait for a backlog to drain, seconds. (Default: 180; --quick: 60) */
  readonly backlogTimeout: number;
  /** Calls per sandbox row. (Default: 2000; --quick: 300) */
  readonly sandboxCalls: number;
}

export const USAGE = `Usage: npm run bench -- [options]

  --quick                      short durations for a smoke run (a few minutes)
  --only LIST                  sections, of ${SECTIONS.join(",")} (default: all)
  --systems LIST               of ${SYSTEMS.join(",")} (default: all; write path always has none)
  --rates LIST                 latency arrival rates, events/s (default: 100,1000,3000)
  --latency-seconds N          seconds of load per latency rate (default: 10; quick: 3)
  --seconds N                  seconds of sustained throughput load (default: 60; quick: 10)
  --throughput-rates A,B       offered events/s, single-row and 10-row (default: 1500,5000)
  --writepath-clients LIST     closed-loop client counts (default: 1,4,16)
  --writepath-seconds N        seconds per write-path cell, run twice (default: 3; quick: 1)
  --recovery-rate N            events/s when the daemon is killed (default: 500)
  --recovery-seconds N         seconds of load before the kill (default: 4; quick: 2)
  --recovery-timeout N         longest wait for recovery, seconds (default: 20; quick: 12)
  --backlog-events N           events committed with the consumer stopped (default: 100000; quick: 5000)
  --backlog-timeout N          longest wait for the backlog to drain, seconds (default: 180; quick: 60)
  --clients N                  open-loop connections (default: 16)
  --daemon-concurrency N       PGFN_WORKER_CONCURRENCY, also the direct runner's (default: 10)
  --sandbox-calls N            calls per sandbox row (default: 2000; quick: 300)
  --help

Uses DATABASE_URL's server (a scratch database, dropped afterwards) or an
embedded Postgres 15 with fsync on. PGFN_* variables are passed to the daemons.`;

/** A bad command line: the message says which option and what it takes. */
export class UsageError extends Error {}

function positive(name: string, value: string, integer = true): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new UsageError(
      `--${name} takes a positive ${integer ? "whole " : ""}number, got "${value}".`,
    );
  }
  return n;
}

function list(name: string, value: string): number[] {
  return value.split(",").map((v) => positive(name, v));
}

function names<T extends string>(name: string, value: string, allowed: readonly T[]): T[] {
  const picked = value.split(",").map((v) => v.trim());
  const bad = picked.filter((v) => !allowed.includes(v as T));
  if (bad.length > 0 || picked.length === 0) {
    throw new UsageError(
      `--${name} takes a comma-separated list of ${allowed.join(", ")}; "${bad.join(",")}" is not one.`,
    );
  }
  return [...new Set(picked as T[])];
}

/** Parses argv (without node and the script); `undefined` means --help was asked for. */
export function parseBenchArgs(argv: readonly string[]): BenchOptions | undefined {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        quick: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
        only: { type: "string" },
        systems: { type: "string" },
        rates: { type: "string" },
        "latency-seconds": { type: "string" },
        seconds: { type: "string" },
        "throughput-rates": { type: "string" },
        "writepath-clients": { type: "string" },
        "writepath-seconds": { type: "string" },
        "recovery-rate": { type: "string" },
        "recovery-seconds": { type: "string" },
        "recovery-timeout": { type: "string" },
        "backlog-events": { type: "string" },
        "backlog-timeout": { type: "string" },
        clients: { type: "string" },
        "daemon-concurrency": { type: "string" },
        "sandbox-calls": { type: "string" },
      },
    }));
  } catch (error) {
    // parseArgs' own message names the option ("Unknown option '--x'...").
    throw new UsageError((error as Error).message);
  }
  if (values.help) return undefined;
  const quick = values.quick;
  const num = (name: keyof typeof values, normal: number, short: number) => {
    const v = values[name];
    return typeof v === "string" ? positive(name, v) : quick ? short : normal;
  };
  const throughputRates = values["throughput-rates"]
    ? list("throughput-rates", values["throughput-rates"])
    : [1500, 5000];
  if (throughputRates.length !== 2) {
    throw new UsageError(
      `--throughput-rates takes two numbers, single-row and 10-row events/s, e.g. 1500,5000.`,
    );
  }
  return {
    quick,
    only: values.only ? names("only", values.only, SECTIONS) : [...SECTIONS],
    systems: values.systems ? names("systems", values.systems, SYSTEMS) : [...SYSTEMS],
    rates: values.rates ? list("rates", values.rates) : [100, 1000, 3000],
    latencySeconds: num("latency-seconds", 10, 3),
    seconds: num("seconds", 60, 10),
    throughputRates: [throughputRates[0]!, throughputRates[1]!],
    writepathClients: values["writepath-clients"]
      ? list("writepath-clients", values["writepath-clients"])
      : [1, 4, 16],
    writepathSeconds: num("writepath-seconds", 3, 1),
    recoveryRate: num("recovery-rate", 500, 500),
    recoverySeconds: num("recovery-seconds", 4, 2),
    recoveryTimeout: num("recovery-timeout", 20, 12),
    backlogEvents: num("backlog-events", 100_000, 5000),
    backlogTimeout: num("backlog-timeout", 180, 60),
    clients: num("clients", 16, 16),
    daemonConcurrency: num("daemon-concurrency", 10, 10),
    sandboxCalls: num("sandbox-calls", 2000, 300),
  };
}
