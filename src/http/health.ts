/**
 * Readiness: may this daemon be sent traffic? The database answers, the
 * listener is connected (when this daemon runs one) and the schema is the
 * one this version expects. Liveness (/healthz) is only "the process answers".
 */
import type pg from "pg";
import type { Listener } from "../listener/listener.js";
import { pendingMigrations } from "../migrate.js";

/** A check that takes longer than this has failed: a readiness probe must answer. (2000 ms) */
export const READINESS_CHECK_TIMEOUT_MS = 2000;

export interface Readiness {
  readonly ready: boolean;
  /** "ok", "disabled", or what is wrong, per check. */
  readonly checks: Readonly<Record<"database" | "listener" | "migrations", string>>;
}

export interface ReadinessOptions {
  readonly pool: pg.Pool;
  /** Undefined when this daemon runs no listener (`--no-listener`). */
  readonly listener: Listener | undefined;
}

async function withTimeout(check: () => Promise<string>): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(
      () => resolve(`no answer within ${READINESS_CHECK_TIMEOUT_MS} ms`),
      READINESS_CHECK_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([
      check().catch((error: unknown) => (error as Error).message || String(error)),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export async function checkReadiness(options: ReadinessOptions): Promise<Readiness> {
  const [database, migrations] = await Promise.all([
    withTimeout(async () => {
      await options.pool.query("select 1");
      return "ok";
    }),
    withTimeout(async () => {
      const pending = await pendingMigrations(options.pool);
      return pending.length === 0
        ? "ok"
        : `${pending.length} migration(s) pending (${pending.join(", ")}); run \`pgfn migrate\``;
    }),
  ]);
  const listener =
    options.listener === undefined
      ? "disabled"
      : options.listener.connected
        ? "ok"
        : "not connected (reconnecting)";
  const checks = { database, listener, migrations };
  return {
    ready: Object.values(checks).every((v) => v === "ok" || v === "disabled"),
    checks,
  };
}
