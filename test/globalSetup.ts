// Once per `npm test`: a Postgres (DATABASE_URL, else an embedded one), the
// example handlers built, and a template database with the migrations
// applied, which every test file clones into a database of its own
// (test/helpers.ts, createTestDatabase).
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { buildExamples, exampleNames, examplePath } from "../examples/build.js";
import { createPool } from "../src/db/pool.js";
import { startEmbeddedPostgres, type EmbeddedPostgres } from "../src/embedded.js";
import { silentLogger } from "../src/logger.js";
import { migrate } from "../src/migrate.js";
import { withClient, withDatabase } from "./connections.js";
import { KEPT_DATABASE_COMMENT } from "./leaks.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A superuser URL to the server's `postgres` database. */
    adminUrl: string;
    /** The migrated template database to clone; nobody may connect to it. */
    templateDatabase: string;
    /** Prefix of every test database this run creates (dropped at teardown, unless kept). */
    runPrefix: string;
    /** This run's temporary directory; the leak guard makes one per test file inside it. */
    tmpRoot: string;
  }
}

/** How long the template's last backends may take to exit after its pool is closed. */
const TEMPLATE_IDLE_TIMEOUT_MS = 10_000;

export default async function setup(project: TestProject) {
  const started = performance.now();
  if (exampleNames().some((name) => !existsSync(examplePath(name)))) {
    await buildExamples({ quiet: true });
  }

  // Unique per run, so runs sharing one server (CI jobs, two terminals) never
  // touch each other's databases. Names stay well under Postgres' 63 bytes.
  const runId = `${process.pid}_${randomBytes(3).toString("hex")}`;
  const templateDatabase = `pgfn_tpl_${runId}`;
  const runPrefix = `pgfn_t_${runId}_`;
  // Removed at teardown, whatever a test file left in it. 0755: as root, an
  // embedded Postgres inside runs as `postgres` and must traverse it.
  const tmpRoot = path.join(tmpdir(), `pgfn-run-${runId}`);
  await mkdir(tmpRoot, { mode: 0o755 });

  let embedded: EmbeddedPostgres | undefined;
  let dataRoot: string | undefined;
  let adminUrl = process.env.DATABASE_URL || undefined;
  const admin = <T>(use: (client: pg.Client) => Promise<T>): Promise<T> =>
    withClient(adminUrl!, use);

  const teardown = async () => {
    if (adminUrl) {
      await admin(async (client) => {
        const { rows } = await client.query<{ datname: string; note: string | null }>(
          `select datname, shobj_description(oid, 'pg_database') as note from pg_database
           where datname = $1 or starts_with(datname, $2) order by datname`,
          [templateDatabase, runPrefix],
        );
        const kept: string[] = [];
        // Test files drop their own; these are the leftovers of crashed ones.
        for (const { datname, note } of rows) {
          if (note?.startsWith(KEPT_DATABASE_COMMENT)) {
            kept.push(`  ${datname}: ${note.slice(KEPT_DATABASE_COMMENT.length).trim()}`);
            continue;
          }
          await client.query(
            `drop database if exists ${client.escapeIdentifier(datname)} with (force)`,
          );
        }
        if (kept.length > 0) {
          console.log(
            embedded
              ? `The databases of failed tests were on the embedded Postgres, which is now removed; set DATABASE_URL to keep them:\n${kept.join("\n")}`
              : `Kept for inspection, the databases of failed tests (drop database NAME when done):\n${kept.join("\n")}`,
          );
        }
      }).catch((error: unknown) => {
        // A dead embedded server has nothing left to drop; a shared one is worth a warning.
        if (!embedded)
          console.warn(`test teardown could not drop this run's databases: ${String(error)}`);
      });
    }
    await embedded?.stop();
    if (dataRoot) await rm(dataRoot, { recursive: true, force: true });
    // The leak guard empties and removes each file's directory and fails the
    // file that left something; this is what a crashed file left.
    const left = await readdir(tmpRoot).catch(() => []);
    await rm(tmpRoot, { recursive: true, force: true });
    if (left.length > 0)
      console.warn(`removed what test files left in ${tmpRoot}: ${left.join(", ")}`);
  };

  try {
    if (!adminUrl) {
      dataRoot = path.join(tmpRoot, "embedded-postgres");
      await mkdir(dataRoot, { mode: 0o755 });
      embedded = await startEmbeddedPostgres({ dataDir: path.join(dataRoot, "data"), fast: true });
      adminUrl = embedded.connectionString;
    }
    await admin((client) =>
      client.query(`create database ${client.escapeIdentifier(templateDatabase)}`),
    ).catch((error: unknown) => {
      throw new Error(
        `The tests could not create a database on ${embedded ? "the embedded Postgres" : "DATABASE_URL"}` +
          ` (${String(error)}). They need a superuser, or a role with CREATEDB; unset DATABASE_URL to use an embedded Postgres.`,
        { cause: error },
      );
    });

    const pool = createPool(withDatabase(adminUrl, templateDatabase), 2, silentLogger());
    try {
      await migrate(pool);
    } finally {
      await pool.end();
    }
    // `create database ... template` fails while anyone is connected to the
    // template: wait for the migration's backends to go (they exit just after
    // their clients disconnect) and let nobody connect again.
    await admin(async (client) => {
      const template = client.escapeIdentifier(templateDatabase);
      await client.query(`alter database ${template} with allow_connections false`);
      const deadline = Date.now() + TEMPLATE_IDLE_TIMEOUT_MS;
      for (;;) {
        const { rows } = await client.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where datname = $1",
          [templateDatabase],
        );
        if (rows[0]?.n === 0) break;
        if (Date.now() > deadline) {
          throw new Error(`${templateDatabase} still has ${rows[0]?.n} sessions after migrating.`);
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    });
  } catch (error) {
    await teardown().catch(() => undefined);
    throw error;
  }

  project.provide("adminUrl", adminUrl);
  project.provide("templateDatabase", templateDatabase);
  project.provide("runPrefix", runPrefix);
  project.provide("tmpRoot", tmpRoot);
  console.log(
    `test Postgres: ${embedded ? `embedded (port ${embedded.port})` : "DATABASE_URL"}; template ${templateDatabase} ready in ${Math.round(performance.now() - started)} ms`,
  );

  return teardown;
}
