// Changing a deployed function over HTTP as a client sees it: env merges
// on PATCH and on a deploy with "update": true (unset_env and replace_env
// remove keys), contradictions and values Postgres cannot store are 400s
// naming the field, and db_role and on_error must name something that can
// serve. Real HTTP against a real daemon and Postgres.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createTestRoles, type TestRoles } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { api, startHttpDaemon, wasmBase64, type ApiResponse } from "./httpHelpers.js";

const t = useTestDatabase("http_settings");
let daemon: Daemon;
let roles: TestRoles;
let wasm: string;

beforeAll(async () => {
  roles = await createTestRoles();
  wasm = await wasmBase64("echo");
  daemon = await startHttpDaemon(t.url, { listener: false, worker: false, scheduler: false });
});
afterAll(async () => {
  await daemon?.stop();
  await t.drop();
  // Roles outlive databases: drop ours once nothing refers to them.
  await roles?.drop();
});

const deploy = (json: Record<string, unknown>) =>
  api(daemon, "POST", "/functions/v1/deploy", { json: { wasm, ...json } });
const patch = (name: string, json: Record<string, unknown>) =>
  api(daemon, "PATCH", `/functions/v1/${name}`, { json });

async function storedEnv(name: string): Promise<Record<string, string>> {
  const { rows } = await t.pool.query(`select env from pgfn.functions where name = $1`, [name]);
  return rows[0].env;
}

/** A 400 INVALID_REQUEST whose message matches each pattern. */
function expect400(r: ApiResponse, ...patterns: RegExp[]) {
  expect(r.status, r.text).toBe(400);
  expect(r.body).toMatchObject({ code: "INVALID_REQUEST" });
  for (const pattern of patterns) expect((r.body as { message: string }).message).toMatch(pattern);
}

describe("env on an update", () => {
  it("PATCH env merges into the stored env; unset_env removes keys; replace_env replaces it", async () => {
    expect((await deploy({ name: "merge", env: { API_KEY: "k1", REGION: "eu" } })).status).toBe(
      201,
    );
    const merged = await patch("merge", { env: { API_URL: "https://x", REGION: "us" } });
    expect(merged.status, merged.text).toBe(200);
    expect(await storedEnv("merge")).toEqual({ API_KEY: "k1", API_URL: "https://x", REGION: "us" });
    // The response shows the merged env (secret-looking values redacted).
    expect((merged.body as { env: unknown }).env).toEqual({
      API_KEY: "[redacted]",
      API_URL: "[redacted]",
      REGION: "us",
    });

    // Another setting alone leaves env as it is.
    expect((await patch("merge", { timeout_ms: 2000 })).status).toBe(200);
    expect(await storedEnv("merge")).toEqual({ API_KEY: "k1", API_URL: "https://x", REGION: "us" });

    const unset = await patch("merge", { unset_env: ["API_URL", "NOT_THERE"], env: { B: "2" } });
    expect(unset.status, unset.text).toBe(200);
    expect(await storedEnv("merge")).toEqual({ API_KEY: "k1", REGION: "us", B: "2" });

    const replaced = await patch("merge", { replace_env: true, env: { ONLY: "1" } });
    expect(replaced.status, replaced.text).toBe(200);
    expect(await storedEnv("merge")).toEqual({ ONLY: "1" });
    const emptied = await patch("merge", { replace_env: true });
    expect(emptied.status, emptied.text).toBe(200);
    expect(await storedEnv("merge")).toEqual({});
  });

  it('a deploy with "update": true merges env like PATCH, and takes unset_env and replace_env', async () => {
    expect((await deploy({ name: "redeploy", env: { API_KEY: "k1", OLD: "x" } })).status).toBe(201);
    const updated = await deploy({ name: "redeploy", update: true, env: { API_URL: "u" } });
    expect(updated.status, updated.text).toBe(200);
    expect(await storedEnv("redeploy")).toEqual({ API_KEY: "k1", OLD: "x", API_URL: "u" });
    const unset = await deploy({ name: "redeploy", update: true, unset_env: ["OLD"] });
    expect(unset.status, unset.text).toBe(200);
    expect(await storedEnv("redeploy")).toEqual({ API_KEY: "k1", API_URL: "u" });
    const replaced = await deploy({
      name: "redeploy",
      update: true,
      replace_env: true,
      env: { X: "1" },
    });
    expect(replaced.status, replaced.text).toBe(200);
    expect(await storedEnv("redeploy")).toEqual({ X: "1" });
    // An update that creates the function stores env as given.
    const created = await deploy({ name: "fresh", update: true, env: { A: "1" } });
    expect(created.status, created.text).toBe(201);
    expect(await storedEnv("fresh")).toEqual({ A: "1" });
  });

  it("updates at once each keep the others' keys", async () => {
    expect((await deploy({ name: "busy", env: { BASE: "0" } })).status).toBe(201);
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) =>
        i % 4 === 0
          ? deploy({ name: "busy", update: true, env: { [`K${i}`]: String(i) } })
          : patch("busy", { env: { [`K${i}`]: String(i) } }),
      ),
    );
    for (const r of results) expect(r.status, r.text).toBe(200);
    expect(await storedEnv("busy")).toEqual({
      BASE: "0",
      ...Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`K${i}`, String(i)])),
    });
  });

  it("contradictions are 400s in the fields' own names, changing nothing", async () => {
    expect((await deploy({ name: "contra", env: { K: "v" } })).status).toBe(201);
    expect400(
      await patch("contra", { unset_env: ["K"], env: { K: "w" } }),
      /unset_env and env both name K/,
    );
    expect400(
      await patch("contra", { unset_env: ["K"], replace_env: true }),
      /unset_env and replace_env together/,
    );
    expect400(
      await deploy({ name: "contra2", unset_env: ["K"] }),
      /unset_env removes keys from a deployed function's env: add "update": true/,
    );
    expect400(
      await deploy({ name: "contra2", replace_env: true }),
      /replace_env replaces a deployed function's env: add "update": true/,
    );
    expect400(await patch("contra", { unset_env: ["1K"] }), /unset_env/, /identifier/);
    expect(await storedEnv("contra")).toEqual({ K: "v" });
    const { rows } = await t.pool.query(`select 1 from pgfn.functions where name = 'contra2'`);
    expect(rows).toHaveLength(0);
  });
});

describe("what Postgres cannot store", () => {
  it("an env value or key with \\u0000 or a lone surrogate is a 400 naming the key, on deploy and PATCH", async () => {
    expect((await deploy({ name: "nul", env: { SAFE: "1" } })).status).toBe(201);
    expect400(await patch("nul", { env: { API_KEY: "a\u0000b" } }), /API_KEY/, /\\u0000/);
    expect400(await patch("nul", { env: { TEXT: "a\ud800b" } }), /TEXT/, /lone surrogate/);
    expect400(await patch("nul", { env: { "BAD\u0000KEY": "v" } }), /BAD\\u0000KEY/);
    expect400(await patch("nul", { unset_env: ["BAD\u0000KEY"] }), /BAD\\u0000KEY/);
    expect400(await deploy({ name: "nul2", env: { TOKEN: "\u0000" } }), /TOKEN/, /\\u0000/);
    expect400(await patch("nul", { description: "a\u0000b" }), /description/, /\\u0000/);
    expect400(await patch("nul", { db_role: "r\u0000" }), /db_role/, /\\u0000/);
    // The value itself, which may be a secret, is not repeated.
    const secret = await patch("nul", { env: { API_KEY: "sk-live-123\u0000" } });
    expect(secret.text).not.toContain("sk-live-123");
    expect(await storedEnv("nul")).toEqual({ SAFE: "1" });
  });
});

describe("db_role and on_error name something that can serve", () => {
  it("a missing role, one that cannot log in, and one db_query would refuse are 400s naming db_role", async () => {
    expect((await deploy({ name: "roles" })).status).toBe(201);
    const missing = `pgfn_nosuch_${process.pid}`;
    expect400(
      await patch("roles", { db_role: missing }),
      new RegExp(`^db_role ${missing}: there is no role ${missing}\\.`),
    );
    expect400(
      await deploy({ name: "roles2", db_role: missing }),
      new RegExp(`db_role ${missing}: there is no role`),
    );
    const nologin = await roles.create("nologin", "nologin");
    expect400(
      await patch("roles", { db_role: nologin }),
      new RegExp(`db_role ${nologin}: role ${nologin} cannot log in`),
      /alter role .* login;/,
    );
    const superuser = await roles.create("super", "superuser");
    expect400(
      await patch("roles", { db_role: superuser }),
      new RegExp(
        `db_role ${superuser}: db_query would refuse it: db_role "${superuser}" is a superuser`,
      ),
      /nosuperuser/,
    );
    const creator = await roles.create("creator", "createrole");
    expect400(await deploy({ name: "roles2", db_role: creator }), /has CREATEROLE/);

    const fine = await roles.create("fine");
    const ok = await patch("roles", { db_role: fine });
    expect(ok.status, ok.text).toBe(200);
    expect((await patch("roles", { db_role: null })).status).toBe(200);
    const { rows } = await t.pool.query(`select name from pgfn.functions where name = 'roles2'`);
    expect(rows).toHaveLength(0);
  });

  it("on_error naming no deployed function is a 400 naming on_error; naming itself or a deployed one is fine", async () => {
    expect400(
      await deploy({ name: "watched", on_error: "nowatchdog" }),
      /^on_error nowatchdog: there is no function nowatchdog/,
    );
    const self = await deploy({ name: "watched", on_error: "watched" });
    expect(self.status, self.text).toBe(201);
    expect400(await patch("watched", { on_error: "nowatchdog" }), /^on_error nowatchdog/);
    expect((await deploy({ name: "watchdog" })).status).toBe(201);
    const ok = await patch("watched", { on_error: "watchdog" });
    expect(ok.status, ok.text).toBe(200);
    expect((ok.body as { on_error: string }).on_error).toBe("watchdog");
  });
});
