/**
 * `makeUtils()`: migrate, deploy and invoke from code, in the manner of
 * graphile-worker's `makeWorkerUtils()`. The same modules as the CLI's
 * `pgfn migrate`, `pgfn deploy` and `pgfn invoke`.
 */
import type { Logger } from "pino";
import { loadConfigFor } from "./config.js";
import { startInvoker, type Daemon } from "./daemon.js";
import { createDb } from "./db/database.js";
import type { DeployResult } from "./db/functions.js";
import { createPool, ping } from "./db/pool.js";
import type { Run } from "./db/runs.js";
import { deployFunction } from "./deploy.js";
import { PgfnError } from "./errors.js";
import type { DeploySettings } from "./functionColumns.js";
import { invokeNow } from "./invokeNow.js";
import { silentLogger } from "./logger.js";
import { migrate, type MigrationResult } from "./migrate.js";
import { isJavaScriptFile, JAVASCRIPT_EXTENSIONS } from "./sandbox/jsCompile.js";

export interface UtilsOptions {
  /** The database pgfn is (or is to be) installed in (a postgres:// URL). */
  readonly connectionString: string;
  /**
   * Settings by their environment variable names (README "Configuration"),
   * for `invoke`'s sandbox and db_query. DATABASE_URL is not read.
   * (Default: process.env)
   */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** A pino logger. (Default: none; failures are thrown) */
  readonly logger?: Logger;
}

/** The settings of `deploy`, as `pgfn deploy`'s flags in camelCase (`timeoutMs`, `env`, ...). */
export interface DeployOptions extends DeploySettings {
  /**
   * Replace the function if it exists; without it, an existing name is a
   * PgfnError with code CONFLICT. (Default: false)
   */
  readonly update?: boolean;
}

export interface Utils {
  /** Installs or upgrades the pgfn and graphile_worker schemas; safe concurrently. */
  migrate(): Promise<MigrationResult>;
  /**
   * Validates a handler and its settings, then stores it as function
   * `name`. Nothing is stored on error. The handler is an Extism module's
   * bytes (exporting `handle`), or a TypeScript/JavaScript handler's text
   * with the file name that says which (`.ts`, `.mts`, `.js`, `.mjs`), as
   * `pgfn deploy` reads it from a file.
   */
  deploy(
    name: string,
    handler: Uint8Array | { readonly source: string; readonly fileName: string },
    settings?: DeployOptions,
  ): Promise<DeployResult>;
  /**
   * Runs function `name` once, now, in this process, with a `"manual"` event
   * carrying `payload`, and returns the recorded run, failed or not. The
   * first call starts a sandbox thread, kept until `release()`.
   */
  invoke(name: string, payload?: unknown): Promise<Run>;
  /** Closes every connection and the sandbox. Call it when done. */
  release(): Promise<void>;
}

/**
 * Connects (and checks the connection) and returns the utilities.
 *
 * @example
 * const utils = await makeUtils({ connectionString: process.env.DATABASE_URL! });
 * try {
 *   await utils.migrate();
 *   await utils.deploy("greet", await readFile("greet.wasm"), { update: true, timeoutMs: 5000 });
 *   const run = await utils.invoke("greet", { name: "Ada" });
 *   console.log(run.status, run.result);
 * } finally {
 *   await utils.release();
 * }
 */
export async function makeUtils(options: UtilsOptions): Promise<Utils> {
  const config = loadConfigFor(options.connectionString, options.env);
  const logger = options.logger ?? silentLogger();
  const pool = createPool(options.connectionString, 2, logger);
  try {
    await ping(pool);
  } catch (error) {
    await pool.end().catch(() => undefined);
    throw error;
  }
  const db = createDb(pool);
  let invoker: Promise<Daemon> | undefined;
  let released: Promise<void> | undefined;
  return {
    migrate: () => migrate(pool),
    async deploy(name, handler, settings = {}) {
      if (
        !(handler instanceof Uint8Array) &&
        (typeof handler?.source !== "string" ||
          typeof handler.fileName !== "string" ||
          !isJavaScriptFile(handler.fileName))
      ) {
        throw new PgfnError(
          "INVALID_REQUEST",
          `deploy takes a module's bytes (a Uint8Array) or { source, fileName } with fileName ending ${JAVASCRIPT_EXTENSIONS.join(", ")}.`,
        );
      }
      return deployFunction(db, {
        ...settings,
        name,
        ...(handler instanceof Uint8Array
          ? { wasm: handler }
          : { source: handler.source, fileName: handler.fileName }),
        update: settings.update ?? false,
      });
    },
    async invoke(name, payload = {}) {
      if (!invoker) {
        const starting = startInvoker({
          connectionString: options.connectionString,
          config,
          logger,
        });
        invoker = starting;
        // A failed start is not kept: the next call tries again (e.g. after migrate()).
        starting.catch(() => {
          if (invoker === starting) invoker = undefined;
        });
      }
      return invokeNow((await invoker).executor, name, payload);
    },
    release() {
      released ??= (async () => {
        const daemon = await invoker?.catch(() => undefined);
        await daemon?.stop();
        await pool.end();
      })();
      return released;
    },
  };
}
