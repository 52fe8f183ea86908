// `pgfn dev`, the README's first command: embedded Postgres, demo, runs shown.
import { execFileSync } from "node:child_process";
import { readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runDev } from "../src/dev.js";
import { useTestDatabase } from "./fixture.js";
import { waitFor } from "./helpers.js";
import {
  CHILD_DEADLINE_MS,
  killChild,
  PGFN_MAIN,
  SPAWNING_TEST_TIMEOUT_MS,
  startTs,
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
  expect(out).toMatch(/deployed send_welcome_email \(sha256 [0-9a-f]{12}…\)/);
  const runLines = lines.filter((l) =>
    /^run \d+ event \d+ send_welcome_email attempt 1: succeeded/.test(l),
  );
  expect(runLines).toHaveLength(4);
  expect(out).toContain('"greeting":"Welcome, ada@example.com!"');
  // The UPDATE (event 4) greets the new address.
  expect(out).toContain('"event_id":4,"greeting":"Welcome, ada@lovelace.dev!"');
  // The table from pgfn.function_runs: a header and four succeeded rows.
  const all = out.split("\n");
  const table = all.slice(all.indexOf("select * from pgfn.function_runs:") + 1);
  expect(table[0]).toMatch(/^run\s+event\s+function/);
  expect(table.filter((l) => /send_welcome_email\s+1\s+succeeded\s+200/.test(l))).toHaveLength(4);
  // initdb and a server start, then up to 30 s for the demo's runs: on a
  // loaded machine the first two alone can take a minute.
}, 180_000);

describe("pgfn dev --typescript", () => {
  const t = useTestDatabase("dev_typescript");

  it("deploys the demo handler from TypeScript and greets the same rows", async () => {
    const lines: string[] = [];
    await runDev({
      keepRunning: false,
      typescript: true,
      print: (line) => lines.push(line),
      env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "error" },
    });
    const out = lines.join("\n");
    expect(out).toMatch(/deployed send_welcome_email \(sha256 [0-9a-f]{12}…\)/);
    // Where the deployed file is (the tests run from the repository's root).
    expect(lines).toContain("handler: examples/demo-ts/welcome.ts (copy it to write your own)");
    const runtime = await t.pool.query<{ runtime: string }>(
      "select runtime from pgfn.functions where name = 'send_welcome_email'",
    );
    expect(runtime.rows[0]?.runtime).toBe("js");
    expect(
      lines.filter((l) => /^run \d+ event \d+ send_welcome_email attempt 1: succeeded/.test(l)),
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
 * own, printing until "Ctrl-C to stop.". Resolves with the child, the
 * embedded server's port and what it printed so far.
 */
async function startDevInTerminal() {
  const child = startTs(PGFN_MAIN, ["dev"], {
    env: {
      DATABASE_URL: undefined,
      PGFN_LOG_LEVEL: undefined,
      FORCE_COLOR: "0",
      // This file's own temporary directory (the leak guard's), not the
      // machine's: pgfn dev makes its cluster there, and what it leaves is seen.
      TMPDIR: tmpdir(),
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
  const port = /127\.0\.0\.1:(\d+)\//.exec(output.stdout)?.[1];
  if (!port) throw new Error(`No port in pgfn dev's output:\n${output.stdout}`);
  return { child, port, output, exited };
}

describe("pgfn dev in a terminal", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("Ctrl-C (SIGINT to its process group) stops it cleanly: one line, exit 0, no postgres left", async () => {
    const { child, port, output, exited } = await startDevInTerminal();
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
    const { child, port, exited } = await startDevInTerminal();
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
