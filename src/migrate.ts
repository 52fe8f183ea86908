/**
 * Applies graphile-worker's migrations and then ours (`sql/NNNNNN_name.sql`),
 * each of ours in its own transaction, all while one connection holds a lock
 * on pgfn.migrations: twenty daemons starting at once apply each migration
 * exactly once, one of them all of them.
 *
 * Not an advisory lock: any role may take any advisory key (pg_locks shows
 * which), and holding ours stopped every migrator, so every daemon start.
 * Locking pgfn.migrations takes a privilege on it. Before it exists (the
 * very first migrate) nothing is locked: its creation is a race whose
 * losers try again.
 *
 * A landed migration never changes: every change is a new numbered file.
 * Each applied migration's checksum is recorded, and `migrate` and the
 * daemon refuse a database whose applied files differ from the shipped ones,
 * since a changed file would never run again there (its old body would stay).
 */
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import type pg from "pg";
import { runMigrations, Logger as GraphileLogger } from "graphile-worker";
import { PgfnError, SQLSTATE } from "./errors.js";

/** Where the migrations live: `sql/` at the package root (one level above src/ and dist/). */
export const SQL_DIR = fileURLToPath(new URL("../sql/", import.meta.url));

/**
 * SQLSTATEs of a `create ... if not exists` that lost a race with another
 * migrator's (which committed meanwhile): unique_violation (of the catalog),
 * duplicate_schema, duplicate_table, duplicate_object.
 */
const CREATED_MEANWHILE = new Set<string>([
  SQLSTATE.UNIQUE_VIOLATION,
  SQLSTATE.DUPLICATE_SCHEMA,
  SQLSTATE.DUPLICATE_TABLE,
  SQLSTATE.DUPLICATE_OBJECT,
]);

export interface Migration {
  readonly id: number;
  readonly name: string;
  readonly file: string;
}

/** Where to read the migrations from. */
export interface MigrationOptions {
  /** A directory of `NNNNNN_name.sql` files; tests pass a copy. (Default: SQL_DIR) */
  readonly dir?: string;
}

/** An applied migration whose shipped file is no longer what was applied. */
export interface ChangedMigration {
  /** The shipped file's name (`000003_dispatch.sql`). */
  readonly file: string;
  /** The name recorded when it was applied (differs if the file was renamed). */
  readonly appliedName: string;
}

/** What the database lacks, and which of its applied migrations changed since. */
export interface MigrationStatus {
  /** Names of the shipped migrations not applied yet, in order. */
  readonly pending: readonly string[];
  /** Applied migrations whose file changed (empty when none did). */
  readonly changed: readonly ChangedMigration[];
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

/**
 * The checksum recorded for a migration: sha256 (hex) of its text with CRLF
 * line ends read as LF, so a checkout on Windows is not a change.
 */
export function migrationChecksum(text: string): string {
  return createHash("sha256").update(text.replace(/\r\n/g, "\n")).digest("hex");
}

interface ShippedMigration extends Migration {
  readonly text: string;
  readonly checksum: string;
}

async function readMigrations(dir: string): Promise<ShippedMigration[]> {
  return Promise.all(
    (await listMigrations(dir)).map(async (m) => {
      const text = await readFile(m.file, "utf8");
      return { ...m, text, checksum: migrationChecksum(text) };
    }),
  );
}

interface AppliedRow {
  readonly id: number;
  readonly name: string;
  /** Null when it was applied before checksums were recorded and not backfilled yet. */
  readonly checksum: string | null;
}

/**
 * The applied migrations. `to_jsonb` reads a checksum column that a table
 * from before checksums does not have yet (null then), so the daemon can
 * check a database that `migrate` has not upgraded.
 */
async function appliedMigrations(db: pg.Pool | pg.PoolClient): Promise<AppliedRow[]> {
  const { rows } = await db.query<AppliedRow>(
    "select id, name, to_jsonb(m) ->> 'checksum' as checksum from pgfn.migrations m",
  );
  return rows;
}

function compare(shipped: readonly ShippedMigration[], applied: readonly AppliedRow[]) {
  const byId = new Map(applied.map((r) => [r.id, r]));
  const pending: string[] = [];
  const changed: ChangedMigration[] = [];
  for (const m of shipped) {
    const row = byId.get(m.id);
    if (row === undefined) pending.push(m.name);
    else if (row.name !== m.name || (row.checksum !== null && row.checksum !== m.checksum)) {
      changed.push({ file: path.basename(m.file), appliedName: row.name });
    }
  }
  return { pending, changed };
}

/** The error for changed migrations: names the files and says what to do. */
function changedMigrationsError(changed: readonly ChangedMigration[]): PgfnError {
  const files = changed
    .map((c) =>
      c.appliedName === c.file.slice(0, -4) ? c.file : `${c.file} (applied as ${c.appliedName})`,
    )
    .join(", ");
  return new PgfnError(
    "INVALID_REQUEST",
    `${changed.length === 1 ? "Migration" : "Migrations"} ${files} changed after this database applied ` +
      `${changed.length === 1 ? "it" : "them"}, so the database keeps the old version and nothing would apply the new one. ` +
      "A landed migration must never be edited: restore the file as it was and put the change in a new numbered file in sql/ " +
      "(if you did not edit it, this build of pgfn ships an edited migration: use the release that migrated this database).",
  );
}

// Quiet: graphile-worker logs every migration at info level.
const quietGraphileLogger = new GraphileLogger(() => (level, message) => {
  if (level === "error") console.error(`graphile-worker: ${message}`);
});

/**
 * Brings the database up to date. Safe to call concurrently and repeatedly.
 * Needs a role that may create schemas (the daemon's role), and a pool that
 * may open two connections.
 */
export async function migrate(
  pool: pg.Pool,
  options: MigrationOptions = {},
): Promise<MigrationResult> {
  const migrations = await readMigrations(options.dir ?? SQL_DIR);
  await createMigrationsTable(pool);
  const holder = await pool.connect();
  let broken: Error | undefined;
  try {
    // Held until the rollback below, on a connection of its own, so each
    // migration can still commit alone. SHARE UPDATE EXCLUSIVE conflicts
    // with itself, not with the inserts into the table nor with reading it
    // (/readyz, the daemon's start).
    const lock = async () => {
      await holder.query("begin");
      await holder.query("lock table pgfn.migrations in share update exclusive mode");
    };
    await lock();
    // A table from before checksums gets its column here, under the lock and
    // on the holder's own connection: an ALTER queued from elsewhere while a
    // migrator holds the lock would queue that migrator's own inserts behind
    // it, each waiting for the other, unseen by Postgres's deadlock check.
    const { rows } = await holder.query<{ missing: boolean }>(
      `select not exists (
         select 1 from pg_attribute
         where attrelid = 'pgfn.migrations'::regclass and attname = 'checksum' and not attisdropped
       ) as missing`,
    );
    if (rows[0]?.missing) {
      await holder.query("alter table pgfn.migrations add column if not exists checksum text");
      await holder.query("commit");
      await lock();
    }
    try {
      await runMigrations({ pgPool: pool, logger: quietGraphileLogger });
      const client = await pool.connect();
      try {
        return await applyPending(client, migrations);
      } finally {
        client.release();
      }
    } finally {
      await holder.query("rollback").catch((error: Error) => (broken = error));
    }
  } finally {
    holder.release(broken);
  }
}

/** pgfn.migrations, created unless it exists; a migrator that loses the race to create it tries again. */
async function createMigrationsTable(pool: pg.Pool): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await pool.query(`
        create schema if not exists pgfn;
        create table if not exists pgfn.migrations (
          id integer primary key,
          name text not null,
          applied_at timestamptz not null default now(),
          -- sha256 of the file as applied (migrationChecksum). Null only for a
          -- migration applied before checksums whose file is no longer shipped.
          checksum text
        )`);
      break;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === undefined || !CREATED_MEANWHILE.has(code) || attempt >= 5) throw error;
    }
  }
}

/** Our pending migrations, each in a transaction of its own; call under the lock on pgfn.migrations. */
async function applyPending(
  client: pg.PoolClient,
  migrations: readonly ShippedMigration[],
): Promise<MigrationResult> {
  // A table from before checksums: we cannot know what text was applied
  // then, so we record the files as they are now. From here on, an edit to
  // a landed file is caught.
  await client.query(
    `update pgfn.migrations m set checksum = f.checksum
       from unnest($1::int[], $2::text[]) as f (id, checksum)
      where m.id = f.id and m.checksum is null`,
    [migrations.map((m) => m.id), migrations.map((m) => m.checksum)],
  );
  const { pending, changed } = compare(migrations, await appliedMigrations(client));
  if (changed.length > 0) throw changedMigrationsError(changed);
  const applied: string[] = [];
  for (const m of migrations) {
    if (!pending.includes(m.name)) continue;
    try {
      await client.query("begin");
      await client.query(m.text);
      await client.query("insert into pgfn.migrations (id, name, checksum) values ($1, $2, $3)", [
        m.id,
        m.name,
        m.checksum,
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
}

/**
 * Which shipped migrations the database lacks and which applied ones changed
 * since. Reads only: an applied migration without a recorded checksum (a
 * database `migrate` has not upgraded yet) is not counted as changed.
 */
export async function migrationStatus(
  pool: pg.Pool,
  options: MigrationOptions = {},
): Promise<MigrationStatus> {
  const migrations = await readMigrations(options.dir ?? SQL_DIR);
  const applied = await appliedIfAny(pool);
  if (applied === undefined) return { pending: migrations.map((m) => m.name), changed: [] };
  return compare(migrations, applied);
}

/**
 * Says what is missing, or nothing when the schema is current. By ids only,
 * without reading the files: /readyz asks this on every probe.
 */
export async function pendingMigrations(
  pool: pg.Pool,
  options: MigrationOptions = {},
): Promise<string[]> {
  const migrations = await listMigrations(options.dir ?? SQL_DIR);
  const applied = new Set((await appliedIfAny(pool))?.map((r) => r.id));
  return migrations.filter((m) => !applied.has(m.id)).map((m) => m.name);
}

/** The applied migrations, or undefined before the first `migrate`. */
async function appliedIfAny(pool: pg.Pool): Promise<AppliedRow[] | undefined> {
  const { rows } = await pool.query<{ exists: boolean }>(
    "select to_regclass('pgfn.migrations') is not null as exists",
  );
  return rows[0]?.exists ? appliedMigrations(pool) : undefined;
}

/**
 * Throws, in words that say what to do, unless the schema is current and no
 * applied migration changed. The daemon calls it at start: it refuses an
 * outdated schema rather than fail on its first event, and a changed one
 * rather than run on function bodies that are not the shipped ones.
 */
export async function assertSchemaCurrent(
  pool: pg.Pool,
  options: MigrationOptions = {},
): Promise<void> {
  const { pending, changed } = await migrationStatus(pool, options);
  if (changed.length > 0) throw changedMigrationsError(changed);
  if (pending.length > 0) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `The database schema is not current (${pending.length} migration(s) pending: ${pending.join(", ")}). Run \`pgfn migrate\` first.`,
    );
  }
}
