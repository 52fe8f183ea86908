/**
 * What a handler logged, kept for its run row: the lines Extism hands its
 * `logger` (the handler's log_* calls and Extism's own complaints), each
 * redacted and clipped, at most MAX_LOG_LINES of them.
 *
 * Its own file because what is kept of a handler's words (how many lines,
 * how long, in what shape) changes with the run row and the API that shows
 * it, not with how a handler is called.
 */

/** One line a handler logged through Extism's `log_*` host functions. */
export interface HandlerLog {
  /** "trace" | "debug" | "info" | "warn" | "error" */
  readonly level: string;
  readonly message: string;
  /** When it was logged, ISO 8601. */
  readonly at: string;
}

/** Log lines kept per invocation; a handler logging in a loop must not fill the heap. */
export const MAX_LOG_LINES = 1000;

/** Characters kept of one log line or error message. */
export const MAX_MESSAGE_CHARS = 4000;

/** Levels of Extism's logger (its Console). */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error"] as const;

/**
 * A Console for Extism's `logger` option that collects lines instead of
 * printing them. Extism calls logger[level](text) for the handler's log_*
 * calls and also for its own complaints (e.g. a bad memory address).
 *
 * @param clip applied to every line as it is kept (the invocation's
 *   redaction and MAX_MESSAGE_CHARS).
 */
export function captureLogger(into: HandlerLog[], clip: (text: string) => string): Console {
  let dropped = 0;
  const at = (level: string) => (message: unknown) => {
    if (into.length < MAX_LOG_LINES - 1) {
      into.push({ level, message: clip(String(message)), at: new Date().toISOString() });
      return;
    }
    // The last slot says how many lines were dropped.
    dropped += 1;
    into[MAX_LOG_LINES - 1] = {
      level: "warn",
      message: `${dropped} more log lines dropped (at most ${MAX_LOG_LINES} are kept)`,
      at: new Date().toISOString(),
    };
  };
  return Object.fromEntries(LOG_LEVELS.map((level) => [level, at(level)])) as unknown as Console;
}
