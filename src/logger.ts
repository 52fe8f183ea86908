/**
 * Structured logs: one JSON line per event (pino), with the field names of
 * docs/design.md section 5. The values of the fields in `REDACTED_FIELDS`
 * never reach a line; what a handler writes (its logs, its error messages)
 * has its env secrets redacted before it gets here (SECRET_KEY in
 * sandbox/host/redact.ts, the one pattern for secret-looking keys).
 */
import { pino, type Logger } from "pino";
import pretty from "pino-pretty";
import { REDACTED } from "./sandbox/host/redact.js";

export type { Logger };

/** Fields whose values are replaced by "[redacted]", at the top of a log object or one level down. */
const REDACTED_FIELDS: readonly string[] = Object.freeze(
  ["password", "token", "authorization", "env"].flatMap((key) => [key, `*.${key}`]),
);

export interface LoggerOptions {
  /** (Default: "info") */
  readonly level?: string;
  /** Where lines go. (Default: stdout) */
  readonly destination?: NodeJS.WritableStream;
  /**
   * Colored, one readable line per entry (pino-pretty) instead of JSON: for
   * a person at a terminal (`pgfn dev`), never for log collectors. Redaction
   * applies all the same. (Default: false)
   */
  readonly pretty?: boolean;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      level: options.level ?? "info",
      base: { service: "pgfn" },
      // "level":"info", not pino's numeric 30: the field people grep for.
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: [...REDACTED_FIELDS], censor: REDACTED },
    },
    options.pretty
      ? pretty({
          destination: options.destination ?? process.stdout,
          ignore: "pid,hostname,service",
          translateTime: "SYS:HH:MM:ss.l",
          sync: true,
        })
      : (options.destination ?? process.stdout),
  );
}

/** A logger that drops everything (tests, embedded use). */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
