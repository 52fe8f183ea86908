// http_fetch from a real handler: allowed hosts only, failures recorded.
import { createServer, type Server } from "node:http";
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Daemon } from "../src/daemon.js";
import { createDb } from "../src/db/database.js";
import { deployFunction } from "../src/deploy.js";
import { enqueueManual, exampleWasm, finishedRun } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("http");
let daemon: Daemon;
let server: Server;
let base: string;

beforeAll(async () => {
  server = createServer((req, res) => {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ path: req.url, method: req.method }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  base = `http://127.0.0.1:${port}`;
  const wasm = await readFile(exampleWasm("fetch"));
  const db = createDb(t.pool);
  await deployFunction(db, { name: "fetcher", wasm, allowedHosts: [`127.0.0.1:${port}`] });
  await deployFunction(db, { name: "nofetch", wasm });
  daemon = await t.startDaemon();
});
afterAll(async () => {
  await daemon?.stop();
  await new Promise((resolve) => server?.close(resolve));
});

const run = async (fn: string, request: unknown) =>
  finishedRun(t.pool, await enqueueManual(t.pool, fn, request));

it("fetches from an allowed host", async () => {
  const r = await run("fetcher", { url: `${base}/hello?x=1`, method: "GET" });
  expect(r.status).toBe("succeeded");
  expect(r.result.ok).toBe(true);
  expect(r.result.value.status).toBe(200);
  expect(JSON.parse(r.result.value.body)).toEqual({ path: "/hello?x=1", method: "GET" });
});

it("refuses a host that is not allowed: HOST_FUNCTION_ERROR naming the fix", async () => {
  const r = await run("nofetch", { url: `${base}/nope` });
  expect(r).toMatchObject({
    status: "failed",
    error_code: "HOST_FUNCTION_ERROR",
    http_status: 500,
  });
  expect(r.error_message).toMatch(
    /^http_fetch to 127.0.0.1:\d+ is not allowed; add it with --allow-host/,
  );
});
