// The setup most test files share, once: a database of the file's own,
// example handlers deployed on it, daemons started on it, and all of it
// torn down after the file (daemons stopped, then the database dropped, or
// kept if a test failed).
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll } from "vitest";
import { createDb, type Db } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import type { Daemon } from "../src/daemon.js";
import { createTestDatabase, exampleWasm, startTestDaemon, type TestDatabase } from "./helpers.js";

/** What deployFunction takes besides the name and the module. */
type DeploySettings = Omit<
  Extract<Parameters<typeof deployFunction>[1], { wasm: Uint8Array }>,
  "name" | "wasm" | "source"
>;

export interface TestFixture extends TestDatabase {
  /** A Kysely instance on the database's pool. */
  readonly db: Db;
  /**
   * Deploys function `name` running examples/EXAMPLE/EXAMPLE.wasm.
   * (Default example: `name`)
   */
  deploy(name: string, settings?: DeploySettings & { example?: string }): Promise<void>;
  /**
   * A daemon on the database, as startTestDaemon makes it; stopped after
   * the file's own afterAll hooks if the file did not stop it.
   */
  startDaemon(...args: DropFirst<Parameters<typeof startTestDaemon>>): Promise<Daemon>;
}

type DropFirst<T extends unknown[]> = T extends [unknown, ...infer Rest] ? Rest : never;

/**
 * A test file's database: created in a beforeAll, torn down in an afterAll
 * that runs after the file's own. Call it at the top of the file; the
 * fixture's members work once the beforeAll hooks have started.
 *
 * @example
 * const t = useTestDatabase("daemon_flow");
 * beforeAll(() => t.deploy("greeter", { example: "echo", maxAttempts: 1 }));
 * it("runs it", async () => {
 *   await t.startDaemon({ pollIntervalMs: 100 });
 *   await t.pool.query(...);
 * });
 */
export function useTestDatabase(label: string, options: { migrated?: boolean } = {}): TestFixture {
  let database: TestDatabase | undefined;
  let db: Db | undefined;
  const daemons: Daemon[] = [];
  const current = (): TestDatabase => {
    if (!database) {
      throw new Error(
        `The test database "${label}" is used before its beforeAll ran (or after its afterAll).`,
      );
    }
    return database;
  };

  beforeAll(async () => {
    database = await createTestDatabase(label, options);
  });
  afterAll(async () => {
    try {
      await Promise.all(daemons.splice(0).map((daemon) => daemon.stop()));
    } finally {
      await database?.drop();
    }
  });

  const fixture: TestFixture = {
    get name() {
      return current().name;
    },
    get url() {
      return current().url;
    },
    get pool() {
      return current().pool;
    },
    get db() {
      db ??= createDb(current().pool);
      return db;
    },
    drop() {
      return current().drop();
    },
    async deploy(name, { example = name, ...settings } = {}) {
      await deployFunction(fixture.db, {
        name,
        wasm: await readFile(exampleWasm(example)),
        ...settings,
      });
    },
    async startDaemon(...args) {
      const daemon = await startTestDaemon(current().url, ...args);
      daemons.push(daemon);
      return daemon;
    },
  };
  return fixture;
}
