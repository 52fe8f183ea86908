// What an operator sees: /metrics moving as runs happen, /healthz, /readyz
// naming the failed check, one JSON log line per run without secrets, slow
// clients cut off, and a stop that lets invocations in flight finish.
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { checkReadiness } from "../src/http/health.js";
import { startHttpServer } from "../src/http/server.js";
import { silentLogger } from "../src/logger.js";
import { enqueueManual, finishedRun, waitFor, waitForRunning } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";
import {
  ADMIN_TOKEN,
  api,
  capturingLogger,
  INVOKE_TOKEN,
  startHttpDaemon,
  wasmBase64,
} from "./httpHelpers.js";

const SECRET = "sk-live-0123456789SECRET";

const t = useTestDatabase("http_ops");
let daemon: Daemon;
let lines: string[];

beforeAll(async () => {
  const captured = capturingLogger("debug");
  lines = captured.lines;
  daemon = await startHttpDaemon(t.url, {}, captured.logger);
  for (const [name, example, settings] of [
    ["echo", "echo", {}],
    ["fail", "fail", {}],
    ["spin", "spin", { timeout_ms: 1000 }],
    ["hog", "hog", { memory_limit_mb: 16 }],
    ["secret", "secret", { env: { API_KEY: SECRET, REGION: "eu" } }],
    ["busy", "busy", { timeout_ms: 60000 }],
  ] as const) {
    const r = await api(daemon, "POST", "/functions/v1/deploy", {
      json: { name, wasm: await wasmBase64(example), ...settings },
    });
    expect(r.status, r.text).toBe(201);
  }
});
afterAll(async () => {
  await daemon?.stop();
});

/** The value of one sample in a Prometheus text scrape, or undefined. */
function sample(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      [...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

async function scrape(d: Daemon = daemon): Promise<string> {
  const r = await api(d, "GET", "/metrics", { token: null });
  expect(r.status).toBe(200);
  expect(r.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return r.text;
}

/** A second daemon on the database that serves HTTP only: no listener, no worker. */
const startIdleDaemon = (daemonId: string) =>
  startHttpDaemon(t.url, { listener: false, worker: false, sandboxThreads: 1, daemonId });

const invoke = (name: string, json: unknown = {}) =>
  api(daemon, "POST", `/functions/v1/invoke/${name}`, { json, token: INVOKE_TOKEN });

describe("/metrics", () => {
  it("counts each run this daemon records, by outcome and error type", async () => {
    const before = await scrape();
    expect(sample(before, "functions_invocations_total", { name: "echo" })).toBeUndefined();
    expect(sample(before, "process_cpu_user_seconds_total")).toBeGreaterThan(0);

    expect((await invoke("echo")).status).toBe(200);
    expect((await invoke("echo")).status).toBe(200);
    expect((await invoke("fail")).status).toBe(500);
    expect((await invoke("spin")).status).toBe(504);
    expect((await invoke("hog", { mb: 64 })).status).toBe(507);

    const after = await scrape();
    expect(
      sample(after, "functions_invocations_total", { name: "echo", status: "succeeded" }),
    ).toBe(2);
    expect(sample(after, "functions_invocations_total", { name: "fail", status: "failed" })).toBe(
      1,
    );
    expect(
      sample(after, "functions_errors_total", { name: "fail", error_type: "FUNCTION_ERROR" }),
    ).toBe(1);
    expect(sample(after, "functions_errors_total", { name: "spin", error_type: "TIMEOUT" })).toBe(
      1,
    );
    expect(sample(after, "functions_timeout_total", { name: "spin" })).toBe(1);
    expect(sample(after, "functions_memory_exceeded_total", { name: "hog" })).toBe(1);
    expect(sample(after, "functions_timeout_total", { name: "echo" })).toBeUndefined();
    expect(sample(after, "functions_duration_seconds_count", { name: "echo" })).toBe(2);
    expect(
      sample(after, "functions_duration_seconds_sum", { name: "spin" }),
    ).toBeGreaterThanOrEqual(1);
    expect(sample(after, "pgfn_event_lag_seconds_count", { source: "http" })).toBe(5);
  });

  it("measures commit-to-start lag of events the worker runs", async () => {
    const eventId = await enqueueManual(t.pool, "echo", { via: "queue" });
    await finishedRun(t.pool, eventId);
    const text = await waitFor(
      async () => {
        const s = await scrape();
        return sample(s, "pgfn_event_lag_seconds_count", { source: "manual" }) === 1 && s;
      },
      { message: "the worker's run in the lag histogram" },
    );
    const lag = sample(text, "pgfn_event_lag_seconds_sum", { source: "manual" })!;
    expect(lag).toBeGreaterThanOrEqual(0);
    expect(lag).toBeLessThan(10);
    expect(sample(text, "functions_invocations_total", { name: "echo", status: "succeeded" })).toBe(
      3,
    );
  });

  it("reads the breaker states from the database on each scrape", async () => {
    // Another daemon's registry is its own: it has recorded no runs.
    const idle = await startIdleDaemon("idle");
    try {
      await t.pool.query(
        // Upserts: the failures above may already have given 'fail' a (closed) circuit.
        `insert into pgfn.circuits (function_name, state) values ('fail', 'open'), ('spin', 'half_open')
         on conflict (function_name) do update set state = excluded.state`,
      );
      const text = await scrape(idle);
      expect(sample(text, "pgfn_circuit_state", { name: "fail" })).toBe(2);
      expect(sample(text, "pgfn_circuit_state", { name: "spin" })).toBe(1);
      expect(sample(text, "pgfn_circuit_state", { name: "echo" })).toBe(0);
      expect(sample(text, "functions_invocations_total")).toBeUndefined();
    } finally {
      await idle.stop();
      await t.pool.query(`delete from pgfn.circuits`);
    }
  });

  it("the backlog gauge counts undispatched events", async () => {
    const idle = await startIdleDaemon("idle2");
    try {
      // Otherwise it would dispatch the events between the count and the scrape.
      await daemon.listener!.stop();
      await t.pool.query(
        `insert into pgfn.events (function_name, source, payload) select 'nobody', 'manual', '{}' from generate_series(1, 4)`,
      );
      const { rows } = await t.pool.query<{ n: number }>(
        `select count(*)::int as n from pgfn.events where dispatched_at is null`,
      );
      expect(rows[0]!.n).toBeGreaterThanOrEqual(4);
      expect(sample(await scrape(idle), "pgfn_events_undispatched")).toBe(rows[0]!.n);
    } finally {
      await idle.stop();
    }
  });
});

describe("/healthz and /readyz", () => {
  it("/healthz answers while the process is up", async () => {
    const r = await api(daemon, "GET", "/healthz", { token: null });
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ status: "ok" });
  });

  it("/readyz names the check that failed: listener, migrations", async () => {
    // The previous test stopped this daemon's listener.
    const down = await api(daemon, "GET", "/readyz", { token: null });
    expect(down.status).toBe(503);
    expect(down.body).toMatchObject({
      status: "unavailable",
      checks: {
        database: "ok",
        migrations: "ok",
        listener: expect.stringMatching(/not connected/),
      },
    });

    const fresh = await startHttpDaemon(t.url, { daemonId: "fresh", sandboxThreads: 1 });
    try {
      const ok = await api(fresh, "GET", "/readyz", { token: null });
      expect(ok.status).toBe(200);
      expect(ok.body).toEqual({
        status: "ok",
        checks: {
          database: "ok",
          listener: "ok",
          migrations: "ok",
          worker: "ok",
          scheduler: "ok",
        },
      });
      const { rows } = await t.pool.query<{ id: number; name: string }>(
        `delete from pgfn.migrations where id = (select max(id) from pgfn.migrations) returning id, name`,
      );
      try {
        const stale = await api(fresh, "GET", "/readyz", { token: null });
        expect(stale.status).toBe(503);
        expect(stale.body).toMatchObject({
          checks: { database: "ok", migrations: expect.stringContaining(rows[0]!.name) },
        });
      } finally {
        await t.pool.query(`insert into pgfn.migrations (id, name) values ($1, $2)`, [
          rows[0]!.id,
          rows[0]!.name,
        ]);
      }
    } finally {
      await fresh.stop();
    }
  });

  it("the database check fails when Postgres cannot be reached, in safe words; the error goes to the log", async () => {
    const pg = await import("pg");
    const pool = new pg.default.Pool({
      connectionString: "postgres://nobody@127.0.0.1:1/none",
      connectionTimeoutMillis: 500,
    });
    const captured = capturingLogger("debug");
    try {
      const r = await checkReadiness({ pool, listener: undefined, logger: captured.logger });
      expect(r.ready).toBe(false);
      expect(r.checks).toEqual({
        database: "unreachable",
        migrations: "not checked (database unreachable)",
        listener: "disabled",
        worker: "disabled",
        scheduler: "disabled",
      });
      // /readyz needs no token: no address, port, role or pg message in it.
      expect(JSON.stringify(r)).not.toMatch(/127\.0\.0\.1|ECONNREFUSED|nobody|:1\b/);
      const logged = captured.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(logged).toContainEqual(
        expect.objectContaining({
          operation: "readiness",
          check: "database",
          error: expect.stringMatching(/ECONNREFUSED/),
        }),
      );
      // A probe every few seconds logs a change, not a stream.
      await checkReadiness({ pool, listener: undefined, logger: captured.logger });
      expect(captured.lines.length).toBe(logged.length);
    } finally {
      await pool.end();
    }
  });

  it("/readyz says which part is not working: a stopped worker, a failing scheduler", async () => {
    const r = await checkReadiness({
      pool: t.pool,
      listener: { connected: true },
      worker: { state: "restarting" },
      scheduler: { failing: true },
    });
    expect(r).toEqual({
      ready: false,
      checks: {
        database: "ok",
        migrations: "ok",
        listener: "ok",
        worker: "restarting (its job runner stopped; see the log)",
        scheduler: "retrying (its last tick failed; see the log)",
      },
    });
  });
});

describe("logs", () => {
  it("one JSON line per invocation, with the contract's fields and no secret", async () => {
    const r = await invoke("secret");
    expect(r.status).toBe(500);
    expect(r.text).not.toContain(SECRET);
    // An invoke token is not told the handler's message; the admin token
    // is, redacted.
    expect((r.body as { message: string }).message).toMatch(/^The function failed\. Run \d+/);
    const admin = await api(daemon, "POST", "/functions/v1/invoke/secret", { json: {} });
    expect(admin.text).not.toContain(SECRET);
    expect((admin.body as { message: string }).message).toMatch(/\[redacted\]/);
    // A wrong token is not logged either.
    await api(daemon, "GET", "/functions/v1/secret", { token: "wrong-token-which-is-long" });

    const runId = r.headers.get("x-pgfn-run-id");
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const run = parsed.filter((l) => l.operation === "run" && l.run_id === runId);
    expect(run).toHaveLength(1);
    expect(run[0]).toMatchObject({
      level: "warn",
      service: "pgfn",
      operation: "run",
      function: "secret",
      event_id: r.headers.get("x-pgfn-event-id"),
      error: { code: "FUNCTION_ERROR" },
    });
    expect(typeof run[0]!.duration_ms).toBe("number");
    expect(parsed.some((l) => l.operation === "http" && l.status === 500)).toBe(true);

    const all = lines.join("\n");
    for (const secret of [SECRET, ADMIN_TOKEN, INVOKE_TOKEN, "wrong-token-which-is-long"]) {
      expect(all).not.toContain(secret);
    }
  });
});

describe("slow clients and shutdown", () => {
  it("a client that never finishes its headers or its body is cut off", async () => {
    const server = await startHttpServer({
      port: 0,
      host: "127.0.0.1",
      db: daemon.db,
      executor: daemon.executor,
      auth: { adminToken: ADMIN_TOKEN, invokeTokens: [] },
      metrics: daemon.metrics.registry,
      readiness: async () => ({
        ready: true,
        checks: {
          database: "ok",
          listener: "ok",
          migrations: "ok",
          worker: "ok",
          scheduler: "ok",
        },
      }),
      logger: silentLogger(),
      headersTimeoutMs: 300,
      requestTimeoutMs: 600,
    });
    try {
      const slow = (payload: string) =>
        new Promise<{ elapsed: number; data: string }>((resolve, reject) => {
          const started = Date.now();
          let data = "";
          const socket = net.connect(server.port, "127.0.0.1", () => socket.write(payload));
          socket.on("data", (chunk) => (data += chunk.toString()));
          socket.on("close", () => resolve({ elapsed: Date.now() - started, data }));
          socket.on("error", reject);
          socket.setTimeout(10_000, () => {
            socket.destroy();
            reject(new Error("the server kept a slow client for 10 s"));
          });
        });
      const headers = await slow("GET /healthz HTTP/1.1\r\nHost: x\r\n");
      expect(headers.elapsed).toBeLessThan(5000);
      expect(headers.data).toMatch(/^HTTP\/1\.1 408/);
      const body = await slow(
        `POST /functions/v1/invoke/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":`,
      );
      expect(body.elapsed).toBeLessThan(5000);
      expect(body.data).toMatch(/^HTTP\/1\.1 408/);
    } finally {
      await server.close();
    }
  });

  it("a port in use is a clear error naming PGFN_HTTP_PORT", async () => {
    const options = {
      host: "127.0.0.1",
      db: daemon.db,
      executor: daemon.executor,
      auth: { adminToken: ADMIN_TOKEN, invokeTokens: [] },
      metrics: daemon.metrics.registry,
      readiness: () => checkReadiness({ pool: t.pool, listener: undefined }),
      logger: silentLogger(),
    };
    const first = await startHttpServer({ ...options, port: 0 });
    try {
      await expect(startHttpServer({ ...options, port: first.port })).rejects.toThrow(
        /cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)\. Set PGFN_HTTP_PORT/,
      );
    } finally {
      await first.close();
    }
  });

  it("stop() lets an invocation in flight finish, then refuses new connections", async () => {
    const inFlight = invoke("busy", { millions: 1500 });
    await waitForRunning(t.pool, "busy");
    const url = daemon.http!.url;
    const stopped = daemon.stop();
    const r = await inFlight;
    expect(r.status, r.text).toBe(200);
    expect(r.body).toMatchObject({ done: true });
    await stopped;
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });
});
