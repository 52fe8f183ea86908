/**
 * Structured logs: one JSON line per event (pino), with the field names of
 * docs/design.md section 5. Values under secret-looking keys never reach a line.
 */
import { pino, type Logger } from "pino";
import pretty from "pino-pretty";

export type { Logger };

/** Keys whose values are redacted wherever they appear in a log object. */
export const SECRET_KEY_PATTERN = /(key|secret|password|passwd|token|authorization|credential)/i;

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
      redact: {
        paths: [
          "password",
          "token",
          "authorization",
          "*.password",
          "*.token",
          "*.authorization",
          "env",
          "*.env",
        ],
        censor: "[redacted]",
      },
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
