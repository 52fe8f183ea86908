// The functions API as a client sees it: real HTTP against a real daemon and
// Postgres, one assertion per status code of docs/design.md sections 3 and 5.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { waitForRunning } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { api, INVOKE_TOKEN, startHttpDaemon, wasmBase64 } from "./httpHelpers.js";

const t = useTestDatabase("http_api");
let daemon: Daemon;

beforeAll(async () => {
  daemon = await startHttpDaemon(t.url);
});
afterAll(async () => {
  await daemon?.stop();
});

async function deploy(name: string, example: string, settings: Record<string, unknown> = {}) {
  const r = await api(daemon, "POST", "/functions/v1/deploy", {
    json: { name, wasm: await wasmBase64(example), ...settings },
  });
  expect(r.status, r.text).toBe(201);
  return r;
}

describe("deploy", () => {
  it("201 with name, hash and created_at", async () => {
    const r = await deploy("echo", "echo", { timeout_ms: 5000, env: { GREETING: "hi" } });
    expect(r.body).toMatchObject({ name: "echo", created: true });
    const body = r.body as { hash: string; created_at: string };
    expect(body.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(new Date(body.created_at).getTime()).not.toBeNaN();
    const row = await t.pool.query(
      `select wasm_sha256, timeout_ms, env from pgfn.functions where name = 'echo'`,
    );
    expect(row.rows[0]).toEqual({
      wasm_sha256: body.hash,
      timeout_ms: 5000,
      env: { GREETING: "hi" },
    });
  });

  it("409 on an existing name, 200 with update: true", async () => {
    const wasm = await wasmBase64("echo");
    const again = await api(daemon, "POST", "/functions/v1/deploy", {
      json: { name: "echo", wasm },
    });
    expect(again.status).toBe(409);
    expect(again.body).toMatchObject({ code: "CONFLICT", error: "Function already exists" });
    expect((again.body as { message: string }).message).toMatch(/already exists/);
    const updated = await api(daemon, "POST", "/functions/v1/deploy", {
      json: { name: "echo", wasm, update: true, timeout_ms: 6000 },
    });
    expect(updated.status).toBe(200);
    expect(updated.body).toMatchObject({ name: "echo", created: false });
  });

  it("400 for a bad name, invalid WebAssembly, a bad setting or malformed JSON", async () => {
    const wasm = await wasmBase64("echo");
    const cases = [
      { json: { name: "Send Email", wasm } },
      { json: { name: "garbage", wasm: Buffer.from("not wasm at all").toString("base64") } },
      { json: { name: "slow", wasm, timeout_ms: 5 } },
      { json: { name: "extra", wasm, nonsense: true } },
      { json: { name: "nowasm" } },
      { body: '{"name": "broken", ' },
    ];
    for (const c of cases) {
      const r = await api(daemon, "POST", "/functions/v1/deploy", c);
      expect(r.status, JSON.stringify(c).slice(0, 80)).toBe(400);
      expect(r.body).toMatchObject({ code: "INVALID_REQUEST", error: "Invalid request" });
      expect((r.body as { message: string }).message.length).toBeGreaterThan(10);
    }
    const names = await t.pool.query(`select name from pgfn.functions order by name`);
    expect(names.rows.map((r) => r.name)).toEqual(["echo"]);
  });

  it("413 for a module over 10 MiB and for a body over the limit", async () => {
    // Valid base64 of 10 MiB + 1 byte: within the body limit, over the module limit.
    const big = Buffer.alloc(10 * 1024 * 1024 + 1).toString("base64");
    const r = await api(daemon, "POST", "/functions/v1/deploy", {
      json: { name: "big", wasm: big },
    });
    expect(r.status).toBe(413);
    expect(r.body).toMatchObject({ code: "PAYLOAD_TOO_LARGE" });
    expect((r.body as { message: string }).message).toMatch(/10 MiB/);

    const huge = "A".repeat(16 * 1024 * 1024);
    const r2 = await api(daemon, "POST", "/functions/v1/deploy", {
      json: { name: "huge", wasm: huge },
    });
    expect(r2.status).toBe(413);
    expect(r2.body).toMatchObject({ code: "PAYLOAD_TOO_LARGE" });
  });
});

describe("read, change, delete", () => {
  it("GET shows settings with secret env values redacted; 404 when missing", async () => {
    await deploy("secretive", "echo", { env: { API_KEY: "sk-live-abcdef", REGION: "eu" } });
    const r = await api(daemon, "GET", "/functions/v1/secretive");
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({
      name: "secretive",
      enabled: true,
      timeout_ms: 10000,
      env: { API_KEY: "[redacted]", REGION: "eu" },
      last_run_at: null,
    });
    expect(r.text).not.toContain("sk-live-abcdef");
    // Not the module (runtime shows the value "wasm": that is not it).
    expect(r.body).not.toHaveProperty("wasm");
    expect(r.body).toMatchObject({ runtime: "wasm" });
    const missing = await api(daemon, "GET", "/functions/v1/nope");
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ code: "FUNCTION_NOT_FOUND", error: "Function not found" });
    const badName = await api(daemon, "GET", "/functions/v1/Bad%20Name");
    expect(badName.status).toBe(400);
  });

  it("PATCH changes settings, validates them, and disabling makes invoke 404", async () => {
    const r = await api(daemon, "PATCH", "/functions/v1/secretive", {
      json: { timeout_ms: 2000, description: "for tests", enabled: false },
    });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ timeout_ms: 2000, description: "for tests", enabled: false });
    const invoke = await api(daemon, "POST", "/functions/v1/invoke/secretive", { json: {} });
    expect(invoke.status).toBe(404);
    expect(invoke.body).toMatchObject({ code: "FUNCTION_NOT_FOUND" });

    const bad = await api(daemon, "PATCH", "/functions/v1/secretive", {
      json: { memory_limit_mb: 9999 },
    });
    expect(bad.status).toBe(400);
    const bounds = await api(daemon, "PATCH", "/functions/v1/secretive", {
      json: { retry_base_ms: 5000, retry_max_ms: 10 },
    });
    expect(bounds.status).toBe(400);
    expect((bounds.body as { message: string }).message).toMatch(
      /retry_max_ms must be at least retry_base_ms/,
    );
    const missing = await api(daemon, "PATCH", "/functions/v1/nope", { json: { enabled: true } });
    expect(missing.status).toBe(404);
  });

  it("DELETE removes it; a second DELETE is 404", async () => {
    const r = await api(daemon, "DELETE", "/functions/v1/secretive");
    expect(r.status).toBe(200);
    expect(r.body).toEqual({
      name: "secretive",
      deleted: true,
      schedule: null,
      error_handler_of: [],
    });
    expect((await api(daemon, "DELETE", "/functions/v1/secretive")).status).toBe(404);
    expect((await api(daemon, "GET", "/functions/v1/secretive")).status).toBe(404);
  });

  it("DELETE names the schedule a function leaves behind, and the functions whose on_error it was", async () => {
    await deploy("ticking", "echo");
    await deploy("watched2", "echo", { on_error: "ticking" });
    await deploy("watched1", "echo", { on_error: "ticking" });
    await t.pool.query(
      `select pgfn.schedule('ticking', '*/5 * * * *', timezone => 'Europe/Berlin')`,
    );
    const r = await api(daemon, "DELETE", "/functions/v1/ticking");
    expect(r.status).toBe(200);
    expect(r.body).toEqual({
      name: "ticking",
      deleted: true,
      schedule: { cron: "*/5 * * * *", timezone: "Europe/Berlin" },
      error_handler_of: ["watched1", "watched2"],
    });
  });

  it("an unknown route is a JSON 404", async () => {
    const r = await api(daemon, "GET", "/functions/v2/whatever");
    expect(r.status).toBe(404);
    expect(r.body).toMatchObject({ code: "NOT_FOUND" });
  });
});

describe("invoke", () => {
  it("200: the handler's result is the response, and the run is recorded", async () => {
    const r = await api(daemon, "POST", "/functions/v1/invoke/echo", { json: { hello: "world" } });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/application\/json/);
    expect(r.body).toMatchObject({
      trigger: "http",
      function: "echo",
      payload: { hello: "world" },
    });
    const runId = r.headers.get("x-pgfn-run-id");
    expect(runId).toMatch(/^\d+$/);
    expect(r.body).toMatchObject({
      id: Number(r.headers.get("x-pgfn-event-id")),
      idempotency_key: Number(r.headers.get("x-pgfn-event-id")),
    });
    const run = await t.pool.query(
      `select r.status, e.source from pgfn.function_runs r join pgfn.events e on e.id = r.event_id where r.id = $1`,
      [runId],
    );
    expect(run.rows[0]).toEqual({ status: "succeeded", source: "http" });
  });

  it("without a body the payload is null", async () => {
    const r = await api(daemon, "POST", "/functions/v1/invoke/echo");
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ trigger: "http", payload: null });
  });

  it("404 for a function that does not exist, 400 for a bad name or broken JSON, 415 for a body of another type", async () => {
    const missing = await api(daemon, "POST", "/functions/v1/invoke/nonexistent", { json: {} });
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ code: "FUNCTION_NOT_FOUND", error: "Function not found" });
    expect((await api(daemon, "POST", "/functions/v1/invoke/Bad_Name", { json: {} })).status).toBe(
      400,
    );
    const text = await api(daemon, "POST", "/functions/v1/invoke/echo", {
      body: "hello",
      contentType: "text/plain",
    });
    expect(text.status).toBe(415);
    expect(text.body).toMatchObject({ code: "UNSUPPORTED_MEDIA_TYPE" });
    const broken = await api(daemon, "POST", "/functions/v1/invoke/echo", { body: "{" });
    expect(broken.status).toBe(400);
  });

  it("413 for a payload over 1 MiB", async () => {
    const r = await api(daemon, "POST", "/functions/v1/invoke/echo", {
      json: { blob: "x".repeat(1024 * 1024) },
    });
    expect(r.status).toBe(413);
    expect(r.body).toMatchObject({ code: "PAYLOAD_TOO_LARGE" });
  });

  it("500 for a handler that fails, with the run's id", async () => {
    await deploy("fail", "fail");
    const r = await api(daemon, "POST", "/functions/v1/invoke/fail", { json: {} });
    expect(r.status).toBe(500);
    expect(r.body).toMatchObject({ code: "FUNCTION_ERROR", error: "Function error" });
    expect((r.body as { message: string }).message).toMatch(/demo failure/);
    expect((r.body as { run_id: number }).run_id).toBeGreaterThan(0);
    // A synchronous failure is the caller's: no retry, no dead letter.
    const dl = await t.pool.query(`select count(*)::int as n from pgfn.dead_letters`);
    expect(dl.rows[0].n).toBe(0);
  });

  it("400 for a body with \\u0000, a lone surrogate or deep nesting, which Postgres jsonb cannot store", async () => {
    const before = await t.pool.query(`select count(*)::int as n from pgfn.events`);
    const bodies = [
      ['{"text":"a\\u0000b"}', /\\u0000 \(a NUL character\)/],
      ['{"a\\u0000b":1}', /\\u0000 \(a NUL character\)/],
      ['{"text":"x\\ud800y"}', /a lone surrogate \(\\ud800\)/],
      ['["\\udc00"]', /a lone surrogate \(\\udc00\)/],
      // JSON.stringify would overflow its stack, and Postgres soon after.
      [`${"[".repeat(6000)}${"]".repeat(6000)}`, /nested deeper than 1000 levels/],
    ] as const;
    for (const [body, problem] of bodies) {
      const r = await api(daemon, "POST", "/functions/v1/invoke/echo", { body });
      expect(r.status, body.slice(0, 40)).toBe(400);
      expect(r.body).toMatchObject({ code: "INVALID_REQUEST", error: "Invalid request" });
      const message = (r.body as { message: string }).message;
      expect(message).toMatch(problem);
      expect(message).toMatch(/which Postgres jsonb cannot store/);
    }
    // A surrogate pair is a character like any other.
    const pair = await api(daemon, "POST", "/functions/v1/invoke/echo", {
      body: '{"text":"\\ud83d\\ude00"}',
    });
    expect(pair.status).toBe(200);
    expect(pair.body).toMatchObject({ payload: { text: "\u{1F600}" } });
    const after = await t.pool.query(`select count(*)::int as n from pgfn.events`);
    expect(after.rows[0].n).toBe(before.rows[0].n + 1);
  });

  it("a failed run tells an invoke token its code and run, not its message; the admin token sees it", async () => {
    await deploy("fails", "fail");
    const invoker = await api(daemon, "POST", "/functions/v1/invoke/fails", {
      token: INVOKE_TOKEN,
      json: {},
    });
    expect(invoker.status).toBe(500);
    const body = invoker.body as { code: string; message: string; run_id: number };
    expect(body).toMatchObject({ code: "FUNCTION_ERROR", error: "Function error" });
    expect(body.message).not.toMatch(/demo failure/);
    expect(body.message).toBe(
      `The function failed. Run ${body.run_id} in pgfn.function_runs has the details; PGFN_ADMIN_TOKEN can read them at GET /functions/v1/fails/runs.`,
    );
    // The full text is kept, for the function's owner.
    const run = await t.pool.query(`select error_message from pgfn.function_runs where id = $1`, [
      body.run_id,
    ]);
    expect(run.rows[0].error_message).toMatch(/demo failure/);
    const admin = await api(daemon, "POST", "/functions/v1/invoke/fails", { json: {} });
    expect((admin.body as { message: string }).message).toMatch(/demo failure/);
  });

  it("504 for a handler past its timeout", async () => {
    await deploy("spin", "spin", { timeout_ms: 1000 });
    const r = await api(daemon, "POST", "/functions/v1/invoke/spin", { json: {} });
    expect(r.status).toBe(504);
    expect(r.body).toMatchObject({ code: "TIMEOUT", error: "Function timeout" });
  });

  it("507 for a handler past its memory limit", async () => {
    await deploy("hog", "hog", { memory_limit_mb: 16 });
    const r = await api(daemon, "POST", "/functions/v1/invoke/hog", { json: { mb: 64 } });
    expect(r.status).toBe(507);
    expect(r.body).toMatchObject({ code: "MEMORY_EXCEEDED", error: "Memory exceeded" });
  });

  it("429 when the function is at max_concurrency", async () => {
    await deploy("single", "spin", { timeout_ms: 3000, max_concurrency: 1 });
    const first = api(daemon, "POST", "/functions/v1/invoke/single", { json: {} });
    await waitForRunning(t.pool, "single");
    const second = await api(daemon, "POST", "/functions/v1/invoke/single", { json: {} });
    expect(second.status).toBe(429);
    expect(second.body).toMatchObject({ code: "CONCURRENCY_LIMIT" });
    expect((await first).status).toBe(504);
  });

  it("503 when the function's circuit is open", async () => {
    await deploy("breaker", "echo");
    await t.pool.query(
      `insert into pgfn.circuits (function_name, state, opened_at) values ('breaker', 'open', now())`,
    );
    const r = await api(daemon, "POST", "/functions/v1/invoke/breaker", { json: {} });
    expect(r.status).toBe(503);
    expect(r.body).toMatchObject({ code: "CIRCUIT_OPEN" });
    expect((r.body as { message: string }).message).toMatch(/circuit is open until/);
  });
});

describe("runs", () => {
  it("lists runs newest first, a page at a time", async () => {
    for (let i = 0; i < 3; i++) {
      expect((await api(daemon, "POST", "/functions/v1/invoke/echo", { json: { i } })).status).toBe(
        200,
      );
    }
    const all = await t.pool.query<{ id: string }>(
      `select id from pgfn.function_runs where function_name = 'echo' order by id desc`,
    );
    const ids = all.rows.map((r) => Number(r.id));
    const page1 = await api(daemon, "GET", "/functions/v1/echo/runs?limit=2");
    expect(page1.status).toBe(200);
    const p1 = page1.body as { runs: { id: number; status: string }[]; next_before: number | null };
    expect(p1.runs.map((r) => r.id)).toEqual(ids.slice(0, 2));
    expect(p1.runs[0]).toMatchObject({ function_name: "echo", status: "succeeded", attempt: 1 });
    expect(p1.next_before).toBe(ids[1]);
    const rest = await api(
      daemon,
      "GET",
      `/functions/v1/echo/runs?limit=100&before=${p1.next_before}`,
    );
    const p2 = rest.body as { runs: { id: number }[]; next_before: number | null };
    expect(p2.runs.map((r) => r.id)).toEqual(ids.slice(2));
    expect(p2.next_before).toBeNull();

    expect((await api(daemon, "GET", "/functions/v1/echo/runs?limit=0")).status).toBe(400);
    expect((await api(daemon, "GET", "/functions/v1/nope/runs")).status).toBe(404);
  });
});

describe("OpenAPI", () => {
  it("serves a document generated from the route schemas, without a token", async () => {
    const r = await api(daemon, "GET", "/functions/v1/openapi.json", { token: null });
    expect(r.status).toBe(200);
    const doc = r.body as {
      openapi: string;
      paths: Record<string, Record<string, unknown>>;
      components: { schemas: Record<string, { properties?: Record<string, unknown> }> };
    };
    expect(doc.openapi).toBe("3.1.0");
    expect(Object.keys(doc.paths).sort()).toEqual(
      [
        "/functions/v1/",
        "/functions/v1/deploy",
        "/functions/v1/invoke/{name}",
        "/functions/v1/{name}",
        "/functions/v1/{name}/runs",
        "/healthz",
        "/metrics",
        "/readyz",
      ].sort(),
    );
    expect(Object.keys(doc.paths["/functions/v1/{name}"]!).sort()).toEqual([
      "delete",
      "get",
      "patch",
    ]);
    expect(doc.components.schemas.DeployRequest?.properties).toHaveProperty("timeout_ms");
    expect(doc.components.schemas.Error?.properties).toHaveProperty("code");
  });
});
