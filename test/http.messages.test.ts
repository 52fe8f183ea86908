// What a caller of the HTTP API is told when a request is refused: every 400
// names the JSON field they sent, in their terms, with what they gave; a body
// that is not JSON is a 415. Real HTTP against a real daemon and Postgres.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { useTestDatabase } from "./fixture.js";
import { ADMIN_TOKEN, api, baseUrl, startHttpDaemon, wasmBase64 } from "./httpHelpers.js";

const t = useTestDatabase("http_messages");
let daemon: Daemon;
let wasm: string;

beforeAll(async () => {
  daemon = await startHttpDaemon(t.url);
  wasm = await wasmBase64("echo");
  const r = await api(daemon, "POST", "/functions/v1/deploy", { json: { name: "echo", wasm } });
  expect(r.status, r.text).toBe(201);
});
afterAll(async () => {
  await daemon?.stop();
});

/** zod's words and our internal names, which no message may show. */
const LIBRARY_WORDS =
  /Invalid input|expected \w+, received|Too (small|big)|Unrecognized key|Invalid key in record|Invalid option|body\/|querystring\/|timeoutMs|memoryLimitMb/;

/** A refused request's message, after checking it is a 400 in our terms. */
async function refusal(method: string, path: string, json: unknown): Promise<string> {
  const r = await api(daemon, method, path, { json });
  expect(r.status, r.text).toBe(400);
  expect(r.body).toMatchObject({ code: "INVALID_REQUEST", error: "Invalid request" });
  const { message } = r.body as { message: string };
  expect(message).not.toMatch(LIBRARY_WORDS);
  return message;
}

async function functionNames(): Promise<string[]> {
  const rows = await t.pool.query<{ name: string }>(`select name from pgfn.functions order by 1`);
  return rows.rows.map((r) => r.name);
}

describe("a 400 names the field the caller sent, what it must be, and what they gave", () => {
  it("deploy", async () => {
    const deploy = (fields: Record<string, unknown>) =>
      refusal("POST", "/functions/v1/deploy", { name: "refused", wasm, ...fields });
    const cases: [Record<string, unknown>, string][] = [
      [{ timeout_ms: 50 }, "timeout_ms must be a whole number between 1000 and 300000 (got 50)."],
      [
        { timeout_ms: "5000" },
        'timeout_ms must be a whole number between 1000 and 300000 (got "5000").',
      ],
      [
        { memory_limit_mb: 1.5 },
        "memory_limit_mb must be a whole number between 16 and 512 (got 1.5).",
      ],
      [
        { env: { "bad key": "v" } },
        'env key "bad key" must be an identifier (letters, digits and _, not a digit first).',
      ],
      [{ env: { REGION: 1 } }, "env.REGION must be a string (got 1)."],
      [
        { env: "REGION=eu" },
        'env must be an object of names to strings, e.g. {"API_URL": "https://..."} (got "REGION=eu").',
      ],
      [
        { allowed_hosts: ["api.example.com", "a b"] },
        'allowed_hosts[1] must be a host name, *.domain or [IPv6 address], optionally with :port (got "a b").',
      ],
      [{ update: "yes" }, 'update must be true or false (got "yes").'],
      [{ name: undefined }, "name is required."],
      [
        { description: "x".repeat(1001) },
        "description must be at most 1000 characters (got 1001 characters).",
      ],
      [
        { timeout_ms: 50, max_attempts: 0 },
        "timeout_ms must be a whole number between 1000 and 300000 (got 50); max_attempts must be a whole number between 1 and 100 (got 0).",
      ],
    ];
    for (const [fields, message] of cases) expect(await deploy(fields)).toBe(message);

    expect(await deploy({ foo: 1 })).toMatch(
      /^unknown field "foo"; the fields are name, wasm, source, file_name, description, entrypoint, timeout_ms, .*, update\.$/,
    );
    expect(await refusal("POST", "/functions/v1/deploy", [1, 2])).toBe(
      "The body must be an object (got an array).",
    );
    expect(await functionNames()).toEqual(["echo"]);
  });

  it("PATCH", async () => {
    const patch = (json: unknown) => refusal("PATCH", "/functions/v1/echo", json);
    expect(await patch({ memory_limit_mb: 9999 })).toBe(
      "memory_limit_mb must be a whole number between 16 and 512 (got 9999).",
    );
    expect(await patch({ enabled: "no" })).toBe('enabled must be true or false (got "no").');
    expect(await patch({ ordering: "row" })).toMatch(
      /^unknown field "ordering"; the fields are description, entrypoint, enabled, timeout_ms, .*, on_error(, .*)?\.$/,
    );
    const row = await t.pool.query(
      `select memory_limit_mb, enabled, ordering from pgfn.functions where name = 'echo'`,
    );
    expect(row.rows[0]).toEqual({ memory_limit_mb: 128, enabled: true, ordering: "none" });
  });

  it("the runs query string", async () => {
    const query = async (q: string) => {
      const r = await api(daemon, "GET", `/functions/v1/echo/runs?${q}`);
      expect(r.status, r.text).toBe(400);
      const { message } = r.body as { message: string };
      expect(message).not.toMatch(LIBRARY_WORDS);
      return message;
    };
    expect(await query("limit=0")).toBe(
      'In the query string: limit must be a whole number between 1 and 1000 (got "0").',
    );
    expect(await query("limit=lots&before=-1")).toBe(
      'In the query string: limit must be a whole number between 1 and 1000 (got "lots"); before must be a run id (a whole number over 0) (got "-1").',
    );
  });

  it("a body that is not JSON, and a request without one", async () => {
    const broken = await api(daemon, "POST", "/functions/v1/deploy", { body: '{"name": ' });
    expect(broken.status).toBe(400);
    expect(broken.body).toMatchObject({ message: "The body is not valid JSON." });
    const none = await fetch(`${baseUrl(daemon)}/functions/v1/deploy`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(none.status).toBe(400);
    expect(await none.json()).toMatchObject({
      code: "INVALID_REQUEST",
      message: 'The request has no body: send a JSON object with "content-type: application/json".',
    });
  });
});

describe("415 for a body that is not sent as JSON", () => {
  const routes = [
    ["POST", "/functions/v1/deploy"],
    ["PATCH", "/functions/v1/echo"],
    ["POST", "/functions/v1/invoke/echo"],
  ] as const;

  it("another content-type: text/plain, or curl -d's form encoding", async () => {
    for (const [method, path] of routes) {
      for (const contentType of ["text/plain", "application/x-www-form-urlencoded"]) {
        const r = await api(daemon, method, path, {
          body: JSON.stringify({ name: "typed", wasm }),
          contentType,
        });
        expect(r.status, `${method} ${path} ${contentType}`).toBe(415);
        expect(r.body).toEqual({
          code: "UNSUPPORTED_MEDIA_TYPE",
          error: "Unsupported media type",
          message: `${method} ${path} takes a JSON body, but its content-type is "${contentType}". Send it with "content-type: application/json" (curl: -H 'content-type: application/json').`,
        });
      }
    }
  });

  it("a body without a content-type", async () => {
    for (const [method, path] of routes) {
      // Bytes: a string body would get fetch's own text/plain.
      const r = await fetch(`${baseUrl(daemon)}${path}`, {
        method,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        body: new TextEncoder().encode(JSON.stringify({ name: "untyped", wasm })),
      });
      expect(r.status, `${method} ${path}`).toBe(415);
      expect(await r.json()).toMatchObject({
        code: "UNSUPPORTED_MEDIA_TYPE",
        message: `${method} ${path} takes a JSON body, but the request names no content-type. Send it with "content-type: application/json" (curl: -H 'content-type: application/json').`,
      });
    }
    expect(await functionNames()).toEqual(["echo"]);
    const runs = await t.pool.query(`select count(*)::int as n from pgfn.function_runs`);
    expect(runs.rows[0].n).toBe(0);
  });

  it("the OpenAPI document lists it for each route with a body", async () => {
    const doc = (await api(daemon, "GET", "/functions/v1/openapi.json", { token: null })).body as {
      paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
    };
    expect(Object.keys(doc.paths["/functions/v1/deploy"]!.post!.responses)).toContain("415");
    expect(Object.keys(doc.paths["/functions/v1/{name}"]!.patch!.responses)).toContain("415");
    expect(Object.keys(doc.paths["/functions/v1/invoke/{name}"]!.post!.responses)).toContain("415");
  });
});
