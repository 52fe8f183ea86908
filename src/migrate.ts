/**
 * Applies graphile-worker's migrations and then ours (`sql/NNNNNN_name.sql`),
 * each of ours in its own transaction, all under one advisory lock: twenty
 * daemons starting at once apply each migration exactly once.
 */
import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import type pg from "pg";
import { runMigrations, Logger as GraphileLogger } from "graphile-worker";
import { PgfnError } from "./errors.js";

/** Where the migrations live: `sql/` at the package root (one level above src/ and dist/). */
export const SQL_DIR = fileURLToPath(new URL("../sql/", import.meta.url));

/** Arbitrary, fixed: the advisory lock key every pgfn migrator takes ("pgfn" in ASCII). */
const MIGRATION_LOCK_KEY = 0x7067666e;

export interface Migration {
  readonly id: number;
  readonly name: string;
  readonly file: string;
}

export interface MigrationResult {
  /** Names of the migrations this call applied, in order. */
  readonly applied: readonly string[];
  /** How many were already in place. */
  readonly alreadyApplied: number;
}

/** The migrations shipped with this version, in order. */
export async function listMigrations(dir: string = SQL_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d{6}_[a-z0-9_]+\.sql$/.test(f)).sort();
  return files.map((file) => ({
    id: Number(file.slice(0, 6)),
    name: file.slice(0, -4),
    file: path.join(dir, file),
  }));
}

// Quiet: graphile-worker logs every migration at info level.
const quietGraphileLogger = new GraphileLogger(() => (level, message) => {
  if (level === "error") console.error(`graphile-worker: ${message}`);
});

/**
 * Brings the database up to date. Safe to call concurrently and repeatedly.
 * Needs a role that may create schemas (the daemon's role).
 */
export async function migrate(pool: pg.Pool): Promise<MigrationResult> {
  const migrations = await listMigrations();
  const client = await pool.connect();
  try {
    await client.query("select pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
    try {
      await runMigrations({ pgPool: pool, logger: quietGraphileLogger });
      await client.query(`
        create schema if not exists pgfn;
        create table if not exists pgfn.migrations (
          id integer primary key,
          name text not null,
          applied_at timestamptz not null default now()
        )`);
      const { rows } = await client.query<{ id: number }>("select id from pgfn.migrations");
      const done = new Set(rows.map((r) => r.id));
      const applied: string[] = [];
      for (const m of migrations) {
        if (done.has(m.id)) continue;
        const text = await readFile(m.file, "utf8");
        try {
          await client.query("begin");
          await client.query(text);
          await client.query("insert into pgfn.migrations (id, name) values ($1, $2)", [
            m.id,
            m.name,
          ]);
          await client.query("commit");
        } catch (error) {
          await client.query("rollback").catch(() => undefined);
          throw new PgfnError(
            "INTERNAL",
            `Migration ${m.name} failed: ${(error as Error).message}. Nothing of it was applied.`,
            { cause: error },
          );
        }
        applied.push(m.name);
      }
      return { applied, alreadyApplied: migrations.length - applied.length };
    } finally {
      await client
        .query("select pg_advisory_unlock($1)", [MIGRATION_LOCK_KEY])
        .catch(() => undefined);
    }
  } finally {
    client.release();
  }
}

/**
 * Says what is missing, or nothing when the schema is current. The daemon
 * refuses to start on an outdated schema rather than fail on its first event.
 */
export async function pendingMigrations(pool: pg.Pool): Promise<string[]> {
  const migrations = await listMigrations();
  const { rows } = await pool.query<{ exists: boolean }>(
    "select to_regclass('pgfn.migrations') is not null as exists",
  );
  if (!rows[0]?.exists) return migrations.map((m) => m.name);
  const done = await pool.query<{ id: number }>("select id from pgfn.migrations");
  const ids = new Set(done.rows.map((r) => r.id));
  return migrations.filter((m) => !ids.has(m.id)).map((m) => m.name);
}
