/** What every section shares: the scratch database, the load pool, progress lines, consumers. */
import { setTimeout as sleep } from "node:timers/promises";
import type pg from "pg";
import type { Child } from "./children.js";
import type { BenchOptions } from "./options.js";
import { CLEAR_SQL, insertSql, type System } from "./systems.js";
import { UsageMeter } from "./usage.js";

export interface Context {
  readonly options: BenchOptions;
  /** The scratch database. */
  readonly url: string;
  /** The server's `postgres` database, for the sandbox's role. */
  readonly adminUrl: string;
  /** The open-loop generator's connections, plus a few for the harness's own queries. */
  readonly pool: pg.Pool;
  /**
   * The harness's progress and measuring queries, under their own
   * application name, so the Postgres CPU they cost is not charged to the
   * system being measured.
   */
  readonly observer: pg.Pool;
  /** Where each consumer's stderr goes. */
  readonly logDir: string;
  /** One line on stderr, stamped with the time since the start. */
  progress(message: string): void;
}

/** Rows inserted before measuring: readiness, and no first-call costs in the figures. */
const WARM_UP_EVENTS = 50;
/** A consumer that has not run its warm-up by then is not coming. */
const START_TIMEOUT_MS = 90_000;
/** How often waitDone asks; the progress query itself is not free on a big backlog. */
const WAIT_POLL_MS = 100;

export interface Progress {
  readonly events: number;
  readonly done: number;
}

/**
 * One system's consumer process and the event id after which the current
 * measurement counts.
 */
export class Consumer {
  child: Child | undefined;
  watermark = "0";
  private started = 0;

  constructor(
    private readonly ctx: Context,
    readonly system: System,
  ) {}

  /** Stops whatever runs, empties every table, starts a consumer and warms it up. */
  async fresh(): Promise<void> {
    await this.stop();
    await this.ctx.pool.query(CLEAR_SQL);
    await this.start();
    await this.ctx.pool.query(insertSql(this.system.table, WARM_UP_EVENTS));
    await this.waitDone(START_TIMEOUT_MS, "its warm-up events");
    await this.mark();
  }

  /** Starts one more consumer (after a kill, say) without touching the tables. */
  async start(): Promise<Child> {
    this.child = this.system.start(`${this.system.name}-${++this.started}`, {
      url: this.ctx.url,
      concurrency: this.ctx.options.daemonConcurrency,
      logDir: this.ctx.logDir,
    });
    return this.child;
  }

  /** From now on, only new events count. */
  async mark(): Promise<void> {
    const { rows } = await this.ctx.observer.query<{ id: string }>(this.system.watermarkSql);
    this.watermark = rows[0]!.id;
  }

  async stop(): Promise<void> {
    await this.child?.stop();
    this.child = undefined;
  }

  async progress(): Promise<Progress> {
    const { rows } = await this.ctx.observer.query<Progress>(this.system.progressSql, [
      this.watermark,
    ]);
    return rows[0]!;
  }

  /** Starts measuring CPU and WAL; the consumer may be (re)started after this. */
  meter(): Promise<UsageMeter> {
    return UsageMeter.start(this.ctx.observer, () => this.child?.process.pid);
  }

  /** Throws, with its log, if the consumer has exited on its own. */
  assertAlive(): void {
    const child = this.child;
    if (child && (child.process.exitCode !== null || child.process.signalCode !== null)) {
      throw new Error(
        `${child.name} exited (${child.process.signalCode ?? `code ${child.process.exitCode}`}). Its last log lines:\n${child.logTail()}`,
      );
    }
  }

  /**
   * Waits until every event after the watermark has a successful run;
   * false if `timeoutMs` passed first. With `what`, a timeout is an error.
   */
  async waitDone(timeoutMs: number, what?: string, pollMs = WAIT_POLL_MS): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      this.assertAlive();
      const p = await this.progress();
      if (p.done >= p.events) return true;
      if (performance.now() > deadline) {
        if (what) {
          throw new Error(
            `${this.system.name} did not finish ${what} within ${timeoutMs / 1000} s (${p.done}/${p.events}).${this.child ? ` Its last log lines:\n${this.child.logTail()}` : ""}`,
          );
        }
        return false;
      }
      await sleep(pollMs);
    }
  }
}
