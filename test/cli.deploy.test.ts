// `pgfn deploy --update` as a user runs it: env merges and the output says
// what happened to each key, and which other settings it set; --unset-env and --replace-env remove keys;
// contradicting flags, and a --db-role or --on-error that cannot serve, are
// one line naming the flag, exit code 1, and change nothing.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestRoles, exampleWasm, type TestRoles } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { PGFN_MAIN, runTs, SPAWNING_TEST_TIMEOUT_MS, type ChildResult } from "./processes.js";

const t = useTestDatabase("cli_deploy");
const echo = exampleWasm("echo");
let roles: TestRoles;

beforeAll(async () => {
  roles = await createTestRoles();
});
afterAll(async () => {
  await t.drop();
  await roles?.drop();
});

function pgfn(args: string[]): Promise<ChildResult> {
  return runTs(PGFN_MAIN, args, { env: { DATABASE_URL: t.url, PGFN_LOG_LEVEL: "warn" } });
}

/** Succeeded; its stdout's lines. */
function ok(result: ChildResult): string[] {
  expect(result.stderr).toBe("");
  expect(result.code).toBe(0);
  return result.stdout.trim().split("\n");
}

/** A user-facing failure: exit 1, one line on stderr, no stack trace. */
function oneLineError(result: ChildResult, ...patterns: RegExp[]) {
  expect(result.code).toBe(1);
  const lines = result.stderr.trim().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^pgfn: /);
  for (const pattern of patterns) expect(lines[0]).toMatch(pattern);
}

async function env(name: string): Promise<Record<string, string> | undefined> {
  const { rows } = await t.pool.query(`select env from pgfn.functions where name = $1`, [name]);
  return rows[0]?.env;
}

describe("pgfn deploy", { timeout: SPAWNING_TEST_TIMEOUT_MS }, () => {
  it("--update merges --env into the stored env and says what happened to each key", async () => {
    expect(
      ok(await pgfn(["deploy", "api", echo, "--env", "API_KEY=k1", "--env", "OLD=x"])),
    ).toEqual([expect.stringMatching(/^deployed api /), "env: set API_KEY, OLD"]);
    expect(ok(await pgfn(["deploy", "api", echo, "--update", "--env", "API_URL=u"]))).toEqual([
      expect.stringMatching(/^updated api /),
      "env: set API_URL; kept API_KEY, OLD",
    ]);
    expect(await env("api")).toEqual({ API_KEY: "k1", OLD: "x", API_URL: "u" });

    expect(
      ok(
        await pgfn([
          "deploy",
          "api",
          echo,
          "--update",
          "--unset-env",
          "OLD",
          "--unset-env",
          "NOPE",
        ]),
      ),
    ).toEqual([
      expect.stringMatching(/^updated api /),
      "env: kept API_KEY, API_URL; removed OLD; NOPE was not set",
    ]);
    expect(await env("api")).toEqual({ API_KEY: "k1", API_URL: "u" });

    expect(
      ok(await pgfn(["deploy", "api", echo, "--update", "--replace-env", "--env", "X=1"])),
    ).toEqual([expect.stringMatching(/^updated api /), "env: set X; removed API_KEY, API_URL"]);
    expect(await env("api")).toEqual({ X: "1" });
    expect(ok(await pgfn(["deploy", "api", echo, "--update", "--replace-env"]))).toEqual([
      expect.stringMatching(/^updated api /),
      "env: removed X",
    ]);
    expect(await env("api")).toEqual({});
  });

  it("says which other settings it set, on_error among them; the rest kept their values", async () => {
    ok(await pgfn(["deploy", "watchdog", echo]));
    ok(await pgfn(["deploy", "watched", echo, "--timeout-ms", "5000"]));
    expect(
      ok(await pgfn(["deploy", "watched", echo, "--update", "--on-error", "watchdog"])),
    ).toEqual([expect.stringMatching(/^updated watched /), "settings: on_error watchdog"]);
    expect(
      ok(
        await pgfn([
          "deploy",
          "watched",
          echo,
          "--update",
          "--allow-host",
          "a.example.com",
          "--allow-host",
          "b.example.com:8443",
          "--description",
          "greets; politely",
        ]),
      ),
    ).toEqual([
      expect.stringMatching(/^updated watched /),
      'settings: description "greets; politely"; allowed_hosts a.example.com, b.example.com:8443',
    ]);
    const { rows } = await t.pool.query(
      `select timeout_ms, on_error, allowed_hosts from pgfn.functions where name = 'watched'`,
    );
    expect(rows).toEqual([
      {
        timeout_ms: 5000,
        on_error: "watchdog",
        allowed_hosts: ["a.example.com", "b.example.com:8443"],
      },
    ]);
    // Every form http_fetch matches is accepted: *.domain, [IPv6], ports.
    expect(
      ok(
        await pgfn([
          "deploy",
          "wild",
          echo,
          "--allow-host",
          "*.example.com",
          "--allow-host",
          "[::1]:8080",
        ]),
      ),
    ).toEqual([
      expect.stringMatching(/^deployed wild /),
      "settings: allowed_hosts *.example.com, [::1]:8080",
    ]);
    oneLineError(
      await pgfn(["deploy", "wild2", echo, "--allow-host", "*"]),
      /--allow-host must be a host name, \*\.domain or \[IPv6 address\], optionally with :port \(got "\*"\)/,
    );
    // --entrypoint names the export to call; the module is checked for it.
    oneLineError(
      await pgfn(["deploy", "wild3", echo, "--entrypoint", "onOrder"]),
      /The module does not export a function named "onOrder"/,
    );
    oneLineError(
      await pgfn(["deploy", "wild3", echo, "--entrypoint", "on-order"]),
      /--entrypoint must be an export's name \(letters, digits, _ and \$, not a digit first\) \(got "on-order"\)/,
    );
    expect(ok(await pgfn(["deploy", "wild3", echo, "--entrypoint", "handle"]))).toEqual([
      expect.stringMatching(/^deployed wild3 /),
      "settings: entrypoint handle",
    ]);
    // The hosts given replace the list: the ones that dropped are named.
    expect(
      ok(await pgfn(["deploy", "watched", echo, "--update", "--allow-host", "b.example.com:8443"])),
    ).toEqual([
      expect.stringMatching(/^updated watched /),
      "settings: allowed_hosts b.example.com:8443 (replaced the list; no longer allowed: a.example.com)",
    ]);
  });

  it("contradicting env flags are one line in the flags' own terms, and change nothing", async () => {
    ok(await pgfn(["deploy", "keep", echo, "--env", "K=v"]));
    oneLineError(
      await pgfn(["deploy", "keep", echo, "--update", "--unset-env", "K", "--env", "K=w"]),
      /--unset-env and --env both name K: set it or remove it, not both\./,
    );
    oneLineError(
      await pgfn(["deploy", "keep", echo, "--update", "--unset-env", "K", "--replace-env"]),
      /--unset-env and --replace-env together/,
    );
    oneLineError(
      await pgfn(["deploy", "newfn", echo, "--unset-env", "K"]),
      /--unset-env removes keys from a deployed function's env: add --update/,
    );
    oneLineError(
      await pgfn(["deploy", "newfn", echo, "--replace-env"]),
      /--replace-env replaces a deployed function's env: add --update/,
    );
    oneLineError(
      await pgfn(["deploy", "keep", echo, "--update", "--unset-env", "1K"]),
      /--unset-env key "1K" must be an identifier/,
    );
    expect(await env("keep")).toEqual({ K: "v" });
    expect(await env("newfn")).toBeUndefined();
  });

  it("--db-role and --on-error must name a role db_query can use and a deployed function", async () => {
    const missing = `pgfn_nosuch_${process.pid}`;
    oneLineError(
      await pgfn(["deploy", "refs", echo, "--db-role", missing]),
      new RegExp(`^pgfn: --db-role ${missing}: there is no role ${missing}\\. Create it`),
    );
    const superuser = await roles.create("super", "superuser");
    oneLineError(
      await pgfn(["deploy", "refs", echo, "--db-role", superuser]),
      new RegExp(
        `--db-role ${superuser}: db_query would refuse it: db_role "${superuser}" is a superuser`,
      ),
      /alter role .* nosuperuser;/,
    );
    // The cluster's own superuser (pgfn's too, here): no hint to demote it.
    const bootstrap = (
      await t.pool.query<{ name: string }>(`select rolname as name from pg_roles where oid = 10`)
    ).rows[0]!.name;
    const refused = await pgfn(["deploy", "refs", echo, "--db-role", bootstrap]);
    oneLineError(refused, /is a superuser/, /create role greeter login;/);
    expect(refused.stderr).not.toMatch(/nosuperuser/);
    const nologin = await roles.create("nologin", "nologin");
    oneLineError(
      await pgfn(["deploy", "refs", echo, "--db-role", nologin]),
      new RegExp(`--db-role ${nologin}: role ${nologin} cannot log in`),
    );
    oneLineError(
      await pgfn(["deploy", "refs", echo, "--on-error", "nowatchdog"]),
      /^pgfn: --on-error nowatchdog: there is no function nowatchdog/,
    );
    expect(await env("refs")).toBeUndefined();

    const fine = await roles.create("fine");
    ok(await pgfn(["deploy", "refs", echo, "--db-role", fine, "--on-error", "refs"]));
    const { rows } = await t.pool.query(
      `select db_role, on_error from pgfn.functions where name = 'refs'`,
    );
    expect(rows).toEqual([{ db_role: fine, on_error: "refs" }]);
  });
});
