// Migrations: a fresh database gets the whole schema, exactly once, however
// many daemons migrate at the same moment.
import { Logger as GraphileLogger, runMigrations } from "graphile-worker";
import { expect, it } from "vitest";
import { createPool } from "../src/db/pool.js";
import { silentLogger } from "../src/logger.js";
import { listMigrations, migrate, pendingMigrations } from "../src/migrate.js";
import { createTestDatabase } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("migrate", { migrated: false });

it("applies every migration once when ten processes migrate at once, and nothing the second time", async () => {
  const all = (await listMigrations()).map((m) => m.name);
  expect(await pendingMigrations(t.pool)).toEqual(all);

  // Ten pools stand in for ten daemons starting together.
  const pools = Array.from({ length: 10 }, () => createPool(t.url, 2, silentLogger()));
  try {
    const results = await Promise.all(pools.map((p) => migrate(p)));
    const applied = results.flatMap((r) => r.applied);
    expect(applied.sort()).toEqual([...all].sort());
    expect(results.filter((r) => r.applied.length > 0)).toHaveLength(1);
  } finally {
    await Promise.all(pools.map((p) => p.end()));
  }

  const again = await migrate(t.pool);
  expect(again).toEqual({ applied: [], alreadyApplied: all.length });
  expect(await pendingMigrations(t.pool)).toEqual([]);

  const { rows } = await t.pool.query(`select name from pgfn.migrations order by id`);
  expect(rows.map((r) => r.name)).toEqual(all);
  const tables = await t.pool.query(
    `select table_name || ':' || table_type as t from information_schema.tables where table_schema = 'pgfn' order by 1`,
  );
  expect(tables.rows.map((r) => r.t)).toEqual([
    "circuits:BASE TABLE",
    "daemons:BASE TABLE",
    "dead_letters:BASE TABLE",
    "events:BASE TABLE",
    "failures:VIEW",
    "function_info:VIEW",
    "function_runs:BASE TABLE",
    "functions:BASE TABLE",
    "listener_state:BASE TABLE",
    "migrations:BASE TABLE",
    "ordering_progress:BASE TABLE",
    "pending:VIEW",
    "schedules:BASE TABLE",
    "stats:VIEW",
  ]);
  const gw = await t.pool.query(`select to_regproc('graphile_worker.add_jobs') is not null as ok`);
  expect(gw.rows[0].ok).toBe(true);
});

it("every migration file can run twice in a row (idempotent statements)", async () => {
  // Each file straight after itself, in order, on a database of its own: a
  // repeated migration. Not every file again on the finished schema: since
  // 000014 renamed the public functions' arguments, an earlier file's
  // `create or replace` of one of them is refused there, as Postgres refuses
  // renaming a parameter in place.
  const { readFile } = await import("node:fs/promises");
  const twice = await createTestDatabase("migrate_twice", { migrated: false });
  try {
    await runMigrations({ pgPool: twice.pool, logger: new GraphileLogger(() => () => undefined) });
    for (const m of await listMigrations()) {
      const text = await readFile(m.file, "utf8");
      await expect(twice.pool.query(text), m.name).resolves.toBeDefined();
      await expect(twice.pool.query(text), `${m.name}, again`).resolves.toBeDefined();
    }
  } finally {
    await twice.drop();
  }
});
