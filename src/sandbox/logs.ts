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
 * Told of each line as it is kept, so that the lines outlive a sandbox
 * thread killed or crashed mid-run (logRelay.ts): the outcome that carries
 * them otherwise is never sent.
 */
export interface LogSink {
  /** A line kept (one of the first MAX_LOG_LINES - 1), already clipped. */
  kept(line: HandlerLog): void;
  /** How many lines were dropped so far, past the cap. */
  dropped(count: number): void;
}

/** The last line of a capped log: how many lines were dropped. */
export function droppedLine(count: number): HandlerLog {
  return {
    level: "warn",
    message: `${count} more log lines dropped (at most ${MAX_LOG_LINES} are kept)`,
    at: new Date().toISOString(),
  };
}

/**
 * A Console for Extism's `logger` option that collects lines instead of
 * printing them. Extism calls logger[level](text) for the handler's log_*
 * calls and also for its own complaints (e.g. a bad memory address).
 *
 * @param clip applied to every line as it is kept (the invocation's
 *   redaction and MAX_MESSAGE_CHARS).
 * @param sink told of every line kept, and of the lines dropped.
 */
export function captureLogger(
  into: HandlerLog[],
  clip: (text: string) => string,
  sink?: LogSink,
): Console {
  let dropped = 0;
  const at = (level: string) => (message: unknown) => {
    if (into.length < MAX_LOG_LINES - 1) {
      const line = { level, message: clip(String(message)), at: new Date().toISOString() };
      into.push(line);
      sink?.kept(line);
      return;
    }
    // The last slot says how many lines were dropped.
    dropped += 1;
    into[MAX_LOG_LINES - 1] = droppedLine(dropped);
    sink?.dropped(dropped);
  };
  return Object.fromEntries(LOG_LEVELS.map((level) => [level, at(level)])) as unknown as Console;
}
