/**
 * NOTIFY -> dispatch. Notifications are only a latency hint: dispatch also
 * runs whenever the listener (re)connects and on a periodic sweep, so events
 * committed while no listener was connected are dispatched all the same.
 */
import pgListen from "pg-listen";
import type { Logger } from "pino";
import type { Dispatcher } from "./dispatcher.js";

/**
 * The channel pgfn.wake() notifies when a transaction that wrote events
 * commits, unless a listener is awake already or no daemon is registered
 * (sql/000013_write_path.sql).
 */
export const CHANNEL = "pgfn_events";

/** The listener's connection shows as this in pg_stat_activity. */
export const LISTENER_APPLICATION_NAME = "pgfn-listener";

export interface ListenerOptions {
  readonly connectionString: string;
  readonly dispatcher: Dispatcher;
  readonly sweepIntervalMs: number;
  readonly logger: Logger;
}

export interface Listener {
  /** True while the LISTEN connection is up. */
  readonly connected: boolean;
  stop(): Promise<void>;
}

/** Reconnect delay: 100 ms doubling to at most 5 s, for as long as it takes. */
export function reconnectDelayMs(attempt: number): number {
  return Math.min(100 * 2 ** Math.min(attempt, 10), 5000);
}

// pg-listen is CommonJS with an `exports.default`; this spelling resolves to
// the function under Node's ESM loader, TypeScript's NodeNext view and vitest.
const createSubscriber = pgListen.default;

export async function startListener(options: ListenerOptions): Promise<Listener> {
  const { dispatcher, logger } = options;
  const subscriber = createSubscriber(
    { connectionString: options.connectionString, application_name: LISTENER_APPLICATION_NAME },
    {
      // pg-listen's default retryTimeout (3000 ms) gives up for good after a
      // short outage, silently: the daemon would never hear another
      // notification. Retry forever instead.
      retryTimeout: Number.POSITIVE_INFINITY,
      retryLimit: Number.POSITIVE_INFINITY,
      retryInterval: reconnectDelayMs,
      // Finds a connection that died without a TCP reset.
      paranoidChecking: 10_000,
      parse: (payload: string) => payload,
    },
  );
  let connected = false;
  let listening = false;

  subscriber.events.on("connected", () => {
    connected = true;
    // On reconnect pg-listen re-issues LISTEN before this event: anything
    // committed while we were away is found now.
    if (listening) {
      logger.info({ operation: "listen" }, "listener reconnected");
      void dispatcher.kick();
    }
  });
  subscriber.events.on("reconnect", (attempt) => {
    connected = false;
    if (attempt === 1 || attempt % 10 === 0) {
      logger.warn({ operation: "listen", attempt }, "listener connection lost; reconnecting");
    }
  });
  subscriber.events.on("error", (error) => {
    logger.error({ operation: "listen", error: error.message }, "listener error");
  });
  subscriber.notifications.on(CHANNEL, () => void dispatcher.kick());

  await subscriber.connect();
  await subscriber.listenTo(CHANNEL);
  listening = true;
  // Only now: an event committed before LISTEN took effect is found here.
  void dispatcher.kick();
  const sweep = setInterval(() => void dispatcher.kick(), options.sweepIntervalMs);
  sweep.unref();

  return {
    get connected() {
      return connected;
    },
    async stop() {
      clearInterval(sweep);
      await subscriber.close().catch(() => undefined);
      connected = false;
    },
  };
}
