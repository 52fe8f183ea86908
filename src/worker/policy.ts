/**
 * The retry policy: which failures a retry can help, and when to try again.
 */
import type { ErrorCode } from "../errors.js";

export interface RetryPolicy {
  readonly maxAttempts: number;
  readonly baseMs: number;
  readonly maxMs: number;
}

/** What the failed attempt says about trying again. */
export interface FailureFacts {
  readonly code: ErrorCode;
  /** For HOST_FUNCTION_ERROR: the host call may succeed if tried again. */
  readonly transient?: boolean;
  /** The handler asked for a retry (pgfn_retry_after), not before this many ms. */
  readonly retryAfterMs?: number;
  /** The handler said a retry cannot help (pgfn_no_retry). */
  readonly noRetry?: boolean;
}

/**
 * Whether a retry can help. Never for bad input, a missing function, memory
 * (the same input grows the same way) or a handler's own error, unless the
 * handler asked for one; always for a timeout, a transient host failure and
 * an attempt pgfn could not record (INTERNAL: usually the database, for a
 * moment).
 */
export function isRetryable(facts: FailureFacts): boolean {
  if (facts.noRetry) return false;
  if (facts.retryAfterMs !== undefined) return true;
  if (facts.code === "TIMEOUT" || facts.code === "INTERNAL") return true;
  if (facts.code === "HOST_FUNCTION_ERROR") return facts.transient === true;
  return false;
}

/** Full jitter's random source (see setRetryRandom). */
let retryRandom: () => number = Math.random;

/**
 * Replaces the random source of every retry delay computed from now on, and
 * returns a function that puts the previous one back. Tests fix it to make
 * delays exact (a source that returns just under 1 gives the ceilings
 * below). (Default: Math.random)
 */
export function setRetryRandom(random: () => number): () => void {
  const previous = retryRandom;
  retryRandom = random;
  return () => {
    retryRandom = previous;
  };
}

/**
 * Exponential backoff with full jitter: a uniform pick in
 * [0, min(maxMs, baseMs * 2^(attempt-1))), so retries of many events that
 * failed together spread out instead of arriving together. With the defaults
 * (1 s base, 5 min cap) the ceilings after attempts 1, 2, 3, ... are 1 s, 2 s,
 * 4 s, 8 s, ... 256 s, then 300 s. A handler's retry_after is a floor.
 */
export function retryDelayMs(
  policy: RetryPolicy,
  attempt: number,
  facts: FailureFacts,
  random: () => number = retryRandom,
): number {
  const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.min(attempt - 1, 30));
  return Math.max(Math.floor(random() * ceiling), facts.retryAfterMs ?? 0);
}
