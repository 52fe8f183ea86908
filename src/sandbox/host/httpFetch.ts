/**
 * The main-thread side of the `http_fetch` host function: an HTTP request to
 * one of the function's `allowed_hosts`, within the invocation's remaining
 * time, with a bounded response.
 */
import { z } from "zod";
import { errorCodeOf } from "../../errors.js";
import { HostFunctionError } from "./errors.js";

/** What the function may reach and until when. */
export interface HttpFetchContext {
  /**
   * `host` (any port) or `host:port`; `*.example.com` matches any subdomain
   * of example.com (not example.com itself). IPv6 as `[::1]` or `[::1]:8080`.
   */
  readonly allowedHosts: readonly string[];
  /** `Date.now()`-based deadline (ms) of the whole invocation. */
  readonly deadline: number;
  /** A larger response body fails the call. (Default: 1 MiB) */
  readonly maxResponseBytes?: number;
}

/** The handler's request, as it sends it (JSON). */
export interface HttpFetchRequest {
  url: string;
  /** (Default: "GET") */
  method?: string;
  headers?: Record<string, string>;
  body?: string;
}

/** The response, whatever its status: a 404 or a 503 is an answer, not a failure. */
export interface HttpFetchResponse {
  status: number;
  /** Lowercase names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  /** Decoded as UTF-8. */
  body: string;
}

/** Default of {@link HttpFetchContext.maxResponseBytes}. */
export const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;

const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;

const requestSchema = z.object({
  url: z.string().min(1),
  method: z
    .string()
    .transform((m) => m.toUpperCase())
    .pipe(z.enum(METHODS))
    .optional(),
  headers: z.record(z.string(), z.string()).optional(),
  body: z.string().optional(),
});

/**
 * Network failures worth a retry: the server was down, restarting or slow.
 * (DNS "not found" and TLS certificate errors are not: they fail every time.)
 */
const TRANSIENT_NETWORK_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  "UND_ERR_CLOSED",
]);

/**
 * Performs `request` if its host is allowed. Redirects are not followed (the
 * 3xx is returned), so a redirect cannot lead to a host that is not allowed.
 * Throws {@link HostFunctionError}: non-transient for a malformed request, a
 * host not allowed, an oversized response; transient for a timeout, a
 * refused or reset connection.
 *
 * @example
 * const res = await httpFetch(
 *   { allowedHosts: ["api.example.com"], deadline: Date.now() + 5000 },
 *   { url: "https://api.example.com/v1/items", method: "POST", body: "{}" },
 * );
 */
export async function httpFetch(
  ctx: HttpFetchContext,
  request: HttpFetchRequest,
): Promise<HttpFetchResponse> {
  const parsed = requestSchema.safeParse(request);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue?.path.join(".") || "request";
    throw new HostFunctionError(
      `http_fetch request is invalid: ${field}: ${issue?.message ?? "malformed"}`,
      false,
    );
  }
  const { url: rawUrl, headers, body } = parsed.data;
  const method = parsed.data.method ?? "GET";

  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch (error) {
    throw new HostFunctionError(
      `http_fetch request is invalid: url: "${rawUrl}" is not a URL`,
      false,
      {
        cause: error,
      },
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new HostFunctionError(
      `http_fetch request is invalid: url: only http and https are allowed, not ${url.protocol.slice(0, -1)}`,
      false,
    );
  }
  if (body !== undefined && (method === "GET" || method === "HEAD")) {
    throw new HostFunctionError(
      `http_fetch request is invalid: body: a ${method} request cannot have a body`,
      false,
    );
  }
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  if (!isAllowed(ctx.allowedHosts, url.hostname, port)) {
    throw new HostFunctionError(
      `http_fetch to ${url.host} is not allowed; add it with --allow-host (allowed_hosts is ${ctx.allowedHosts.length ? ctx.allowedHosts.join(", ") : "empty"}; on deploy --update, --allow-host replaces the list: give every host)`,
      false,
    );
  }

  const remaining = Math.floor(ctx.deadline - Date.now());
  if (remaining <= 0) {
    throw new HostFunctionError(
      `http_fetch to ${url.host} failed: no time left before the invocation's deadline`,
      true,
    );
  }
  // One signal for connecting, the headers and the body: the call ends by
  // the invocation's deadline whatever the server does.
  const signal = AbortSignal.timeout(remaining);
  const maxBytes = ctx.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  try {
    const response = await fetch(url, {
      method,
      headers,
      body,
      redirect: "manual",
      signal,
    });
    const text = await readCapped(response, maxBytes, url.host);
    const responseHeaders: Record<string, string> = {};
    response.headers.forEach((value, name) => {
      responseHeaders[name] = value;
    });
    return { status: response.status, headers: responseHeaders, body: text };
  } catch (error) {
    throw error instanceof HostFunctionError ? error : classify(error, url.host, signal);
  }
}

/** Whether `host:port` matches one of the allow entries. */
function isAllowed(allowedHosts: readonly string[], hostname: string, port: string): boolean {
  const host = hostname.toLowerCase();
  return allowedHosts.some((entry) => {
    const allowed = parseEntry(entry);
    if (!allowed) return false;
    if (allowed.port !== undefined && allowed.port !== port) return false;
    if (allowed.host.startsWith("*.")) {
      // "*.example.com" matches "a.example.com" and "a.b.example.com".
      return host.endsWith(allowed.host.slice(1)) && host.length > allowed.host.length - 1;
    }
    return host === allowed.host;
  });
}

/** `host`, `host:port`, `[v6]`, `[v6]:port`, lowercased; undefined when malformed. */
function parseEntry(entry: string): { host: string; port?: string } | undefined {
  const trimmed = entry.trim().toLowerCase();
  const v6 = /^(\[[0-9a-f:.]+\])(?::(\d+))?$/.exec(trimmed);
  if (v6) return { host: v6[1]!, port: v6[2] };
  const match = /^([^:/\s]+)(?::(\d+))?$/.exec(trimmed);
  if (!match) return undefined;
  return { host: match[1]!, port: match[2] };
}

/** The body as UTF-8 text; stops reading and fails once it exceeds `maxBytes`. */
async function readCapped(response: Response, maxBytes: number, host: string): Promise<string> {
  if (!response.body) return "";
  const declared = Number(response.headers.get("content-length"));
  if (Number.isFinite(declared) && declared > maxBytes) {
    await response.body.cancel();
    throw tooLarge(host, maxBytes);
  }
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel();
      throw tooLarge(host, maxBytes);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function tooLarge(host: string, maxBytes: number): HostFunctionError {
  return new HostFunctionError(
    `http_fetch to ${host} failed: the response is larger than ${maxBytes} bytes`,
    false,
  );
}

/** A fetch failure as a HostFunctionError: timeouts and dropped connections are transient. */
function classify(error: unknown, host: string, signal: AbortSignal): HostFunctionError {
  if (signal.aborted) {
    return new HostFunctionError(
      `http_fetch to ${host} timed out: no answer before the invocation's deadline`,
      true,
      { cause: error },
    );
  }
  // fetch rejects with TypeError("fetch failed") and the system error as cause.
  const cause = (error as { cause?: unknown } | null)?.cause;
  const code = errorCodeOf(cause) ?? errorCodeOf(error);
  const detail = cause instanceof Error ? cause.message : (error as Error).message;
  const transient = code !== undefined && TRANSIENT_NETWORK_CODES.has(code);
  return new HostFunctionError(
    `http_fetch to ${host} failed: ${detail}${code && !detail.includes(code) ? ` (${code})` : ""}`,
    transient,
    { cause: error },
  );
}
