/**
 * Dispatch: undispatched events become jobs (pgfn.dispatch, one transaction
 * per batch). Any number of reasons to dispatch (notifications, the sweep, a
 * reconnect) collapse into at most one pass running and one queued.
 *
 * While passes find work the dispatcher stays awake: it polls every
 * AWAKE_POLL_MS and triggers skip their NOTIFY (see pgfn.wake), which would
 * otherwise cost every writing transaction a server-wide lock at commit.
 */
import type { Logger } from "pino";
import type { Db } from "../db/database.js";
import { dispatchBatch } from "../db/events.js";

export interface DispatcherOptions {
  readonly db: Db;
  /** Events per transaction. */
  readonly batchSize: number;
  /** Events of one function per job at most. (Default: 50) */
  readonly eventsPerJob?: number;
  /**
   * Dispatch waits while this many jobs wait to be taken, so that events
   * gather into fuller jobs while the workers are behind. (Default: no bound)
   */
  readonly maxReadyJobs?: number;
  readonly logger: Logger;
}

/**
 * How often an awake dispatcher polls after a pass that found work: the
 * latency an event can wait for it. After passes that found none it polls
 * less often, doubling up to IDLE_POLL_MS; while dispatch holds back for the
 * workers, every HELD_POLL_MS. Each pass is a transaction, and at 2 ms they
 * were most of what an awake daemon did when events came slower than that.
 */
const AWAKE_POLL_MS = 2;
const IDLE_POLL_MS = 8;
const HELD_POLL_MS = 10;
/**
 * Each pass that finds work keeps triggers quiet this long... A NOTIFY holds
 * a server-wide lock from before its transaction's commit record until the
 * WAL flush, so notifying writers commit one at a time: once a loaded
 * listener's promise lapses between two passes, every commit notifies and
 * the write rate collapses (seen in the bench: writers waiting on
 * Lock:object at ~150 tx/s). A second of polling after the last work (at
 * most ~500 empty passes, each an index probe) is far cheaper than that.
 */
const AWAKE_MS = 1000;
/**
 * ...and the dispatcher polls this long after that before it sleeps: a
 * transaction that skipped its NOTIFY must have become visible by then (its
 * check runs just before its commit). Slower ones are found by the sweep.
 */
const AWAKE_MARGIN_MS = 100;

export class Dispatcher {
  private running: Promise<void> | undefined;
  private poll: NodeJS.Timeout | undefined;
  private again = false;
  private stopped = false;
  /** Passes in a row that found nothing to do. */
  private emptyPasses = 0;
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
    clearTimeout(this.poll);
    await this.running;
  }

  private async loop(): Promise<void> {
    const { db, batchSize, logger } = this.options;
    let maySleep: boolean;
    let heldBack: boolean;
    do {
      this.again = false;
      try {
        // A full batch means there may be more: keep going until one is short.
        let pass: Awaited<ReturnType<typeof dispatchBatch>>;
        do {
          pass = await dispatchBatch(
            db,
            batchSize,
            this.options.eventsPerJob ?? 50,
            AWAKE_MS,
            AWAKE_MARGIN_MS,
            this.options.maxReadyJobs ?? null,
          );
          this.dispatched += pass.dispatched;
          if (pass.dispatched > 0) {
            logger.debug({ operation: "dispatch", count: pass.dispatched }, "dispatched events");
          }
        } while (pass.dispatched === batchSize && !this.stopped);
        maySleep = pass.maySleep;
        heldBack = pass.heldBack;
        this.emptyPasses = pass.dispatched > 0 ? 0 : this.emptyPasses + 1;
      } catch (error) {
        // The events stay undispatched; the next kick (sweep, reconnect) retries.
        logger.warn(
          { operation: "dispatch", error: (error as Error).message },
          "dispatch failed; will retry",
        );
        return;
      }
    } while (this.again && !this.stopped);
    if (!maySleep && !this.stopped) {
      clearTimeout(this.poll);
      const delayMs = heldBack
        ? HELD_POLL_MS
        : Math.min(AWAKE_POLL_MS * 2 ** this.emptyPasses, IDLE_POLL_MS);
      this.poll = setTimeout(() => void this.kick(), delayMs);
    }
  }
}
