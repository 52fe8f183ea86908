/** What the commands of src/cli.ts and src/cli/ share: argument parsers and a pool per command. */
import type pg from "pg";
import { requireDatabaseUrl, type Config } from "../config.js";
import { createPool } from "../db/pool.js";
import { PgfnError } from "../errors.js";
import { silentLogger } from "../logger.js";
import { numberMessage, shown, type Range } from "../problems.js";

/**
 * A whole-number flag or argument; `name` is what the user typed it as
 * (--limit, RUN_ID), `range` what it may be. The refusal is a PgfnError, not
 * commander's InvalidArgumentError, so it reads like every other one
 * ("pgfn: --limit must be a whole number between 1 and 10000 (got "x")")
 * without commander's "option '-n, --limit <n>' argument 'x' is invalid."
 * in front; a number out of range gets the same message.
 */
export function intOption(name: string, range: Range = {}) {
  return (value: string): number => {
    const whole = /^-?\d+$/.test(value.trim());
    const n = Number(value);
    const outside =
      (range.min !== undefined && n < range.min) || (range.max !== undefined && n > range.max);
    if (!whole || outside) {
      const got = whole ? String(n) : shown(value);
      throw new PgfnError("INVALID_REQUEST", `${name} ${numberMessage(range, true)} (got ${got}).`);
    }
    return n;
  };
}

/** The most rows `-n/--limit` may ask for. (10000) */
export const MAX_LIMIT = 10_000;

/** What `-n/--limit` may be. */
export const LIMIT_RANGE: Range = Object.freeze({ min: 1, max: MAX_LIMIT });

/** Opens a pool on DATABASE_URL for one command and closes it afterwards. */
export async function withPool<T>(config: Config, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = createPool(requireDatabaseUrl(config), 4, silentLogger());
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

/** The one line for a name that is not a deployed function. */
export function notDeployed(name: string, cause?: unknown): PgfnError {
  return new PgfnError(
    "FUNCTION_NOT_FOUND",
    `Function "${name}" is not deployed (\`pgfn functions\` lists those that are).`,
    cause === undefined ? undefined : { cause },
  );
}
