// The CLI as a user runs it: a child process, real exit codes, real output.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createTestDatabase, exampleWasm } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import {
  CHILD_DEADLINE_MS,
  PGFN_MAIN,
  runTs,
  SPAWNING_TEST_TIMEOUT_MS,
  startTs,
  type ChildResult,
} from "./processes.js";

const t = useTestDatabase("cli");

function pgfn(args: string[], env: Record<string, string | undefined> = {}): Promise<ChildResult> {
  return runTs(PGFN_MAIN, args, { env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "warn", ...env } });
}

/**
 * `pgfn ARGS | head -1` when head has already gone: the reading end of
 * stdout is closed before the child writes, so every write fails (EPIPE).
 */
async function pgfnIntoClosedPipe(args: string[]): Promise<{ code: number; stderr: string }> {
  const child = startTs(PGFN_MAIN, args, {
    env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout!.destroy();
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`pgfn ${args.join(" ")} did not end within ${CHILD_DEADLINE_MS} ms`));
    }, CHILD_DEADLINE_MS);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stderr });
    });
  });
}

/** A user-facing failure: exit 1, one line on stderr saying what is wrong, no stack trace. */
function expectOneLineError(result: ChildResult, pattern: RegExp) {
  expect(result.code).toBe(1);
  const lines = result.stderr.trim().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^pgfn: /);
  expect(lines[0]).toMatch(pattern);
  expect(result.stderr).not.toMatch(/\n\s+at /);
}

// Several child processes per test, each starting through tsx, each with a deadline of its own.
describe("pgfn CLI", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("migrate reports an up-to-date schema", async () => {
    const r = await pgfn(["migrate"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/pgfn schema is up to date \(\d+ migrations\)/);
  });

  it("deploy, invoke and runs work together", async () => {
    const deployed = await pgfn([
      "deploy",
      "echo",
      exampleWasm("echo"),
      "--timeout-ms",
      "5000",
      "--env",
      "GREETING=hi",
    ]);
    expect(deployed.stderr).toBe("");
    expect(deployed.stdout).toMatch(/^deployed echo \(sha256 [0-9a-f]{64}, \d+ bytes\)$/m);
    const fn = await t.pool.query(`select timeout_ms, env from pgfn.functions where name = 'echo'`);
    expect(fn.rows[0]).toEqual({ timeout_ms: 5000, env: { GREETING: "hi" } });

    const invoked = await pgfn(["invoke", "echo", '{"hello":"world"}']);
    expect(invoked.code).toBe(0);
    expect(invoked.stdout).toMatch(/^run \d+ event \d+ echo attempt 1: succeeded in/);
    expect(invoked.stdout).toContain('"hello": "world"');
    const run = await t.pool.query(
      `select r.status, e.source, e.payload from pgfn.function_runs r join pgfn.events e on e.id = r.event_id where r.function_name = 'echo'`,
    );
    expect(run.rows).toEqual([
      { status: "succeeded", source: "manual", payload: { hello: "world" } },
    ]);

    const runs = await pgfn(["runs", "echo"]);
    expect(runs.code).toBe(0);
    expect(runs.stdout.split("\n")[0]).toMatch(/^run\s+event\s+function\s+attempt\s+status/);
    expect(runs.stdout).toMatch(/echo\s+1\s+succeeded\s+200/);

    const updated = await pgfn(["deploy", "echo", exampleWasm("echo"), "--update"]);
    expect(updated.stdout).toMatch(/^updated echo/);
  });

  it("invoke of a failing handler prints the failed run and exits 1", async () => {
    await pgfn(["deploy", "fail", exampleWasm("fail")]);
    const r = await pgfn(["invoke", "fail"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/fail attempt 1: failed in .* FUNCTION_ERROR .*demo failure/);
    // A message the run's line shows whole is not said twice.
    expect(r.stdout).not.toMatch(/^FUNCTION_ERROR: /m);
  });

  it("invoke of a failed run prints its whole message and what it logged, the stack with the file's lines", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "pgfn-invoke-"));
    try {
      const file = path.join(dir, "loud.ts");
      const reason = "the mail API said no: " + "x".repeat(100) + " (end)";
      await writeFile(
        file,
        `export default (event: unknown, ctx: { log: { info(m: string): void } }) => {\n  ctx.log.info("about to fail");\n  throw new Error(${JSON.stringify(reason)});\n};\n`,
      );
      const deployed = await pgfn(["deploy", "loud", file]);
      expect(deployed.code, deployed.stderr).toBe(0);
      const r = await pgfn(["invoke", "loud"]);
      expect(r.code).toBe(1);
      const lines = r.stdout.trimEnd().split("\n");
      expect(lines[0]).toMatch(/^run \d+ event \d+ loud attempt 1: failed in .* FUNCTION_ERROR /);
      expect(lines[1]).toBe(`FUNCTION_ERROR: ${reason}`);
      expect(r.stdout).toMatch(/\binfo\s+\d+\s+about to fail$/m);
      expect(r.stdout).toMatch(/\berror\s+\d+\s+the mail API said no: x+ \(end\)$/m);
      expect(r.stdout).toMatch(/^\s+at .*loud\.ts:3:/m);
    } finally {
      // The later tests count the functions deployed.
      await t.pool.query(`delete from pgfn.functions where name = 'loud'`);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("retry runs a failed run's event again, as a new event", async () => {
    const failed = (
      await t.pool.query<{ id: string; event_id: string }>(
        `select id, event_id from pgfn.function_runs where function_name = 'fail' order by id desc limit 1`,
      )
    ).rows[0]!;
    const r = await pgfn(["retry", failed.id]);
    expect(r.code, r.stderr).toBe(0);
    const [, newEvent] = r.stdout.match(/^run \d+: its event runs again as event (\d+)$/m) ?? [];
    expect(newEvent).toBeDefined();
    const replay = await t.pool.query(`select replay_of from pgfn.events where id = $1`, [
      newEvent,
    ]);
    expect(replay.rows).toEqual([{ replay_of: failed.event_id }]);

    // A second retry of the same run would run the handler once more: refused, unless forced.
    const again = await pgfn(["retry", failed.id]);
    expectOneLineError(
      again,
      new RegExp(
        `^pgfn: run ${failed.id} was already retried: its event ${failed.event_id} was run again as event ${newEvent}, created \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC\\. To retry it once more anyway: pgfn retry ${failed.id} --force$`,
      ),
    );
    expect(again.stdout).toBe("");
    const forced = await pgfn(["retry", failed.id, "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    const [, forcedEvent] =
      forced.stdout.match(/^run \d+: its event runs again as event (\d+)$/m) ?? [];
    expect(
      (
        await t.pool.query(`select replay_of, original_id from pgfn.events where id = $1`, [
          forcedEvent,
        ])
      ).rows,
    ).toEqual([{ replay_of: failed.event_id, original_id: failed.event_id }]);
    expectOneLineError(
      await pgfn(["retry", "abc"]),
      /^pgfn: RUN_ID must be a whole number \(got "abc"\)\.$/,
    );
    expectOneLineError(
      await pgfn(["retry", "999999"]),
      /^pgfn: there is no run 999999 \(`pgfn runs` lists the latest runs\)\.$/,
    );
  });

  it("each bad input is one line and exit code 1", async () => {
    expectOneLineError(await pgfn(["invoke", "nope"]), /Function "nope" is not deployed/);
    expectOneLineError(
      await pgfn(["invoke", "echo", "{not json"]),
      /The payload is not valid JSON/,
    );
    expectOneLineError(
      await pgfn(["deploy", "x", "/no/such/file.wasm"]),
      /Cannot read \/no\/such\/file\.wasm: ENOENT/,
    );
    expectOneLineError(
      await pgfn(["deploy", "Send Email", exampleWasm("echo")]),
      /Invalid function name "Send Email"/,
    );

    const junkDir = await mkdtemp(path.join(tmpdir(), "pgfn-junk-"));
    try {
      const junk = path.join(junkDir, "junk.wasm");
      await writeFile(junk, "this is not wasm");
      expectOneLineError(await pgfn(["deploy", "junk", junk]), /Invalid WebAssembly for "junk"/);
    } finally {
      await rm(junkDir, { recursive: true, force: true });
    }
    expectOneLineError(
      await pgfn(["deploy", "echo", exampleWasm("echo")]),
      /Function "echo" already exists\. Deploy it as an update to replace it \(`pgfn deploy --update`/,
    );
    expectOneLineError(
      await pgfn(["deploy", "slow", exampleWasm("echo"), "--timeout-ms", "999999"]),
      /^pgfn: --timeout-ms must be a whole number between 1000 and 300000 \(got 999999\)\.$/,
    );
    expectOneLineError(
      await pgfn(["deploy", "slow", exampleWasm("echo"), "--timeout-ms", "soon"]),
      /^pgfn: --timeout-ms must be a whole number between 1000 and 300000 \(got "soon"\)\.$/,
    );
    expectOneLineError(
      await pgfn(["deploy", "envkey", exampleWasm("echo"), "--env", "bad key=v"]),
      /^pgfn: --env key "bad key" must be an identifier \(letters, digits and _, not a digit first\)\.$/,
    );
    expectOneLineError(
      await pgfn(["runs", "-n", "0"]),
      /^pgfn: --limit must be a whole number between 1 and 10000 \(got 0\)\.$/,
    );
    expectOneLineError(
      await pgfn(["runs", "-n", "all"]),
      /^pgfn: --limit must be a whole number between 1 and 10000 \(got "all"\)\.$/,
    );
    expectOneLineError(
      await pgfn(["deploy", "envbad", exampleWasm("echo"), "--env", "NOEQUALS"]),
      /--env takes KEY=VALUE/,
    );
    // Nothing of the refused deploys was stored.
    const names = await t.pool.query(`select name from pgfn.functions order by name`);
    expect(names.rows.map((r) => r.name)).toEqual(["echo", "fail"]);
  });

  it("configuration errors name the variable", async () => {
    expectOneLineError(
      await pgfn(["runs"], { PGFN_WORKER_CONCURRENCY: "lots" }),
      /PGFN_WORKER_CONCURRENCY/,
    );
    expectOneLineError(
      await pgfn(["runs"], { PGFN_HTTP_PORT: "abc" }),
      /^pgfn: Invalid configuration: PGFN_HTTP_PORT must be a whole number between 0 and 65535 \(got "abc"\)\.$/,
    );
    expectOneLineError(
      await pgfn(["runs"], { DATABASE_URL: "mysql://nope" }),
      /^pgfn: Invalid configuration: DATABASE_URL must be a postgres:\/\/ or postgresql:\/\/ URL\.$/,
    );
    expectOneLineError(await pgfn(["runs"], { DATABASE_URL: "" }), /DATABASE_URL is not set/);
    expectOneLineError(
      await pgfn(["runs"], { DATABASE_URL: "postgres://u:secret-pw@127.0.0.1:1/db" }),
      /Cannot connect to Postgres at postgres:\/\/u:\*\*\*@127\.0\.0\.1:1\/db \(ECONNREFUSED\)/,
    );
  });

  it("start and runs refuse a database without the schema, and a missing database, naming the fix", async () => {
    const empty = await createTestDatabase("cli_empty", { migrated: false });
    try {
      expectOneLineError(
        await pgfn(["start"], { DATABASE_URL: empty.url }),
        /schema is not current .* Run `pgfn migrate` first/,
      );
      expectOneLineError(
        await pgfn(["runs"], { DATABASE_URL: empty.url }),
        /^pgfn: relation "pgfn\.function_runs" does not exist: pgfn is not installed in this database, or not completely\. Run `pgfn migrate` first\.$/,
      );
      const missing = new URL(empty.url);
      missing.pathname = "/pgfn_no_such_db";
      expectOneLineError(
        await pgfn(["runs"], { DATABASE_URL: missing.toString() }),
        /^pgfn: database "pgfn_no_such_db" does not exist\. Create it \(`createdb pgfn_no_such_db`\) or point DATABASE_URL at one that exists\.$/,
      );
    } finally {
      await empty.drop();
    }
  });

  it("--help lists every command", async () => {
    const r = await pgfn(["--help"]);
    for (const cmd of ["migrate", "start", "deploy", "invoke", "runs", "retry", "dev"])
      expect(r.stdout).toContain(cmd);
    // How to point pgfn at a database, and where the rest is documented.
    expect(r.stdout).toMatch(/^ {2}DATABASE_URL {2}the Postgres to use, e\.g\. postgres:\/\//m);
    expect(r.stdout).toMatch(/README, section "Configuration"/);
  });

  it("--version prints the package's version; a default is said once", async () => {
    const { version } = JSON.parse(
      await readFile(new URL("../package.json", import.meta.url), "utf8"),
    ) as { version: string };
    const v = await pgfn(["--version"]);
    expect(v.code).toBe(0);
    expect(v.stdout.trim()).toBe(version);
    const runs = await pgfn(["runs", "--help"]);
    expect(runs.stdout).toMatch(/--limit <n>\s+how many \(default: 20\)\n/);
  });

  it("writing into a closed pipe (pgfn invoke f | head -1) ends quietly with the command's own status", async () => {
    // Each of these writes to stdout after the reader has gone.
    expect(await pgfnIntoClosedPipe(["deploy", "piped", exampleWasm("echo")])).toEqual({
      code: 0,
      stderr: "",
    });
    expect(await pgfnIntoClosedPipe(["invoke", "piped", '{"a":1}'])).toEqual({
      code: 0,
      stderr: "",
    });
    expect(await pgfnIntoClosedPipe(["runs"])).toEqual({ code: 0, stderr: "" });
    // The run happened; a failed one is still exit 1, as without the pipe.
    await pgfn(["deploy", "piped_fail", exampleWasm("fail")]);
    expect(await pgfnIntoClosedPipe(["invoke", "piped_fail"])).toEqual({ code: 1, stderr: "" });
    // Other tests count this database's functions.
    await t.pool.query(`delete from pgfn.functions where name in ('piped', 'piped_fail')`);
  });
});
