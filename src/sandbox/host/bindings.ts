/**
 * The host functions one run may call, bound to its function's settings and
 * deadline: what the sandbox's pgfn_db_query and pgfn_http_fetch reach.
 */
import { z } from "zod";
import type { FunctionInfo } from "../../db/functions.js";
import type { HostBinding } from "../pool.js";
import type { DbQueryExecutor } from "./dbQuery.js";
import { HostFunctionError } from "./errors.js";
import { httpFetch, type HttpFetchRequest } from "./httpFetch.js";

const dbQueryArgs = z.object({ sql: z.string().min(1), params: z.array(z.unknown()).default([]) });

export interface HostBindingsOptions {
  readonly dbQuery: DbQueryExecutor;
  /** Claims of an HTTP caller, for row-level security. (Default: none) */
  readonly claims?: Record<string, unknown> | null;
}

export function hostBindings(
  options: HostBindingsOptions,
  fn: FunctionInfo,
  deadline: number,
): Record<string, HostBinding> {
  return {
    db_query: async (payload) => {
      const args = dbQueryArgs.safeParse(payload);
      if (!args.success) {
        throw new HostFunctionError(
          `db_query takes {"sql": "...", "params": [...]}: ${args.error.issues.map((i) => `${i.path.join(".") || "argument"} ${i.message}`).join("; ")}`,
          false,
        );
      }
      return options.dbQuery.query(
        { role: fn.db_role, fn: fn.name, deadline, claims: options.claims ?? null },
        args.data.sql,
        args.data.params,
      );
    },
    http_fetch: (payload) =>
      httpFetch({ allowedHosts: fn.allowed_hosts, deadline }, payload as HttpFetchRequest),
  };
}
