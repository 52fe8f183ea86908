/**
 * Dispatch: undispatched events become jobs (pgfn.dispatch, one transaction
 * per batch). Any number of reasons to dispatch (notifications, the sweep, a
 * reconnect) collapse into at most one pass running and one queued.
 */
import type { Logger } from "pino";
import type { Db } from "../db/database.js";
import { dispatchBatch } from "../db/events.js";

export interface DispatcherOptions {
  readonly db: Db;
  /** Events per transaction. */
  readonly batchSize: number;
  readonly logger: Logger;
}

export class Dispatcher {
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** Events dispatched by this process since it started. */
  dispatched = 0;

  constructor(private readonly options: DispatcherOptions) {}

  /** Asks for a pass; returns the pass that will cover this request. */
  kick(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = this.loop().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Stops taking requests and waits for the pass under way. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  private async loop(): Promise<void> {
    const { db, batchSize, logger } = this.options;
    do {
      this.again = false;
      try {
        // A full batch means there may be more: keep going until one is short.
        let n: number;
        do {
          n = await dispatchBatch(db, batchSize);
          this.dispatched += n;
          if (n > 0) logger.debug({ operation: "dispatch", count: n }, "dispatched events");
        } while (n === batchSize && !this.stopped);
      } catch (error) {
        // The events stay undispatched; the next kick (sweep, reconnect) retries.
        logger.warn(
          { operation: "dispatch", error: (error as Error).message },
          "dispatch failed; will retry",
        );
        return;
      }
    } while (this.again && !this.stopped);
  }
}
