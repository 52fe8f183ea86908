// `pgfn dev`, the README's first command: embedded Postgres, demo, runs
// shown; and on a database of the user's (DATABASE_URL), a guest that
// touches nothing of theirs and removes what it made.
import { execFileSync } from "node:child_process";
import { readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { DEMO_FUNCTION, DEMO_TABLE, runDev } from "../src/dev.js";
import { useTestDatabase } from "./fixture.js";
import { waitFor } from "./helpers.js";
import {
  CHILD_DEADLINE_MS,
  killChild,
  PGFN_MAIN,
  runTs,
  SPAWNING_TEST_TIMEOUT_MS,
  startTs,
  type ChildEnv,
} from "./processes.js";

it("starts an embedded Postgres, runs the demo rows and shows their runs", async () => {
  const lines: string[] = [];
  await runDev({
    keepRunning: false,
    print: (line) => lines.push(line),
    env: { PGFN_LOG_LEVEL: "error" },
  });
  const out = lines.join("\n");
  expect(out).toContain("starting an embedded Postgres (DATABASE_URL is not set)");
  expect(out).toMatch(/migrations: \d+ applied, 0 already in place/);
  expect(out).toMatch(/deployed pgfn_demo_welcome \(sha256 [0-9a-f]{12}…\)/);
  const runLines = lines.filter((l) =>
    /^run \d+ event \d+ pgfn_demo_welcome attempt 1: succeeded/.test(l),
  );
  expect(runLines).toHaveLength(4);
  expect(out).toContain('"greeting":"Welcome, ada@example.com!"');
  // The UPDATE (event 4) greets the new address.
  expect(out).toContain('"event_id":4,"greeting":"Welcome, ada@lovelace.dev!"');
  // The table from pgfn.function_runs: a header and four succeeded rows.
  const all = out.split("\n");
  const table = all.slice(all.indexOf("select * from pgfn.function_runs:") + 1);
  expect(table[0]).toMatch(/^run\s+event\s+function/);
  expect(table.filter((l) => /pgfn_demo_welcome\s+1\s+succeeded\s+200/.test(l))).toHaveLength(4);
  // initdb and a server start, then up to 30 s for the demo's runs: on a
  // loaded machine the first two alone can take a minute.
}, 180_000);

describe("pgfn dev --typescript", () => {
  const t = useTestDatabase("dev_typescript");

  it("deploys the demo handler from TypeScript and greets the same rows", async () => {
    const lines: string[] = [];
    // Read while the demo runs: on the test's database (DATABASE_URL) it
    // removes its function as it ends. The line comes after the deploy and
    // long before that.
    let runtime: Promise<pg.QueryResult<{ runtime: string }>> | undefined;
    await runDev({
      keepRunning: false,
      typescript: true,
      print: (line) => {
        lines.push(line);
        if (line.startsWith("trigger:"))
          runtime = t.pool.query(
            "select runtime from pgfn.functions where name = 'pgfn_demo_welcome'",
          );
      },
      env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "error" },
    });
    const out = lines.join("\n");
    expect(out).toMatch(/deployed pgfn_demo_welcome \(sha256 [0-9a-f]{12}…\)/);
    // Where the deployed file is (the tests run from the repository's root).
    expect(lines).toContain("handler: examples/demo-ts/welcome.ts (copy it to write your own)");
    expect((await runtime)?.rows[0]?.runtime).toBe("js");
    expect(
      lines.filter((l) => /^run \d+ event \d+ pgfn_demo_welcome attempt 1: succeeded/.test(l)),
    ).toHaveLength(4);
    expect(out).toContain('"greeting":"Welcome, ada@example.com!"');
    expect(out).toContain('"event_id":4,"greeting":"Welcome, ada@lovelace.dev!"');
  }, 60_000);
});

/** The postgres processes whose command line names `port`, by pid. */
function postgresOn(port: string): string[] {
  return execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" })
    .split("\n")
    .filter((line) => /\bpostgres\b/.test(line) && line.includes(` -p ${port} `))
    .map((line) => line.trim().split(/\s+/)[0]!);
}

/**
 * `pgfn dev` as a terminal runs it: the leader of a process group of its
 * own, printing until "Ctrl-C to stop.". Without DATABASE_URL in `env`, on
 * an embedded Postgres. Resolves with the child and what it printed so far.
 */
async function startDevInTerminal(env: ChildEnv = {}) {
  const child = startTs(PGFN_MAIN, ["dev"], {
    env: {
      DATABASE_URL: undefined,
      PGFN_LOG_LEVEL: undefined,
      FORCE_COLOR: "0",
      // This file's own temporary directory (the leak guard's), not the
      // machine's: pgfn dev makes its cluster there, and what it leaves is seen.
      TMPDIR: tmpdir(),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const output = { stdout: "", stderr: "" };
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (output.stdout += chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (output.stderr += chunk));
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => resolve(code)),
  );
  await waitFor(async () => output.stdout.includes("Ctrl-C to stop."), {
    timeoutMs: CHILD_DEADLINE_MS,
    message: "pgfn dev to be running",
  }).catch(async (error: unknown) => {
    await killChild(child);
    throw new Error(`${String(error)}\nstdout:\n${output.stdout}\nstderr:\n${output.stderr}`);
  });
  return { child, output, exited };
}

/** startDevInTerminal on an embedded Postgres, with the port it listens on. */
async function startEmbeddedDevInTerminal() {
  const dev = await startDevInTerminal();
  const port = /127\.0\.0\.1:(\d+)\//.exec(dev.output.stdout)?.[1];
  if (!port) throw new Error(`No port in pgfn dev's output:\n${dev.output.stdout}`);
  return { ...dev, port };
}

describe("pgfn dev in a terminal", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("Ctrl-C (SIGINT to its process group) stops it cleanly: one line, exit 0, no postgres left", async () => {
    const { child, port, output, exited } = await startEmbeddedDevInTerminal();
    expect(postgresOn(port)).not.toEqual([]);
    // What the terminal does on Ctrl-C: SIGINT to every process of the foreground group.
    process.kill(-child.pid!, "SIGINT");
    const code = await exited;
    expect(output.stderr).not.toMatch(/error/i);
    const stopped = `${output.stdout}\n${output.stderr}`
      .split("\n")
      .filter((l) => /stopped/.test(l));
    expect(stopped).toHaveLength(1);
    expect(stopped[0]).toMatch(/^pgfn dev stopped/);
    expect(code).toBe(0);
    expect(postgresOn(port)).toEqual([]);
  });

  it("a hard kill (SIGKILL) leaves no postgres running and no cluster on disk", async () => {
    const { child, port, exited } = await startEmbeddedDevInTerminal();
    // pgfn alone: no hook of its own can run, so whatever stops postgres must be outside it.
    child.kill("SIGKILL");
    await exited;
    await waitFor(async () => postgresOn(port).length === 0, {
      timeoutMs: 30_000,
      message: `the embedded postgres on port ${port} to stop after pgfn dev was killed`,
    });
    // pgfn dev's own directory stays (nothing of pgfn ran to remove it), but
    // the supervisor removed the cluster in it, as far as its user may.
    const left = (await readdir(tmpdir())).filter((name) => name.startsWith("pgfn-dev-"));
    expect(left).toHaveLength(1);
    const devDir = path.join(tmpdir(), left[0]!);
    const data = await readdir(path.join(devDir, "data")).catch(() => []);
    expect(data).toEqual([]);
    await rm(devDir, { recursive: true, force: true });
  });
});

describe(
  "pgfn dev on a database of the user's (DATABASE_URL)",
  { timeout: SPAWNING_TEST_TIMEOUT_MS },
  () => {
    const t = useTestDatabase("dev_user_database");
    const dev = (args: readonly string[], env: ChildEnv = {}) =>
      runTs(PGFN_MAIN, ["dev", ...args], {
        env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "error", FORCE_COLOR: "0", ...env },
      });
    const runLines = (stdout: string) =>
      stdout
        .split("\n")
        .filter((l) => /^run \d+ event \d+ pgfn_demo_welcome attempt 1: succeeded/.test(l));
    /** What of the demo is in the database. */
    async function demoLeft() {
      const { rows } = await t.pool.query(
        `select exists (select from pgfn.functions where name = $1) as function,
                to_regclass($2) is not null as table,
                (select count(*)::int from pgfn.events where function_name = $1) as events,
                (select count(*)::int from pgfn.function_runs where function_name = $1) as runs`,
        [DEMO_FUNCTION, DEMO_TABLE],
      );
      return rows[0] as unknown;
    }
    const nothingLeft = { function: false, table: false, events: 0, runs: 0 };
    const fn = async (name: string) =>
      (
        await t.pool.query<{ wasm_sha256: string; description: string | null }>(
          "select wasm_sha256, description from pgfn.functions where name = $1",
          [name],
        )
      ).rows[0];

    afterEach(async () => {
      await t.pool.query(
        "drop table if exists public.users, public.pgfn_demo_users; delete from pgfn.functions; delete from pgfn.events",
      );
    });

    it("leaves the user's function named as in the README's tour alone, and nothing of its own", async () => {
      await t.deploy("send_welcome_email", { example: "echo", description: "mine" });
      await t.pool.query(
        "create table public.users (id serial primary key, name text, email text)",
      );
      await t.pool.query(
        "select pgfn.attach('public.users', 'send_welcome_email', array['INSERT'])",
      );
      const mine = await fn("send_welcome_email");

      const result = await dev(["--no-keep-running"]);
      expect(result.code, result.stderr).toBe(0);
      expect(await fn("send_welcome_email")).toEqual(mine);
      expect(runLines(result.stdout)).toHaveLength(4);
      expect(result.stdout).toContain(
        "removed the demo from this database: function pgfn_demo_welcome, table public.pgfn_demo_users with its trigger, 4 events with their runs\n",
      );
      // Its trigger still sends the user's rows to the user's function.
      await t.pool.query(
        "insert into public.users (name, email) values ('Ada', 'ada@example.com')",
      );
      const events = await t.pool.query("select function_name from pgfn.events");
      expect(events.rows).toEqual([{ function_name: "send_welcome_email" }]);
      expect(await demoLeft()).toEqual(nothingLeft);
    });

    it("refuses to run beside a function named like the demo's that it did not deploy", async () => {
      await t.deploy(DEMO_FUNCTION, { example: "echo", description: "mine" });
      const mine = await fn(DEMO_FUNCTION);

      const result = await dev(["--no-keep-running"]);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain(
        "This database has a function named pgfn_demo_welcome that pgfn dev did not deploy; pgfn dev leaves it alone and stops here. Unset DATABASE_URL to run the demo in an embedded Postgres.",
      );
      expect(await fn(DEMO_FUNCTION)).toEqual(mine);
      expect(await demoLeft()).toEqual({ ...nothingLeft, function: true });
    });

    it("refuses to use a table named like the demo's that it did not create", async () => {
      await t.pool.query(`create table ${DEMO_TABLE} (id int, note text)`);
      await t.pool.query(`insert into ${DEMO_TABLE} values (1, 'mine')`);

      const result = await dev(["--no-keep-running"]);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain(
        "This database has a table public.pgfn_demo_users that pgfn dev did not create; pgfn dev leaves it alone and stops here.",
      );
      expect((await t.pool.query(`select * from ${DEMO_TABLE}`)).rows).toEqual([
        { id: 1, note: "mine" },
      ]);
      expect(await demoLeft()).toEqual({ ...nothingLeft, table: true });
    });

    it("on Ctrl-C removes what it made, as it says, rows added meanwhile included", async () => {
      const { child, output, exited } = await startDevInTerminal({ DATABASE_URL: t.url });
      // As its output suggests, in another terminal:
      await t.pool.query(
        `insert into ${DEMO_TABLE} (name, email) values ('You', 'you@example.com')`,
      );
      await waitFor(async () => runLines(output.stdout).length === 5, {
        timeoutMs: 30_000,
        message: "the fifth demo run in pgfn dev's output",
      });
      process.kill(-child.pid!, "SIGINT");
      expect(await exited).toBe(0);
      expect(output.stdout).toContain(
        "\nremoved the demo from this database: function pgfn_demo_welcome, table public.pgfn_demo_users with its trigger, 5 events with their runs\npgfn dev stopped.\n",
      );
      expect(await demoLeft()).toEqual(nothingLeft);
    });

    it("says so when another daemon runs on the database, and shows the demo runs it ran", async () => {
      const other = await t.startDaemon();
      // Killed a moment ago: a fresh heartbeat, but nobody holds its lock.
      await t.pool.query(
        `insert into pgfn.daemons (id, hostname, pid, holds_lock) values ('killed-just-now', 'ghost', 4242, true)`,
      );
      // Without a worker of its own, every demo run is the other daemon's.
      const result = await dev(["--no-keep-running"], { PGFN_WORKER: "false" });
      await other.stop();
      await t.pool.query(`delete from pgfn.daemons where id = 'killed-just-now'`);
      expect(result.stdout).not.toContain("ghost");
      expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
      expect(result.stdout).toMatch(
        /^another pgfn daemon is running on this database \(pid \d+ on [^)]+\): it may run the demo's events too; their runs are shown here whoever ran them$/m,
      );
      expect(runLines(result.stdout)).toHaveLength(4);
      expect(await demoLeft()).toEqual(nothingLeft);
    });
  },
);
