// The http_fetch host function against a local server on 127.0.0.1 (never
// the network): allow list, limits, and which failures are transient.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HostFunctionError } from "../src/sandbox/host/errors.js";
import { httpFetch, type HttpFetchContext } from "../src/sandbox/host/httpFetch.js";

let server: http.Server;
let port: number;
const hanging: http.ServerResponse[] = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://localhost");
      if (url.pathname === "/echo") {
        res.writeHead(201, { "content-type": "application/json", "x-reply": "yes" });
        res.end(
          JSON.stringify({
            method: req.method,
            header: req.headers["x-test"] ?? null,
            body: Buffer.concat(chunks).toString("utf8"),
          }),
        );
      } else if (url.pathname === "/big") {
        // Streamed without content-length: the cap must apply while reading.
        res.writeHead(200, { "content-type": "text/plain" });
        const chunk = "x".repeat(64 * 1024);
        let sent = 0;
        const write = () => {
          while (sent < 64 && res.write(chunk)) sent++;
          if (sent < 64) res.once("drain", write);
          else res.end();
        };
        write();
      } else if (url.pathname === "/declared-big") {
        const body = "y".repeat(5000);
        res.writeHead(200, { "content-length": String(body.length) });
        res.end(body);
      } else if (url.pathname === "/hang") {
        hanging.push(res); // never answers
      } else if (url.pathname === "/redirect") {
        res.writeHead(302, { location: "http://not-allowed.example/" });
        res.end();
      } else {
        res.writeHead(503);
        res.end("down");
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  for (const res of hanging) res.destroy();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

function ctx(allowedHosts: string[], extra: Partial<HttpFetchContext> = {}): HttpFetchContext {
  return { allowedHosts, deadline: Date.now() + 5000, ...extra };
}

async function failure(promise: Promise<unknown>): Promise<HostFunctionError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(HostFunctionError);
  const hostError = error as HostFunctionError;
  expect(hostError.code).toBe("HOST_FUNCTION_ERROR");
  return hostError;
}

describe("httpFetch", () => {
  it("round-trips a GET", async () => {
    const res = await httpFetch(ctx(["127.0.0.1"]), {
      url: `http://127.0.0.1:${port}/echo`,
      headers: { "x-test": "hello" },
    });
    expect(res.status).toBe(201);
    expect(res.headers["x-reply"]).toBe("yes");
    expect(JSON.parse(res.body)).toEqual({ method: "GET", header: "hello", body: "" });
  });

  it("round-trips a POST with a body, method in any case", async () => {
    const res = await httpFetch(ctx([`127.0.0.1:${port}`]), {
      url: `http://127.0.0.1:${port}/echo`,
      method: "post",
      headers: { "x-test": "h2", "content-type": "application/json" },
      body: '{"a":1}',
    });
    expect(JSON.parse(res.body)).toEqual({ method: "POST", header: "h2", body: '{"a":1}' });
  });

  it("returns a 5xx and a 3xx as responses, without following the redirect", async () => {
    const down = await httpFetch(ctx(["127.0.0.1"]), { url: `http://127.0.0.1:${port}/other` });
    expect(down).toMatchObject({ status: 503, body: "down" });
    const moved = await httpFetch(ctx(["127.0.0.1"]), { url: `http://127.0.0.1:${port}/redirect` });
    expect(moved.status).toBe(302);
    expect(moved.headers.location).toBe("http://not-allowed.example/");
  });

  it("refuses a host that is not allowed, without connecting", async () => {
    const error = await failure(
      httpFetch(ctx(["api.example.com"]), { url: `http://127.0.0.1:${port}/echo` }),
    );
    expect(error.transient).toBe(false);
    // The list as it is: the hosts to give again with the new one.
    expect(error.message).toBe(
      `http_fetch to 127.0.0.1:${port} is not allowed; add it with --allow-host (allowed_hosts is api.example.com; on deploy --update, --allow-host replaces the list: give every host)`,
    );
    const none = await failure(httpFetch(ctx([]), { url: `http://127.0.0.1:${port}/echo` }));
    expect(none.message).toContain("(allowed_hosts is empty;");
  });

  it("refuses another port when the entry names one", async () => {
    const error = await failure(
      httpFetch(ctx([`127.0.0.1:${port + 1}`]), { url: `http://127.0.0.1:${port}/echo` }),
    );
    expect(error.transient).toBe(false);
    expect(error.message).toContain("is not allowed");
    // The default port counts when the URL has none.
    await failure(httpFetch(ctx(["127.0.0.1:8080"]), { url: "http://127.0.0.1/echo" }));
  });

  it("matches wildcard entries to subdomains only", async () => {
    // localhost subdomains resolve to loopback on most systems, but the
    // check runs before any connection, so only allowed/not allowed matters.
    const allowed = ["*.localhost"];
    const notAllowed = await failure(
      httpFetch(ctx(allowed), { url: `http://localhost:${port}/echo` }),
    );
    expect(notAllowed.message).toContain("is not allowed");
    const evil = await failure(
      httpFetch(ctx(allowed), { url: `http://evillocalhost:${port}/echo` }),
    );
    expect(evil.message).toContain("is not allowed");
    const sub = await httpFetch(ctx(allowed), { url: `http://a.b.localhost:${port}/echo` }).then(
      (r) => r.status,
      (e: HostFunctionError) => e.message,
    );
    expect(String(sub)).not.toContain("is not allowed");
  });

  it("fails a response over the cap, streamed or declared", async () => {
    const streamed = await failure(
      httpFetch(ctx(["127.0.0.1"], { maxResponseBytes: 100_000 }), {
        url: `http://127.0.0.1:${port}/big`,
      }),
    );
    expect(streamed.transient).toBe(false);
    expect(streamed.message).toContain("larger than 100000 bytes");
    const declared = await failure(
      httpFetch(ctx(["127.0.0.1"], { maxResponseBytes: 1000 }), {
        url: `http://127.0.0.1:${port}/declared-big`,
      }),
    );
    expect(declared.message).toContain("larger than 1000 bytes");
  });

  it("times out, transient, at the deadline", async () => {
    const started = Date.now();
    const error = await failure(
      httpFetch(ctx(["127.0.0.1"], { deadline: Date.now() + 300 }), {
        url: `http://127.0.0.1:${port}/hang`,
      }),
    );
    expect(error.transient).toBe(true);
    expect(error.message).toContain("timed out");
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("fails transient when no time is left", async () => {
    const error = await failure(
      httpFetch(ctx(["127.0.0.1"], { deadline: Date.now() - 1 }), {
        url: `http://127.0.0.1:${port}/echo`,
      }),
    );
    expect(error.transient).toBe(true);
  });

  it("fails transient when the connection is refused", async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const closedPort = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const error = await failure(
      httpFetch(ctx(["127.0.0.1"]), { url: `http://127.0.0.1:${closedPort}/` }),
    );
    expect(error.transient).toBe(true);
    expect(error.message).toContain("ECONNREFUSED");
  });

  it("rejects malformed requests, naming the field", async () => {
    const allow = ctx(["127.0.0.1"]);
    const badUrl = await failure(httpFetch(allow, { url: "not a url" }));
    expect(badUrl.transient).toBe(false);
    expect(badUrl.message).toContain("url");
    const scheme = await failure(httpFetch(allow, { url: "file:///etc/passwd" }));
    expect(scheme.message).toContain("only http and https");
    const method = await failure(
      httpFetch(allow, { url: `http://127.0.0.1:${port}/echo`, method: "BREW" }),
    );
    expect(method.transient).toBe(false);
    expect(method.message).toContain("method");
    const headers = await failure(
      httpFetch(allow, {
        url: `http://127.0.0.1:${port}/echo`,
        headers: { "x-n": 1 } as unknown as Record<string, string>,
      }),
    );
    expect(headers.message).toContain("headers.x-n");
    const body = await failure(
      httpFetch(allow, { url: `http://127.0.0.1:${port}/echo`, body: "x" }),
    );
    expect(body.message).toContain("body");
    const missing = await failure(httpFetch(allow, {} as never));
    expect(missing.message).toContain("url");
  });
});
