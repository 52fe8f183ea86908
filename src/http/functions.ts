/**
 * The functions API (docs/design.md section 5), under /functions/v1: deploy,
 * list, read, change, delete, invoke synchronously, list runs. Each route says
 * which token it needs (`config.scope`, checked in server.ts before the body
 * is read).
 */
import type { FastifyPluginAsync } from "fastify";
import type { ZodTypeProvider } from "fastify-type-provider-zod";
import type { Db } from "../db/database.js";
import {
  deleteFunction,
  getFunction,
  getSource,
  listFunctions,
  RECENT_RUNS,
} from "../db/functions.js";
import { listRuns } from "../db/runs.js";
import {
  assertFunctionName,
  deployFunction,
  MAX_WASM_BYTES,
  patchFunction,
  type DeployOptions,
} from "../deploy.js";
import { PgfnError, type ErrorCode } from "../errors.js";
import { HTTP_NAMES, settingsByName } from "../functionColumns.js";
import { invokeNow } from "../invokeNow.js";
import type { ExecutorDeps } from "../worker/execute.js";
import type { Scope } from "./auth.js";
import { errorBody } from "./errors.js";
import {
  DeleteResponse,
  DeployBody,
  DeployResponse,
  errors,
  FunctionList,
  FunctionView,
  NameParams,
  PatchBody,
  RunsQuery,
  RunsResponse,
} from "./schemas.js";
import { functionListItem, functionView, runView } from "./views.js";

/** A 10 MiB module as base64 (4 characters per 3 bytes), plus room for the settings. */
export const DEPLOY_BODY_LIMIT = Math.ceil(MAX_WASM_BYTES / 3) * 4 + 1024 * 1024;
/** An invocation's JSON payload. (1 MiB) */
export const INVOKE_BODY_LIMIT = 1024 * 1024;

declare module "fastify" {
  interface FastifyContextConfig {
    /** The token a route needs (auth.ts). */
    scope?: Scope;
  }
  interface FastifyRequest {
    /** What the request's token grants (server.ts); `public` without one. */
    granted: Scope;
  }
}

export interface FunctionsRoutesOptions {
  readonly db: Db;
  readonly executor: ExecutorDeps;
  /** Whether deploy and PATCH judge db_role here (`checksDbRole`). (Default: true) */
  readonly checkDbRole?: boolean;
}

const iso = (d: Date) => d.toISOString();

function notFound(name: string): PgfnError {
  return new PgfnError(
    "FUNCTION_NOT_FOUND",
    `Function "${name}" is not deployed (POST /functions/v1/deploy).`,
  );
}

export const functionsRoutes: FastifyPluginAsync<FunctionsRoutesOptions> = async (
  fastify,
  options,
) => {
  const app = fastify.withTypeProvider<ZodTypeProvider>();
  const { db, executor } = options;
  const deployOptions: DeployOptions = {
    names: HTTP_NAMES,
    checkDbRole: options.checkDbRole ?? true,
  };

  app.post(
    "/deploy",
    {
      config: { scope: "admin" },
      bodyLimit: DEPLOY_BODY_LIMIT,
      schema: {
        summary: "Deploy a function (201), or replace it with update: true (200).",
        body: DeployBody,
        response: {
          200: DeployResponse,
          201: DeployResponse,
          ...errors(400, 401, 403, 409, 413, 415),
        },
      },
    },
    async (request, reply) => {
      const b = request.body;
      if ((b.wasm === undefined) === (b.source === undefined)) {
        throw new PgfnError(
          "INVALID_REQUEST",
          "Give the function's code in exactly one of wasm (an Extism module, base64) and source (a TypeScript or JavaScript handler).",
        );
      }
      const code =
        b.source !== undefined
          ? { source: b.source, fileName: b.file_name ?? "handler.ts" }
          : { wasm: Buffer.from(b.wasm!, "base64") };
      const result = await deployFunction(
        db,
        { ...settingsByName(b), name: b.name, ...code, update: b.update ?? false },
        deployOptions,
      );
      return reply.code(result.created ? 201 : 200).send({
        name: result.name,
        hash: result.wasmSha256,
        created: result.created,
        created_at: iso(result.createdAt),
        updated_at: iso(result.updatedAt),
      });
    },
  );

  app.get(
    "/",
    {
      config: { scope: "admin" },
      schema: {
        summary:
          "Every function, by name: its settings, runtime, schedule and how its recent runs went.",
        description: `recent_runs counts the function's latest ${RECENT_RUNS} finished runs (attempts); error_rate is the share of them that failed or were abandoned, null when there are none.`,
        response: { 200: FunctionList, ...errors(401, 403) },
      },
    },
    async () => ({ functions: (await listFunctions(db)).map(functionListItem) }),
  );

  app.get(
    "/:name",
    {
      config: { scope: "admin" },
      schema: {
        summary:
          "A function's settings and last run, and a js function's source (not a wasm module).",
        params: NameParams,
        response: { 200: FunctionView, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      assertFunctionName(request.params.name);
      const fn = await getFunction(db, request.params.name);
      if (!fn) throw notFound(request.params.name);
      // Read apart from the settings (up to 10 MB): only a js function has one.
      const source = fn.runtime === "js" ? await getSource(db, fn.name) : null;
      return { ...functionView(fn), source: source ?? null };
    },
  );

  app.patch(
    "/:name",
    {
      config: { scope: "admin" },
      schema: {
        summary: "Change settings (not the module: deploy with update: true for that).",
        description:
          "Settings left out keep their values. env merges into the stored env: the keys given are set, the others kept; unset_env removes keys, replace_env: true makes env exactly the env given (none: empty).",
        params: NameParams,
        body: PatchBody,
        response: { 200: FunctionView, ...errors(400, 401, 403, 404, 415) },
      },
    },
    async (request) => {
      const { name } = request.params;
      assertFunctionName(name);
      const changed = await patchFunction(db, name, settingsByName(request.body), deployOptions);
      if (!changed) throw notFound(name);
      return functionView(changed.fn);
    },
  );

  app.delete(
    "/:name",
    {
      config: { scope: "admin" },
      schema: {
        summary: "Delete a function. Its events and runs stay; new events for it fail as 404.",
        params: NameParams,
        response: { 200: DeleteResponse, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { name } = request.params;
      assertFunctionName(name);
      const deleted = await deleteFunction(db, name);
      if (!deleted) throw notFound(name);
      return {
        name,
        deleted: true as const,
        schedule: deleted.schedule,
        error_handler_of: deleted.errorHandlerOf,
      };
    },
  );

  app.get(
    "/:name/runs",
    {
      config: { scope: "admin" },
      schema: {
        summary: "A function's runs (one per attempt), newest first, a page at a time.",
        params: NameParams,
        querystring: RunsQuery,
        response: { 200: RunsResponse, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { name } = request.params;
      assertFunctionName(name);
      if (!(await getFunction(db, name))) throw notFound(name);
      const { limit, before } = request.query;
      // One more than asked: whether there is a next page, without a count.
      const runs = await listRuns(db, {
        functionName: name,
        limit: limit + 1,
        ...(before !== undefined && { before: String(before) }),
      });
      const page = runs.slice(0, limit);
      return {
        runs: page.map(runView),
        next_before: runs.length > limit ? Number(page[page.length - 1]!.id) : null,
      };
    },
  );

  app.post(
    "/invoke/:name",
    {
      config: { scope: "invoke" },
      bodyLimit: INVOKE_BODY_LIMIT,
      schema: {
        summary:
          "Run a function now with the JSON body as its payload; the handler's result is the response.",
        description:
          "The handler receives {trigger: 'http', payload: <body>, ...}. Its JSON output is the 200 body. Failures answer with the failure model's status: 500 FUNCTION_ERROR / HOST_FUNCTION_ERROR, 504 TIMEOUT, 507 MEMORY_EXCEEDED, 429 CONCURRENCY_LIMIT. The run is recorded in pgfn.function_runs either way (headers x-pgfn-run-id, x-pgfn-event-id); a failure's message is the run's own for PGFN_ADMIN_TOKEN, and a generic one naming the run for an invoke token. A body containing \\u0000 or a lone surrogate (\\ud800) is a 400: Postgres jsonb cannot store it.",
        params: NameParams,
        response: errors(400, 401, 403, 404, 413, 415, 429, 500, 503, 504, 507),
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      const run = await invokeNow(executor, name, request.body ?? null, "http");
      void reply.header("x-pgfn-run-id", run.id).header("x-pgfn-event-id", run.event_id);
      if (run.status === "succeeded") {
        // Serialized here, since a handler may answer with any JSON, a bare
        // string included; fastify sends a string typed JSON as it is. (The
        // cast: the route's typed replies are its error bodies.)
        return reply
          .code(200)
          .type("application/json; charset=utf-8")
          .send(JSON.stringify(run.result ?? null) as never);
      }
      const code = run.error_code ?? "INTERNAL";
      const message =
        request.granted === "admin"
          ? (run.error_message ?? `Run ${run.id} failed.`)
          : invokerMessage(code, name, run.id);
      return reply.code(run.http_status ?? 500).send({
        ...errorBody(code, message),
        run_id: Number(run.id),
      });
    },
  );
};

/**
 * What a holder of an invoke token is told about a failed run. The run's own
 * message is for the function's owner: a database error names tables and
 * columns, a failed fetch an internal address, a handler prints what it
 * likes. It stays in pgfn.function_runs, where PGFN_ADMIN_TOKEN reads it.
 */
function invokerMessage(code: ErrorCode, name: string, runId: string): string {
  const what: Partial<Record<ErrorCode, string>> = {
    FUNCTION_ERROR: "The function failed.",
    HOST_FUNCTION_ERROR: "A call the function made (db_query or http_fetch) failed.",
    TIMEOUT: "The function ran past its time limit and was stopped.",
    MEMORY_EXCEEDED: "The function went past its memory limit and was stopped.",
    INTERNAL: "pgfn could not finish the run.",
  };
  return `${what[code] ?? "The run failed."} Run ${runId} in pgfn.function_runs has the details; PGFN_ADMIN_TOKEN can read them at GET /functions/v1/${name}/runs.`;
}
