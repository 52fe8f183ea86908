// The commands that manage deployed functions (src/cli/manage.ts), and the
// machine-readable `invoke --json` / `runs --json`, as a user runs them: a
// child process each, real exit codes and output. Runs are written with SQL
// where their exact statuses, durations and logs matter.
import { beforeAll, describe, expect, it } from "vitest";
import { enqueueManual } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { PGFN_MAIN, runTs, SPAWNING_TEST_TIMEOUT_MS, type ChildResult } from "./processes.js";

const t = useTestDatabase("cli_manage");

function pgfn(...args: string[]): Promise<ChildResult> {
  return runTs(PGFN_MAIN, args, { env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "warn" } });
}

/** A user-facing failure: exit 1, one line on stderr saying what is wrong, no stack trace. */
function expectOneLineError(result: ChildResult, pattern: RegExp) {
  expect(result.code, result.stdout).toBe(1);
  const lines = result.stderr.trim().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^pgfn: /);
  expect(lines[0]).toMatch(pattern);
  expect(result.stderr).not.toMatch(/\n\s+at /);
}

/** A finished run of `fn` for a new event, as the worker would have recorded it. */
async function addRun(
  fn: string,
  status: "succeeded" | "failed" | "abandoned" | "running",
  extra: { durationMs?: number; logs?: unknown[] } = {},
): Promise<string> {
  const eventId = await enqueueManual(t.pool, fn, {});
  const { rows } = await t.pool.query<{ id: string }>(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, duration_ms, logs, finished_at)
     values ($1, $2, 1, $3, $4, $5, case when $3 = 'running' then null else clock_timestamp() end)
     returning id`,
    [eventId, fn, status, extra.durationMs ?? 1, JSON.stringify(extra.logs ?? [])],
  );
  return rows[0]!.id;
}

/** stdout's JSON lines. */
function jsonLines(r: ChildResult): Record<string, unknown>[] {
  return r.stdout
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

beforeAll(async () => {
  await t.deploy("echo", { env: { API_KEY: "sk-live-secret", REGION: "eu" } });
  await t.deploy("flaky", { example: "echo" });
  await t.deploy("quiet", { example: "echo" });
});

describe("pgfn functions", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("lists each function with its runtime, state, error rate over its latest 100 finished runs and schedule", async () => {
    // 50 older failures, then 100 runs of which 3 failed and 1 was
    // abandoned; a running attempt has no outcome yet and does not count.
    for (let i = 0; i < 50; i++) await addRun("flaky", "failed");
    for (let i = 0; i < 100; i++)
      await addRun("flaky", i < 3 ? "failed" : i === 3 ? "abandoned" : "succeeded");
    await addRun("flaky", "running");
    await t.pool.query(
      `update pgfn.functions set last_status = 'succeeded', last_run_at = '2026-01-02T03:04:05Z' where name = 'flaky'`,
    );
    await t.pool.query(`select pgfn.disable('quiet')`);
    await t.pool.query(`select pgfn.schedule('echo', '*/5 * * * *', timezone => 'Europe/Berlin')`);

    const r = await pgfn("functions");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const [header, , ...rows] = r.stdout.trimEnd().split("\n");
    expect(header).toMatch(
      /^name\s+runtime\s+enabled\s+last run\s+last status\s+errors \(last 100 runs\)\s+schedule$/,
    );
    expect(rows).toHaveLength(3);
    expect(rows[0]).toMatch(/^echo\s+wasm\s+yes\s+-\s+-\s+-\s+\*\/5 \* \* \* \* Europe\/Berlin$/);
    expect(rows[1]).toMatch(
      /^flaky\s+wasm\s+yes\s+2026-01-02 03:04:05\s+succeeded\s+4% \(4\/100\)\s+-$/,
    );
    expect(rows[2]).toMatch(/^quiet\s+wasm\s+no\s+-\s+-\s+-\s+-$/);

    const help = await pgfn("functions", "--help");
    expect(help.stdout).toMatch(/latest 100\s+finished runs/);
  });

  it("--json prints one object per function, as GET /functions/v1 lists them, secrets redacted", async () => {
    const r = await pgfn("functions", "--json");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toContain("sk-live-secret");
    const [echo, flaky, quiet] = jsonLines(r);
    expect(echo).toMatchObject({
      name: "echo",
      runtime: "wasm",
      enabled: true,
      env: { API_KEY: "[redacted]", REGION: "eu" },
      schedule: { cron: "*/5 * * * *", timezone: "Europe/Berlin", catch_up: "latest", error: null },
      recent_runs: { finished: 0, failed: 0, error_rate: null },
    });
    expect(echo).not.toHaveProperty("wasm");
    expect(flaky).toMatchObject({
      name: "flaky",
      last_status: "succeeded",
      last_run_at: "2026-01-02T03:04:05.000Z",
      schedule: null,
      recent_runs: { finished: 100, failed: 4, error_rate: 0.04 },
    });
    expect(quiet).toMatchObject({ name: "quiet", enabled: false });
  });
});

describe("rm, enable, disable", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("enable and disable set enabled; an unknown or bad name is one line", async () => {
    const enabled = await pgfn("enable", "quiet");
    expect(enabled.code, enabled.stderr).toBe(0);
    expect(enabled.stdout).toMatch(/^enabled quiet; .*pgfn\.retry_dead_letters\('quiet'\)/);
    const disabled = await pgfn("disable", "echo");
    expect(disabled.code, disabled.stderr).toBe(0);
    expect(disabled.stdout).toMatch(/^disabled echo; its events fail as FUNCTION_NOT_FOUND/);
    const { rows } = await t.pool.query(
      `select name, enabled from pgfn.functions where name in ('quiet', 'echo') order by name`,
    );
    expect(rows).toEqual([
      { name: "echo", enabled: false },
      { name: "quiet", enabled: true },
    ]);
    // A disabled function refuses an invoke, naming the way back.
    expectOneLineError(
      await pgfn("invoke", "echo"),
      /Function "echo" is disabled: `pgfn enable echo` \(or PATCH \{"enabled": true\}\) enables it\.$/,
    );
    expect((await pgfn("enable", "echo")).code).toBe(0);

    expectOneLineError(
      await pgfn("enable", "nope"),
      /^pgfn: Function "nope" is not deployed \(`pgfn functions` lists those that are\)\.$/,
    );
    expectOneLineError(await pgfn("disable", "nope"), /Function "nope" is not deployed/);
    expectOneLineError(await pgfn("disable", "No Such"), /Invalid function name "No Such"/);
  });

  it("rm deletes the function as DELETE does: runs stay, its schedule stays and is named", async () => {
    await t.deploy("doomed", { example: "echo" });
    await t.deploy("guarded", { example: "echo" });
    await t.pool.query(`update pgfn.functions set on_error = 'doomed' where name = 'guarded'`);
    await addRun("doomed", "succeeded");
    await t.pool.query(`select pgfn.schedule('doomed', '@daily')`);

    const r = await pgfn("rm", "doomed");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^deleted doomed; its events and runs stay$/m);
    expect(r.stdout).toMatch(/doomed still has a schedule.*`pgfn unschedule doomed` removes it/);
    expect(r.stdout).toMatch(
      /^doomed was the on_error of guarded: their failures now reach no error handler/m,
    );
    await t.pool.query(`delete from pgfn.functions where name = 'guarded'`);
    const left = await t.pool.query(
      `select (select count(*)::int from pgfn.functions where name = 'doomed') as functions,
              (select count(*)::int from pgfn.function_runs where function_name = 'doomed') as runs,
              (select count(*)::int from pgfn.schedules where function_name = 'doomed') as schedules`,
    );
    expect(left.rows[0]).toEqual({ functions: 0, runs: 1, schedules: 1 });

    // The schedule of a deleted function can still be removed.
    const unscheduled = await pgfn("unschedule", "doomed");
    expect(unscheduled.code, unscheduled.stderr).toBe(0);
    expect(unscheduled.stdout.trim()).toBe("unscheduled doomed");

    expectOneLineError(await pgfn("rm", "doomed"), /Function "doomed" is not deployed/);
    expectOneLineError(await pgfn("rm", "Bad Name"), /Invalid function name "Bad Name"/);
  });
});

describe("schedule, unschedule", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("schedule calls pgfn.schedule with the flags given, and unschedule removes it", async () => {
    const r = await pgfn(
      "schedule",
      "quiet",
      "0 9 * * 1-5",
      "--catch-up",
      "none",
      "--timezone",
      "America/New_York",
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /^scheduled quiet: '0 9 \* \* 1-5' \(America\/New_York\), catch_up none/,
    );
    const { rows } = await t.pool.query(
      `select cron, timezone, catch_up from pgfn.schedules where function_name = 'quiet'`,
    );
    expect(rows).toEqual([{ cron: "0 9 * * 1-5", timezone: "America/New_York", catch_up: "none" }]);

    // Without flags, pgfn.schedule's defaults.
    expect((await pgfn("schedule", "quiet", "@hourly")).code).toBe(0);
    const again = await t.pool.query(
      `select cron, timezone, catch_up from pgfn.schedules where function_name = 'quiet'`,
    );
    expect(again.rows).toEqual([{ cron: "@hourly", timezone: "UTC", catch_up: "latest" }]);

    const removed = await pgfn("unschedule", "quiet");
    expect(removed.stdout.trim()).toBe("unscheduled quiet");
    const none = await pgfn("unschedule", "quiet");
    expect(none.code).toBe(0);
    expect(none.stdout.trim()).toBe("quiet has no schedule");
    expectOneLineError(await pgfn("unschedule", "nope"), /Function "nope" is not deployed/);
  });

  it("refusals are one line in the user's terms, and leave the schedule as it was", async () => {
    await t.pool.query(`select pgfn.schedule('flaky', '@daily')`);
    expectOneLineError(
      await pgfn("schedule", "flaky", "1 2 3"),
      /^pgfn: Cannot schedule flaky: cron '1 2 3' has 3 fields; it needs 5: .*\.$/,
    );
    expectOneLineError(
      await pgfn("schedule", "flaky", "@daily", "--timezone", "Mars/Olympus"),
      /^pgfn: Cannot schedule flaky: unknown time zone 'Mars\/Olympus'/,
    );
    expectOneLineError(
      await pgfn("schedule", "flaky", "@daily", "--catch-up", "sometimes"),
      /--catch-up .*'sometimes' is invalid\. Allowed choices are all, latest, none/,
    );
    // What a shell passes for an unquoted cron.
    expectOneLineError(
      await pgfn("schedule", "flaky", "0", "9", "*", "*", "1-5"),
      /^pgfn: CRON is one argument: quote it, e.g\. pgfn schedule flaky '\*\/5 \* \* \* \*'\.$/,
    );
    expectOneLineError(
      await pgfn("schedule", "nope", "@daily"),
      /^pgfn: Function "nope" is not deployed/,
    );
    const { rows } = await t.pool.query(
      `select cron, timezone from pgfn.schedules where function_name = 'flaky'`,
    );
    expect(rows).toEqual([{ cron: "@daily", timezone: "UTC" }]);
  });
});

describe("pgfn logs", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("prints the latest lines of the function's runs, oldest first, with time, level and run id", async () => {
    const at = (s: number) => new Date(Date.UTC(2026, 0, 2, 3, 4, s)).toISOString();
    const first = await addRun("quiet", "succeeded", {
      logs: [
        { level: "info", message: "one", at: at(1) },
        { level: "debug", message: "two", at: at(2) },
      ],
    });
    await addRun("quiet", "succeeded");
    const third = await addRun("quiet", "failed", {
      logs: [
        { level: "warn", message: "three\nand a half", at: at(3) },
        { level: "error", message: "four", at: at(4) },
      ],
    });

    const r = await pgfn("logs", "quiet", "-n", "3");
    expect(r.code, r.stderr).toBe(0);
    const [header, , ...lines] = r.stdout.trimEnd().split("\n");
    expect(header).toMatch(/^time\s+level\s+run\s+message$/);
    // A multi-line message (a stack) keeps its lines, the later ones under
    // the message column.
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(new RegExp(`^2026-01-02 03:04:02\\.000\\s+debug\\s+${first}\\s+two$`));
    expect(lines[1]).toMatch(
      new RegExp(`^2026-01-02 03:04:03\\.000\\s+warn\\s+${third}\\s+three$`),
    );
    const column = lines[1]!.indexOf("three");
    expect(lines[2]).toBe(`${" ".repeat(column)}and a half`);
    expect(lines[3]).toMatch(
      new RegExp(`^2026-01-02 03:04:04\\.000\\s+error\\s+${third}\\s+four$`),
    );

    const json = await pgfn("logs", "quiet", "--json");
    expect(jsonLines(json)).toEqual([
      { run_id: Number(first), at: at(1), level: "info", message: "one" },
      { run_id: Number(first), at: at(2), level: "debug", message: "two" },
      { run_id: Number(third), at: at(3), level: "warn", message: "three\nand a half" },
      { run_id: Number(third), at: at(4), level: "error", message: "four" },
    ]);
  });

  it("says when there is nothing, and refuses an unknown function or a bad -n", async () => {
    const r = await pgfn("logs", "echo");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe("(no log lines in the latest 1000 runs of echo)");
    expectOneLineError(await pgfn("logs", "nope"), /Function "nope" is not deployed/);
    // As runs NAME does, rather than "(no runs)" for a typo.
    expectOneLineError(await pgfn("runs", "nope"), /Function "nope" is not deployed/);
    expectOneLineError(
      await pgfn("logs", "quiet", "-n", "0"),
      /^pgfn: --limit must be a whole number between 1 and 10000 \(got 0\)\.$/,
    );
    expectOneLineError(await pgfn("logs", "quiet", "-n", "x"), /--limit must be a whole number/);
  });
});

describe(
  "for scripts and for people: --json and durations",
  { timeout: SPAWNING_TEST_TIMEOUT_MS },
  () => {
    it("invoke --json prints the recorded run as one object, exit 1 when it failed", async () => {
      const ok = await pgfn("invoke", "echo", '{"hello":"world"}', "--json");
      expect(ok.code, ok.stderr).toBe(0);
      const [run] = jsonLines(ok);
      expect(run).toMatchObject({
        function_name: "echo",
        status: "succeeded",
        attempt: 1,
        result: { payload: { hello: "world" }, trigger: "manual" },
      });
      expect(typeof run!.id).toBe("number");
      const stored = await t.pool.query(`select event_id from pgfn.function_runs where id = $1`, [
        run!.id,
      ]);
      expect(stored.rows).toEqual([{ event_id: String(run!.event_id) }]);
      expect(String(run!.duration_ms)).toMatch(/^\d+(\.\d{1,2})?$/);

      await t.deploy("fail");
      const failed = await pgfn("invoke", "fail", "--json");
      expect(failed.code).toBe(1);
      expect(jsonLines(failed)[0]).toMatchObject({
        status: "failed",
        error_code: "FUNCTION_ERROR",
      });
    });

    it("duration_ms: 0.1 ms in the runs table, 0.01 ms in runs --json", async () => {
      await t.deploy("timed", { example: "echo" });
      const id = await addRun("timed", "succeeded", { durationMs: 83.27845999999954 });
      const table = await pgfn("runs", "timed");
      expect(table.stdout).toMatch(/\s83\.3\s/);
      expect(table.stdout).not.toContain("83.278");
      const json = await pgfn("runs", "timed", "--json");
      expect(jsonLines(json)).toEqual([
        expect.objectContaining({ id: Number(id), duration_ms: 83.28, function_name: "timed" }),
      ]);
    });
  },
);
