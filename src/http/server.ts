/**
 * The HTTP server of `pgfn start`: the functions API, /metrics, /healthz,
 * /readyz and the OpenAPI document. Built on fastify: body limits per route,
 * request and header timeouts, a close() that lets requests in flight finish,
 * and zod schemas for validation and the OpenAPI document alike.
 */
import fastify, { LogController, type FastifyError } from "fastify";
import fastifySwagger from "@fastify/swagger";
import {
  hasZodFastifySchemaValidationErrors,
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  serializerCompiler,
  validatorCompiler,
} from "fastify-type-provider-zod";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { Db } from "../db/database.js";
import { coerceError, PgfnError, type ErrorCode } from "../errors.js";
import type { ExecutorDeps } from "../worker/execute.js";
import { createAuthenticator, type AuthOptions } from "./auth.js";
import { errorBody, fromFastifyError, HTTP_STATUS } from "./errors.js";
import { functionsRoutes, INVOKE_BODY_LIMIT } from "./functions.js";
import type { Readiness } from "./health.js";

/** Time a client has to send its request headers. (Default: 10000) */
export const HEADERS_TIMEOUT_MS = 10_000;
/** Time a client has to send its whole request, body included: a slow upload cannot hold a socket for ever. (Default: 60000) */
export const REQUEST_TIMEOUT_MS = 60_000;
/**
 * A socket silent this long is closed. Above the longest allowed function
 * timeout (300 s): a synchronous invoke keeps its socket silent while it runs.
 */
const SOCKET_TIMEOUT_MS = 310_000;

export interface HttpServerOptions {
  /** The port; 0 picks a free one (tests). Disabling HTTP is the caller's business. */
  readonly port: number;
  /** (Default: "0.0.0.0", so that a container's port mapping reaches it) */
  readonly host?: string;
  readonly db: Db;
  readonly executor: ExecutorDeps;
  /** Whether deploy and PATCH judge db_role here (deploy.ts, `checksDbRole`). (Default: true) */
  readonly checkDbRole?: boolean;
  readonly auth: AuthOptions;
  readonly metrics: Registry;
  readonly readiness: () => Promise<Readiness>;
  readonly logger: Logger;
  /** (Default: HEADERS_TIMEOUT_MS) */
  readonly headersTimeoutMs?: number;
  /** (Default: REQUEST_TIMEOUT_MS) */
  readonly requestTimeoutMs?: number;
}

export interface HttpServer {
  /** Where it listens, e.g. http://127.0.0.1:7780 */
  readonly url: string;
  readonly port: number;
  /** Stops accepting, lets requests in flight (synchronous invokes) finish, then closes. */
  close(): Promise<void>;
}

/** The fastify app, not listening: for starting it, and for reading its routes. */
export async function buildApp(options: HttpServerOptions) {
  const { logger } = options;
  const requestTimeout = options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const headersTimeout = options.headersTimeoutMs ?? HEADERS_TIMEOUT_MS;
  const app = fastify({
    loggerInstance: logger,
    // One line per request is written below, in our field names.
    logController: new LogController({
      disableRequestLogging: true,
      requestIdLogLabel: "request_id",
    }),
    bodyLimit: INVOKE_BODY_LIMIT,
    requestTimeout,
    connectionTimeout: SOCKET_TIMEOUT_MS,
    // Node checks header and request deadlines on this interval (30 s by
    // default), so a short deadline needs a check at least as often.
    http: {
      headersTimeout,
      connectionsCheckingInterval: Math.min(1000, headersTimeout, requestTimeout),
    },
    // On close, idle keep-alive sockets go at once; busy ones finish their request.
    forceCloseConnections: "idle",
    return503OnClosing: true,
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  // Invoke payloads are JSON; a text/plain body is a client mistake, not a string payload.
  app.removeContentTypeParser("text/plain");

  const auth = createAuthenticator(options.auth);
  if (!options.auth.adminToken) {
    logger.warn(
      { operation: "http" },
      options.auth.invokeTokens.length > 0
        ? "PGFN_ADMIN_TOKEN is not set: the HTTP API refuses deploy and manage requests; only PGFN_INVOKE_TOKENS can invoke"
        : "PGFN_ADMIN_TOKEN is not set: the HTTP API refuses every /functions/v1 request",
    );
  }
  // Before the body is read: an unauthenticated client cannot make us parse 14 MB.
  app.decorateRequest("granted", "public");
  app.addHook("onRequest", async (request) => {
    const scope = request.routeOptions.config.scope;
    if (scope) request.granted = auth.check(request.headers.authorization, scope);
  });
  // A request in flight when close() starts (a synchronous invoke) would
  // leave its keep-alive socket open afterwards, and close() waits for every
  // socket: its response says the connection ends.
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
  });
  app.addHook("onSend", async (_request, reply, payload) => {
    if (closing) void reply.header("connection", "close");
    return payload;
  });
  app.addHook("onResponse", async (request, reply) => {
    const line = {
      operation: "http",
      method: request.method,
      route: request.routeOptions.url ?? request.url,
      status: reply.statusCode,
      duration_ms: Math.round(reply.elapsedTime * 10) / 10,
      request_id: request.id,
    };
    // Probes and scrapes every few seconds are noise at info level.
    if (request.routeOptions.config.scope === undefined && reply.statusCode < 400) {
      logger.debug(line, "request");
    } else {
      logger.info(line, "request");
    }
  });

  app.setErrorHandler((caught: FastifyError | Error, request, reply) => {
    let code: ErrorCode;
    let message: string;
    if (caught instanceof PgfnError) {
      ({ code, message } = caught);
    } else if (hasZodFastifySchemaValidationErrors(caught)) {
      code = "INVALID_REQUEST";
      message = `Invalid request: ${caught.message}.`;
    } else {
      const error = fromFastifyError(caught as FastifyError) ?? coerceError(caught);
      ({ code, message } = error);
    }
    if (code === "INTERNAL") {
      // Our fault or the database's: the details are for the log, not the client.
      logger.error(
        { operation: "http", request_id: request.id, error: (caught as Error).message },
        "request failed",
      );
      message = `pgfn could not handle the request (request ${request.id}); see the daemon's log.`;
    }
    return reply.code(HTTP_STATUS[code]).send(errorBody(code, message));
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .code(HTTP_STATUS.NOT_FOUND)
      .send(errorBody("NOT_FOUND", `No route ${request.method} ${request.url.split("?")[0]}.`)),
  );

  await app.register(fastifySwagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "pgfn",
        version: "1",
        description:
          "Deploy and invoke pgfn functions. Bearer tokens: PGFN_ADMIN_TOKEN for everything, PGFN_INVOKE_TOKENS for invoke only.",
      },
      components: {
        securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject,
  });

  app.get("/healthz", async () => ({ status: "ok" }));
  app.get("/readyz", async (_request, reply) => {
    const readiness = await options.readiness();
    return reply
      .code(readiness.ready ? 200 : 503)
      .send({ status: readiness.ready ? "ok" : "unavailable", checks: readiness.checks });
  });
  app.get("/metrics", async (_request, reply) => {
    const text = await options.metrics.metrics();
    return reply.type(options.metrics.contentType).send(text);
  });
  await app.register(
    async (api) => {
      api.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
      await api.register(functionsRoutes, {
        db: options.db,
        executor: options.executor,
        ...(options.checkDbRole !== undefined && { checkDbRole: options.checkDbRole }),
      });
    },
    { prefix: "/functions/v1" },
  );
  return app;
}

export async function startHttpServer(options: HttpServerOptions): Promise<HttpServer> {
  const app = await buildApp(options);
  const host = options.host ?? "0.0.0.0";
  try {
    await app.listen({ port: options.port, host });
  } catch (error) {
    await app.close().catch(() => undefined);
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE" || code === "EACCES" || code === "EADDRNOTAVAIL") {
      throw new PgfnError(
        "INVALID_REQUEST",
        `The HTTP API cannot listen on ${host}:${options.port} (${code}). Set PGFN_HTTP_PORT to a free port (0 disables HTTP) or PGFN_HTTP_HOST to an address of this machine.`,
        { cause: error },
      );
    }
    throw error;
  }
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  // A wildcard address is not one to connect to; loopback reaches it.
  const reachable = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;
  const url = `http://${reachable.includes(":") ? `[${reachable}]` : reachable}:${port}`;
  options.logger.info({ operation: "http", url }, "HTTP API listening");
  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    close() {
      closing ??= app.close();
      return closing;
    },
  };
}
