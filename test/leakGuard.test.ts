// The leak guard (test/leakGuard.ts), on fixture files run by a vitest of
// their own: a file that leaves things open fails naming each of them, and
// a failed test's database is kept and named while a passing one's is dropped.
import { expect, it } from "vitest";
import { withClient } from "./connections.js";
import { adminUrl } from "./helpers.js";
import { KEPT_DATABASE_COMMENT } from "./leaks.js";
import { runNode, SPAWNING_TEST_TIMEOUT_MS } from "./processes.js";

it(
  "names every leak and keeps only the failed test's database",
  async () => {
    const run = await runNode(
      [
        "node_modules/vitest/vitest.mjs",
        "run",
        "--config",
        "test/fixtures/vitest.guarded.config.ts",
      ],
      {
        // The same server as this run, so that the kept database can be looked at.
        env: {
          DATABASE_URL: adminUrl(),
          VITEST: undefined,
          VITEST_POOL_ID: undefined,
          VITEST_WORKER_ID: undefined,
        },
        deadlineMs: 300_000,
      },
    );
    const output = run.stdout + run.stderr;
    const kept = /its database (\S+) is kept for inspection/.exec(output)?.[1];
    try {
      expect(run.code, output).toBe(1);
      expect(output).toMatch(/leaky\.fixture\.ts left 5 thing\(s\) open after its afterAll hooks/);
      for (const leak of [
        /- a daemon on database \S+_leaky_\S+, never stopped \(opened at \S+leaky\.fixture\.ts:\d+/,
        /- child process \d+ `sleep 600`, still running/,
        /- a pg pool on database \S+_leaky_\S+ \(application_name leaky-pool\), never ended/,
        /- database \S+_leaky_\S+, never dropped/,
        /- pgfn-leftover\.txt in the temporary directory, never removed/,
      ]) {
        expect(output).toMatch(leak);
      }
      // The kept fixture leaves nothing open: it is not named.
      expect(output).not.toMatch(/kept\.fixture\.ts left/);

      expect(kept).toMatch(/_kept_failed_/);
      expect(output).toContain(`${kept}: a test of test/fixtures/kept.fixture.ts failed`);
      const databases = await withClient(adminUrl(), (admin) =>
        admin.query<{ datname: string; note: string | null }>(
          `select datname, shobj_description(oid, 'pg_database') as note from pg_database
         where datname = $1 or datname like $2`,
          [kept, `%${kept!.split("_kept_failed_")[0]}%`],
        ),
      );
      expect(databases.rows).toEqual([
        {
          datname: kept,
          note: `${KEPT_DATABASE_COMMENT} a test of test/fixtures/kept.fixture.ts failed`,
        },
      ]);
    } finally {
      if (kept) {
        await withClient(adminUrl(), (admin) =>
          admin.query(`drop database if exists ${admin.escapeIdentifier(kept)} with (force)`),
        );
      }
    }
  },
  SPAWNING_TEST_TIMEOUT_MS,
);
