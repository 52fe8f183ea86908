/**
 * Readiness: may this daemon be sent traffic, and is it doing its work? The
 * database answers, the schema is the one this version expects, and each
 * part this daemon runs is working: the listener is connected, the worker's
 * runner is running (not being replaced), the scheduler's last tick went
 * through. Liveness (/healthz) is only "the process answers".
 *
 * /readyz needs no token, so a check says what is wrong in a few fixed
 * words; the error behind it (server addresses, role names, SQL) goes to
 * the log, once per change.
 */
import type pg from "pg";
import type { Logger } from "pino";
import { ping } from "../db/pool.js";
import { coerceError } from "../errors.js";
import type { Listener } from "../listener/listener.js";
import { pendingMigrations } from "../migrate.js";
import type { WorkerState } from "../worker/worker.js";

/** A check that takes longer than this has failed: a readiness probe must answer. (2000 ms) */
export const READINESS_CHECK_TIMEOUT_MS = 2000;

export type ReadinessCheck = "database" | "migrations" | "listener" | "worker" | "scheduler";

export interface Readiness {
  readonly ready: boolean;
  /** "ok", "disabled", or what is wrong in a few words, per check. */
  readonly checks: Readonly<Record<ReadinessCheck, string>>;
}

export interface ReadinessOptions {
  readonly pool: pg.Pool;
  /** Undefined when this daemon runs no listener (`--no-listener`). */
  readonly listener: Pick<Listener, "connected"> | undefined;
  /** Undefined when this daemon runs no worker (`--no-worker`). */
  readonly worker?: { readonly state: WorkerState } | undefined;
  /** Undefined when this daemon runs no scheduler (`--no-scheduler`). */
  readonly scheduler?: { readonly failing: boolean } | undefined;
  /** Where the errors behind a failed check go. (Default: nowhere) */
  readonly logger?: Logger;
}

export const UNREACHABLE = "unreachable";
const TIMED_OUT = `no answer within ${READINESS_CHECK_TIMEOUT_MS} ms`;

/** The check's outcome, or the safe word for its failure; the error itself is handed to `onError`. */
async function withTimeout(
  check: () => Promise<string>,
  failed: string,
  onError: (error: Error) => void,
): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), READINESS_CHECK_TIMEOUT_MS);
  });
  try {
    return await Promise.race([
      check().catch((error: unknown) => {
        onError(coerceError(error));
        return failed;
      }),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The last error logged per check and logger: a probe every few seconds logs a change, not a stream. */
const lastLogged = new WeakMap<Logger, Map<ReadinessCheck, string>>();

function logOnce(logger: Logger | undefined, check: ReadinessCheck, error: Error | undefined) {
  if (!logger) return;
  let seen = lastLogged.get(logger);
  if (!seen) lastLogged.set(logger, (seen = new Map()));
  const message = error?.message;
  if (seen.get(check) === message) return;
  if (message === undefined) seen.delete(check);
  else {
    seen.set(check, message);
    logger.warn(
      { operation: "readiness", check, error: message },
      `readiness check "${check}" failed`,
    );
  }
}

export async function checkReadiness(options: ReadinessOptions): Promise<Readiness> {
  const errors = new Map<ReadinessCheck, Error>();
  const [database, migrations] = await Promise.all([
    withTimeout(
      async () => {
        await ping(options.pool);
        return "ok";
      },
      UNREACHABLE,
      (error) => errors.set("database", error),
    ),
    withTimeout(
      async () => {
        const pending = await pendingMigrations(options.pool);
        // Names of files pgfn ships, nothing about this server.
        return pending.length === 0
          ? "ok"
          : `${pending.length} migration(s) pending (${pending.join(", ")}); run \`pgfn migrate\``;
      },
      "not checked (database unreachable)",
      (error) => errors.set("migrations", error),
    ),
  ]);
  for (const check of ["database", "migrations"] as const) {
    logOnce(options.logger, check, errors.get(check));
  }
  const listener =
    options.listener === undefined
      ? "disabled"
      : options.listener.connected
        ? "ok"
        : "not connected (reconnecting)";
  const worker =
    options.worker === undefined
      ? "disabled"
      : options.worker.state === "running"
        ? "ok"
        : options.worker.state === "restarting"
          ? "restarting (its job runner stopped; see the log)"
          : "stopped";
  const scheduler =
    options.scheduler === undefined
      ? "disabled"
      : options.scheduler.failing
        ? "retrying (its last tick failed; see the log)"
        : "ok";
  const checks = { database, migrations, listener, worker, scheduler };
  return {
    ready: Object.values(checks).every((v) => v === "ok" || v === "disabled"),
    checks,
  };
}
