/**
 * The package's public entry (`import ... from "pgfn"`): the types of what a
 * handler receives, and pgfn from code: `run()` starts a daemon inside your
 * application, `makeUtils()` migrates, deploys and invokes. Everything else
 * in dist/ is internal and may change without notice.
 */
export type {
  ErrorHandlerEvent,
  Event,
  EventBase,
  HttpEvent,
  ManualEvent,
  Operation,
  RowEvent,
  RunStatus,
  ScheduleEvent,
} from "./interfaces.js";
export type {
  Context,
  FetchInit,
  FetchResponse,
  Handler,
  HandlerEvent,
  LogFields,
  QueryResult,
} from "./handler.js";
export { run, type RunOptions, type Runner } from "./run.js";
export { makeUtils, type DeployOptions, type Utils, type UtilsOptions } from "./makeUtils.js";
export type { DeployResult } from "./db/functions.js";
export type { Run } from "./db/runs.js";
export type { MigrationResult } from "./migrate.js";
export { PgfnError, type ErrorCode } from "./errors.js";
