// Helpers for the HTTP tests: a daemon with its HTTP API on a free port,
// requests with a token, example modules as base64.
import { readFile } from "node:fs/promises";
import { Writable } from "node:stream";
import type { Config } from "../src/config.js";
import type { Daemon } from "../src/daemon.js";
import { createLogger, silentLogger, type Logger } from "../src/logger.js";
import { exampleWasm, startTestDaemon } from "./helpers.js";

export const ADMIN_TOKEN = "admin-token-0123456789abcdef";
export const INVOKE_TOKEN = "invoke-token-0123456789abcdef";

/** A daemon as tests want it, serving HTTP on 127.0.0.1 at a port the OS picks. */
export function startHttpDaemon(
  url: string,
  overrides: Partial<Config> = {},
  logger: Logger = silentLogger(),
): Promise<Daemon> {
  return startTestDaemon(
    url,
    {
      workerConcurrency: 2,
      sandboxThreads: 2,
      adminToken: ADMIN_TOKEN,
      invokeTokens: [INVOKE_TOKEN],
      ...overrides,
    },
    logger,
    { http: { port: 0, host: "127.0.0.1" } },
  );
}

/** The daemon's base URL; throws if it has no HTTP server. */
export function baseUrl(daemon: Daemon): string {
  if (!daemon.http) throw new Error("this daemon serves no HTTP");
  return daemon.http.url;
}

export interface ApiResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly body: unknown;
  readonly text: string;
}

/** One request; `token` null sends no Authorization header. JSON bodies are encoded here. */
export async function api(
  daemon: Daemon,
  method: string,
  path: string,
  options: { token?: string | null; json?: unknown; body?: string; contentType?: string } = {},
): Promise<ApiResponse> {
  const headers: Record<string, string> = {};
  const token = options.token === undefined ? ADMIN_TOKEN : options.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  let body: string | undefined = options.body;
  if (options.json !== undefined) body = JSON.stringify(options.json);
  if (body !== undefined) headers["content-type"] = options.contentType ?? "application/json";
  const response = await fetch(`${baseUrl(daemon)}${path}`, { method, headers, body });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON (metrics): the text is the body.
  }
  return { status: response.status, headers: response.headers, body: parsed, text };
}

/** examples/NAME/NAME.wasm as base64, for a deploy body. */
export async function wasmBase64(name: string): Promise<string> {
  return (await readFile(exampleWasm(name))).toString("base64");
}

/** A logger writing JSON lines into an array, to inspect what was logged. */
export function capturingLogger(level = "debug"): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      callback();
    },
  });
  return { logger: createLogger({ level, destination }), lines };
}
