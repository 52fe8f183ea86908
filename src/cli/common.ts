/** What the commands of src/cli.ts and src/cli/ share: argument parsers and a pool per command. */
import { InvalidArgumentError } from "commander";
import type pg from "pg";
import { requireDatabaseUrl, type Config } from "../config.js";
import { createPool } from "../db/pool.js";
import { PgfnError } from "../errors.js";
import { silentLogger } from "../logger.js";

/** A whole-number argument; `name` is what the user typed it as (--limit, RUN_ID). */
export function intOption(name: string) {
  return (value: string): number => {
    if (!/^-?\d+$/.test(value))
      throw new InvalidArgumentError(`${name} must be a whole number, got "${value}".`);
    return Number(value);
  };
}

/** The most rows `-n/--limit` may ask for. (10000) */
export const MAX_LIMIT = 10_000;

/** Refuses a `-n/--limit` outside 1..MAX_LIMIT. */
export function checkLimit(limit: number): void {
  if (limit < 1 || limit > MAX_LIMIT)
    throw new PgfnError("INVALID_REQUEST", `--limit must be between 1 and ${MAX_LIMIT}.`);
}

/** Opens a pool on DATABASE_URL for one command and closes it afterwards. */
export async function withPool<T>(config: Config, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = createPool(requireDatabaseUrl(config), 4, silentLogger());
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}
