// Who may do what over HTTP: the admin token everything, invoke tokens only
// invoke, no token or a wrong one nothing; without PGFN_ADMIN_TOKEN nothing
// can be deployed or managed (the API never runs open).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createAuthenticator } from "../src/http/auth.js";
import { useTestDatabase } from "./fixture.js";
import {
  ADMIN_TOKEN,
  api,
  baseUrl,
  INVOKE_TOKEN,
  startHttpDaemon,
  wasmBase64,
} from "./httpHelpers.js";

const t = useTestDatabase("http_auth");
let daemon: Daemon;
let wasm: string;

beforeAll(async () => {
  daemon = await startHttpDaemon(t.url);
  wasm = await wasmBase64("echo");
  const r = await api(daemon, "POST", "/functions/v1/deploy", { json: { name: "echo", wasm } });
  expect(r.status).toBe(201);
});
afterAll(async () => {
  await daemon?.stop();
});

const NONE = null;
const WRONG = "wrong-token-0123456789abcdef";

describe("the token matrix", () => {
  const manage: [string, string, unknown?][] = [
    ["POST", "/functions/v1/deploy", { name: "other", wasm: "AAAA" }],
    ["GET", "/functions/v1/echo"],
    ["PATCH", "/functions/v1/echo", { description: "x" }],
    ["DELETE", "/functions/v1/echo"],
    ["GET", "/functions/v1/echo/runs"],
  ];

  it.each(manage)(
    "%s %s: 401 without or with a wrong token, 403 with an invoke token",
    async (method, path, json) => {
      for (const [token, status, code] of [
        [NONE, 401, "UNAUTHORIZED"],
        [WRONG, 401, "UNAUTHORIZED"],
        [INVOKE_TOKEN, 403, "FORBIDDEN"],
      ] as const) {
        const r = await api(daemon, method, path, { token, ...(json !== undefined && { json }) });
        expect(r.status, `${token}`).toBe(status);
        expect(r.body).toMatchObject({ code });
        expect(r.text).not.toContain(ADMIN_TOKEN);
      }
      // Nothing was changed by the refused requests.
      const fn = await t.pool.query(`select description from pgfn.functions where name = 'echo'`);
      expect(fn.rows).toEqual([{ description: "" }]);
    },
  );

  it("the admin token may manage", async () => {
    expect((await api(daemon, "GET", "/functions/v1/echo")).status).toBe(200);
    expect((await api(daemon, "GET", "/functions/v1/echo/runs")).status).toBe(200);
    const r = await api(daemon, "PATCH", "/functions/v1/echo", { json: { description: "ok" } });
    expect(r.status).toBe(200);
  });

  it("invoke: 401 without or with a wrong token, 200 with an invoke or the admin token", async () => {
    expect(
      (await api(daemon, "POST", "/functions/v1/invoke/echo", { token: NONE, json: {} })).status,
    ).toBe(401);
    expect(
      (await api(daemon, "POST", "/functions/v1/invoke/echo", { token: WRONG, json: {} })).status,
    ).toBe(401);
    expect(
      (await api(daemon, "POST", "/functions/v1/invoke/echo", { token: INVOKE_TOKEN, json: {} }))
        .status,
    ).toBe(200);
    expect(
      (await api(daemon, "POST", "/functions/v1/invoke/echo", { token: ADMIN_TOKEN, json: {} }))
        .status,
    ).toBe(200);
  });

  it("a malformed Authorization header is 401, the scheme is case-insensitive", async () => {
    const raw = (authorization: string) =>
      fetch(`${baseUrl(daemon)}/functions/v1/echo`, { headers: { authorization } });
    expect((await raw(`Basic ${ADMIN_TOKEN}`)).status).toBe(401);
    expect((await raw(`Bearer`)).status).toBe(401);
    expect((await raw(`Bearer ${ADMIN_TOKEN} extra`)).status).toBe(401);
    expect((await raw(`bearer ${ADMIN_TOKEN}`)).status).toBe(200);
  });

  it("refuses before reading the body: an unauthenticated 16 MB deploy is 401, not 413", async () => {
    const r = await api(daemon, "POST", "/functions/v1/deploy", {
      token: NONE,
      body: JSON.stringify({ name: "big", wasm: "A".repeat(16 * 1024 * 1024) }),
    });
    expect(r.status).toBe(401);
  });

  it("health, readiness, metrics and the OpenAPI document need no token", async () => {
    for (const path of ["/healthz", "/readyz", "/metrics", "/functions/v1/openapi.json"]) {
      expect((await api(daemon, "GET", path, { token: NONE })).status, path).toBe(200);
    }
  });
});

describe("without PGFN_ADMIN_TOKEN", () => {
  it("nothing can deploy or manage; invoke tokens still invoke", async () => {
    const open = await startHttpDaemon(t.url, { adminToken: undefined, daemonId: "no-admin" });
    try {
      const deploy = await api(open, "POST", "/functions/v1/deploy", {
        token: NONE,
        json: { name: "other", wasm },
      });
      expect(deploy.status).toBe(401);
      expect((deploy.body as { message: string }).message).toMatch(/PGFN_ADMIN_TOKEN/);
      // The admin token of another daemon is no token here.
      expect((await api(open, "GET", "/functions/v1/echo", { token: ADMIN_TOKEN })).status).toBe(
        401,
      );
      expect((await api(open, "GET", "/functions/v1/echo", { token: INVOKE_TOKEN })).status).toBe(
        403,
      );
      const invoke = await api(open, "POST", "/functions/v1/invoke/echo", {
        token: INVOKE_TOKEN,
        json: {},
      });
      expect(invoke.status).toBe(200);
    } finally {
      await open.stop();
    }
  });

  it("with no tokens at all every functions route is refused", async () => {
    const closed = await startHttpDaemon(t.url, {
      adminToken: undefined,
      invokeTokens: [],
      daemonId: "no-tokens",
    });
    try {
      for (const [method, path] of [
        ["POST", "/functions/v1/deploy"],
        ["GET", "/functions/v1/echo"],
        ["POST", "/functions/v1/invoke/echo"],
      ] as const) {
        for (const token of [NONE, ADMIN_TOKEN, "", "x"]) {
          const r = await api(closed, method, path, {
            token,
            ...(method === "POST" && { json: {} }),
          });
          expect(r.status, `${method} ${path} ${token}`).toBe(401);
        }
      }
      expect((await api(closed, "GET", "/healthz", { token: NONE })).status).toBe(200);
    } finally {
      await closed.stop();
    }
  });
});

describe("createAuthenticator", () => {
  it("an empty configured token list matches nothing, not the empty token", () => {
    const auth = createAuthenticator({ adminToken: undefined, invokeTokens: [] });
    expect(() => auth.check("Bearer ", "invoke")).toThrow(/PGFN_ADMIN_TOKEN/);
    expect(() => auth.check(undefined, "public")).not.toThrow();
  });
});
