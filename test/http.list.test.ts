// GET /functions/v1, the list of functions, as a client sees it: real HTTP
// against a real daemon and Postgres.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { enqueueManual } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import { api, INVOKE_TOKEN, startHttpDaemon } from "./httpHelpers.js";

const t = useTestDatabase("http_list");
let daemon: Daemon;

beforeAll(async () => {
  daemon = await startHttpDaemon(t.url, { listener: false, worker: false, scheduler: false });
});
afterAll(async () => {
  await daemon?.stop();
});

/** A finished run of `fn` for a new event, as the worker would have recorded it. */
async function addRun(fn: string, status: "succeeded" | "failed" | "abandoned" | "running") {
  const eventId = await enqueueManual(t.pool, fn, {});
  await t.pool.query(
    `insert into pgfn.function_runs (event_id, function_name, attempt, status, finished_at)
     values ($1, $2, 1, $3, case when $3 = 'running' then null else clock_timestamp() end)`,
    [eventId, fn, status],
  );
}

interface Listed {
  name: string;
  runtime: string;
  enabled: boolean;
  env: Record<string, string>;
  schedule: Record<string, unknown> | null;
  recent_runs: { finished: number; failed: number; error_rate: number | null };
}

describe("GET /functions/v1", () => {
  it("is an empty list before anything is deployed", async () => {
    const r = await api(daemon, "GET", "/functions/v1");
    expect(r.status, r.text).toBe(200);
    expect(r.body).toEqual({ functions: [] });
  });

  it("lists every function by name with runtime, schedule and its latest 100 finished runs; secrets redacted", async () => {
    await t.deploy("zeta", { example: "echo", env: { API_KEY: "sk-live-secret", REGION: "eu" } });
    await t.deploy("alpha", { example: "echo" });
    for (let i = 0; i < 30; i++) await addRun("alpha", "failed");
    for (let i = 0; i < 100; i++)
      await addRun("alpha", i < 2 ? "failed" : i === 2 ? "abandoned" : "succeeded");
    await addRun("alpha", "running");
    await t.pool.query(`select pgfn.schedule('zeta', '0 3 * * *', 'none', 'Asia/Tokyo')`);
    await t.pool.query(`select pgfn.disable('zeta')`);

    const r = await api(daemon, "GET", "/functions/v1");
    expect(r.status, r.text).toBe(200);
    expect(r.text).not.toContain("sk-live-secret");
    expect(r.text).not.toContain('"wasm":');
    const { functions } = r.body as { functions: Listed[] };
    expect(functions.map((f) => f.name)).toEqual(["alpha", "zeta"]);
    const [alpha, zeta] = functions;
    expect(alpha).toMatchObject({
      name: "alpha",
      runtime: "wasm",
      enabled: true,
      timeout_ms: 10000,
      schedule: null,
      recent_runs: { finished: 100, failed: 3, error_rate: 0.03 },
    });
    expect(zeta).toMatchObject({
      runtime: "wasm",
      enabled: false,
      env: { API_KEY: "[redacted]", REGION: "eu" },
      schedule: {
        cron: "0 3 * * *",
        timezone: "Asia/Tokyo",
        catch_up: "none",
        next_run: null,
        last_run: null,
        error: null,
      },
      recent_runs: { finished: 0, failed: 0, error_rate: null },
    });
    // Each entry shows what GET /functions/v1/:name shows, and more, but a
    // js function's source (up to 10 MB each): that is GET /:name's alone.
    const one = await api(daemon, "GET", "/functions/v1/zeta");
    const { source, ...shown } = one.body as Record<string, unknown>;
    expect(source).toBeNull();
    expect(zeta).toMatchObject(shown);
    expect(zeta).not.toHaveProperty("source");
  });

  it("needs PGFN_ADMIN_TOKEN, as GET /functions/v1/:name does", async () => {
    expect((await api(daemon, "GET", "/functions/v1", { token: null })).status).toBe(401);
    const invoker = await api(daemon, "GET", "/functions/v1", { token: INVOKE_TOKEN });
    expect(invoker.status).toBe(403);
    expect(invoker.body).toMatchObject({ code: "FORBIDDEN" });
  });

  it("is in the OpenAPI document with its schema", async () => {
    const r = await api(daemon, "GET", "/functions/v1/openapi.json", { token: null });
    const doc = r.body as {
      paths: Record<string, Record<string, unknown>>;
      components: { schemas: Record<string, { properties?: Record<string, unknown> }> };
    };
    expect(Object.keys(doc.paths)).toContain("/functions/v1/");
    expect(Object.keys(doc.paths["/functions/v1/"]!)).toEqual(["get"]);
    expect(doc.components.schemas.FunctionList?.properties).toHaveProperty("functions");
    const summary = doc.components.schemas.FunctionSummary?.properties ?? {};
    for (const field of ["name", "runtime", "enabled", "last_status", "schedule", "recent_runs"])
      expect(summary).toHaveProperty(field);
  });
});
