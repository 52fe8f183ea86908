// Migrations are immutable once landed: a database records what it applied,
// and `migrate` and the daemon refuse to go on when a shipped file changed.
// The "changed file" lives in a copy of sql/ (migrate takes a dir), never in sql/.
import { appendFile, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPool } from "../src/db/pool.js";
import { silentLogger } from "../src/logger.js";
import {
  listMigrations,
  migrate,
  migrationChecksum,
  migrationStatus,
  pendingMigrations,
} from "../src/migrate.js";
import { createTestDatabase, startTestDaemon, type TestDatabase } from "./helpers.js";

let scratch: string;
let copies = 0;

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), "pgfn-migrations-"));
});
afterAll(() => rm(scratch, { recursive: true, force: true }));

/** A copy of the shipped migrations (the first `count` of them), to edit. */
async function copyOfSql(count?: number): Promise<string> {
  const dir = path.join(scratch, `sql${++copies}`);
  await mkdir(dir);
  for (const m of (await listMigrations()).slice(0, count)) {
    await copyFile(m.file, path.join(dir, path.basename(m.file)));
  }
  return dir;
}

/** The shipped checksum of every migration, by id. */
async function shippedChecksums(): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  for (const m of await listMigrations()) {
    out.set(m.id, migrationChecksum(await readFile(m.file, "utf8")));
  }
  return out;
}

async function recordedChecksums(t: TestDatabase): Promise<Map<number, string | null>> {
  const { rows } = await t.pool.query<{ id: number; checksum: string | null }>(
    "select id, checksum from pgfn.migrations order by id",
  );
  return new Map(rows.map((r) => [r.id, r.checksum]));
}

describe("a migrated database", () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase("mig_changed");
  });
  afterAll(() => t?.drop());

  it("records the sha256 of every applied file", async () => {
    expect(await recordedChecksums(t)).toEqual(await shippedChecksums());
  });

  it("migrate refuses an edited landed file, names it, says what to do, and applies nothing", async () => {
    const dir = await copyOfSql();
    expect(await migrate(t.pool, { dir })).toMatchObject({ applied: [] });

    await appendFile(path.join(dir, "000003_dispatch.sql"), "\n-- an edit after landing\n");
    await writeFile(
      path.join(dir, "000999_after_the_edit.sql"),
      "create table pgfn.after_the_edit (id int);\n",
    );
    expect(await migrationStatus(t.pool, { dir })).toEqual({
      pending: ["000999_after_the_edit"],
      changed: [{ file: "000003_dispatch.sql", appliedName: "000003_dispatch" }],
    });
    const refused = migrate(t.pool, { dir });
    await expect(refused).rejects.toThrow(/Migration 000003_dispatch\.sql changed/);
    await expect(refused).rejects.toThrow(/new numbered file/);
    const { rows } = await t.pool.query(
      "select to_regclass('pgfn.after_the_edit') as t, (select count(*)::int from pgfn.migrations where id = 999) as n",
    );
    expect(rows[0]).toEqual({ t: null, n: 0 });
  });

  it("a renamed landed file is a change too", async () => {
    const dir = await copyOfSql();
    await copyFile(path.join(dir, "000002_enqueue.sql"), path.join(dir, "000002_renamed.sql"));
    await rm(path.join(dir, "000002_enqueue.sql"));
    await expect(migrate(t.pool, { dir })).rejects.toThrow(
      /000002_renamed\.sql \(applied as 000002_enqueue\)/,
    );
  });

  it("line ends are not a change: a CRLF checkout migrates", async () => {
    const dir = await copyOfSql();
    for (const m of await listMigrations(dir)) {
      const text = await readFile(m.file, "utf8");
      await writeFile(m.file, text.replace(/\n/g, "\r\n"));
    }
    expect(await migrationStatus(t.pool, { dir })).toEqual({ pending: [], changed: [] });
    expect(await migrate(t.pool, { dir })).toMatchObject({ applied: [] });
  });

  it("the daemon refuses to start on a database whose applied file differs, naming the file", async () => {
    // Start reads the shipped sql/; a database that applied another text of
    // 000002 is the same mismatch as a shipped file edited since.
    const before = await recordedChecksums(t);
    await t.pool.query("update pgfn.migrations set checksum = $1 where id = 2", [
      migrationChecksum("-- the text this database applied\n"),
    ]);
    try {
      expect(await pendingMigrations(t.pool)).toEqual([]);
      const started = await startTestDaemon(t.url).then(
        async (daemon) => {
          await daemon.stop();
          return "started";
        },
        (error: Error) => error.message,
      );
      expect(started).toMatch(
        /Migration 000002_enqueue\.sql changed after this database applied it.*new numbered file/,
      );
      await expect(migrate(t.pool)).rejects.toThrow(/000002_enqueue\.sql/);
    } finally {
      await t.pool.query("update pgfn.migrations set checksum = $1 where id = 2", [before.get(2)]);
    }
  });
});

describe("a database migrated before checksums were recorded", () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase("mig_upgrade", { migrated: false });
  });
  afterAll(() => t?.drop());

  it("gets the column and its checksums from the current files, and ten concurrent migrators still apply each migration once", async () => {
    // The old shape: the first five migrations applied, no checksum column.
    await migrate(t.pool, { dir: await copyOfSql(5) });
    await t.pool.query("alter table pgfn.migrations drop column checksum");
    const all = (await listMigrations()).map((m) => m.name);

    // Reading the old table works, and counts nothing as changed.
    expect(await migrationStatus(t.pool)).toEqual({ pending: all.slice(5), changed: [] });

    const pools = Array.from({ length: 10 }, () => createPool(t.url, 2, silentLogger()));
    try {
      const results = await Promise.all(pools.map((p) => migrate(p)));
      expect(results.flatMap((r) => r.applied).sort()).toEqual(all.slice(5));
      expect(results.filter((r) => r.applied.length > 0)).toHaveLength(1);
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
    expect(await recordedChecksums(t)).toEqual(await shippedChecksums());
    expect(await migrationStatus(t.pool)).toEqual({ pending: [], changed: [] });

    // And from now on an edit is caught.
    const dir = await copyOfSql();
    await appendFile(path.join(dir, "000001_schema.sql"), "\n-- edited\n");
    await expect(migrate(t.pool, { dir })).rejects.toThrow(/000001_schema\.sql/);
  });
});
