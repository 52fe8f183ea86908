/**
 * db_query's connections: each logged in as one db_role, opened on demand,
 * closed when idle, at most `size` of them per daemon across every role, and
 * at most a fair share of them held by any one function at a time.
 *
 * Not a pg.Pool per role: pools cannot give an idle connection of one role
 * up for a caller of another once the daemon-wide bound is reached, nor wait
 * with the caller's deadline, nor count connections per function.
 */
import type pg from "pg";
import { HostFunctionError } from "./errors.js";

/** One connection and the role it is logged in as. */
export interface RoleConnection {
  readonly client: pg.Client;
  readonly role: string;
  /** `Date.now()` when it was opened (and its role checked). */
  readonly openedAt: number;
}

/** Options of {@link DbConnections}. */
export interface DbConnectionsOptions {
  /** Connections open at once, across all roles. */
  readonly size: number;
  /** An idle connection is closed after this long. (Default: 10000) */
  readonly idleMs?: number;
  /**
   * A connection is closed when given back after this long, so that a role
   * granted more since is checked again on its next connection. (Default: 300000)
   */
  readonly maxLifetimeMs?: number;
  /**
   * Opens, logs in and checks a connection for `role` before `deadline`;
   * rejects with the error the caller should see.
   */
  readonly open: (role: string, deadline: number) => Promise<pg.Client>;
}

interface Waiter {
  readonly role: string;
  readonly fn: string;
  readonly deadline: number;
  readonly resolve: (connection: RoleConnection) => void;
  readonly reject: (error: unknown) => void;
  timer: NodeJS.Timeout | undefined;
}

interface Idle {
  readonly connection: RoleConnection;
  readonly timer: NodeJS.Timeout;
  /** Forgets the connection if the server closes it while idle (restart, idle_session_timeout). */
  readonly onEnd: () => void;
}

const DEFAULT_IDLE_MS = 10_000;
const DEFAULT_MAX_LIFETIME_MS = 300_000;

/**
 * The fair share: half the connections, at least one. With the default 4,
 * a function stuck in slow queries holds 2 and the others still get 2.
 */
export function fairShare(size: number): number {
  return Math.max(1, Math.floor(size / 2));
}

/** Destroys the socket at once: for a connection in an unknown state or a wedged one. */
export function destroyClient(client: pg.Client): void {
  client.connection.stream.destroy();
}

export class DbConnections {
  private readonly size: number;
  private readonly share: number;
  private readonly idleMs: number;
  private readonly maxLifetimeMs: number;
  private readonly openConnection: DbConnectionsOptions["open"];
  /** Open or being opened, idle or busy. */
  private count = 0;
  private readonly idle: Idle[] = [];
  private readonly busy = new Set<RoleConnection>();
  private readonly opening = new Set<Promise<unknown>>();
  private readonly perFunction = new Map<string, number>();
  private readonly waiters: Waiter[] = [];
  private closed = false;
  private onBusyChange: (() => void) | undefined;

  constructor(options: DbConnectionsOptions) {
    this.size = options.size;
    this.share = fairShare(options.size);
    this.idleMs = options.idleMs ?? DEFAULT_IDLE_MS;
    this.maxLifetimeMs = options.maxLifetimeMs ?? DEFAULT_MAX_LIFETIME_MS;
    this.openConnection = options.open;
  }

  /** Open connections (idle, busy or being opened), for tests and metrics. */
  get stats(): { open: number; idle: number; busy: number; waiting: number } {
    return {
      open: this.count,
      idle: this.idle.length,
      busy: this.busy.size,
      waiting: this.waiters.length,
    };
  }

  /**
   * A connection logged in as `role` for function `fn`; waits while all are
   * busy or `fn` holds its share, and fails transient when `deadline` passes.
   */
  acquire(role: string, fn: string, deadline: number): Promise<RoleConnection> {
    if (this.closed) {
      return Promise.reject(
        new HostFunctionError("db_query failed: the daemon is shutting down", true),
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { role, fn, deadline, resolve, reject, timer: undefined };
      waiter.timer = setTimeout(
        () => {
          this.removeWaiter(waiter);
          reject(
            new HostFunctionError(
              "db_query failed: no time left while waiting for a database connection (all are busy)",
              true,
            ),
          );
        },
        Math.max(0, deadline - Date.now()),
      );
      this.waiters.push(waiter);
      this.pump();
    });
  }

  /** Gives a connection back: reused if `reusable`, else closed at once. */
  release(connection: RoleConnection, fn: string, reusable: boolean): void {
    if (!this.busy.delete(connection)) return;
    this.leave(fn);
    const young = Date.now() - connection.openedAt < this.maxLifetimeMs;
    if (reusable && young && !this.closed) {
      const timer = setTimeout(() => this.closeIdle(connection), this.idleMs);
      timer.unref();
      const onEnd = () => this.closeIdle(connection);
      connection.client.once("end", onEnd);
      this.idle.push({ connection, timer, onEnd });
    } else {
      destroyClient(connection.client);
      this.count--;
    }
    this.onBusyChange?.();
    this.pump();
  }

  /**
   * Refuses new callers, closes idle connections, waits up to `graceMs` for
   * busy ones, then hands what is left to `abandon` (which must close it).
   * Bounded whatever the server does.
   */
  async end(graceMs: number, abandon: (connection: RoleConnection) => void): Promise<void> {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(new HostFunctionError("db_query failed: the daemon is shutting down", true));
    }
    for (const { connection, timer, onEnd } of this.idle.splice(0)) {
      clearTimeout(timer);
      connection.client.off("end", onEnd);
      this.count--;
      void connection.client.end().catch(() => undefined);
    }
    const deadline = Date.now() + graceMs;
    while ((this.busy.size > 0 || this.opening.size > 0) && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        this.onBusyChange = () => {
          clearTimeout(timer);
          resolve();
        };
        // Openings settle on their own deadline; look again soon.
        if (this.opening.size > 0) setTimeout(resolve, 50).unref();
      });
    }
    this.onBusyChange = undefined;
    for (const connection of this.busy) abandon(connection);
  }

  /** Serves waiters in order, skipping those whose function holds its share. */
  private pump(): void {
    for (let i = 0; i < this.waiters.length;) {
      const waiter = this.waiters[i]!;
      if ((this.perFunction.get(waiter.fn) ?? 0) >= this.share) {
        i++;
        continue;
      }
      const idle = this.takeIdle(waiter.role);
      if (idle) {
        this.removeWaiter(waiter);
        this.enter(waiter.fn);
        this.busy.add(idle);
        waiter.resolve(idle);
        continue;
      }
      if (this.count >= this.size) {
        // Full: an idle connection of another role makes room, else wait.
        const other = this.idle.shift();
        if (!other) {
          i++;
          continue;
        }
        clearTimeout(other.timer);
        other.connection.client.off("end", other.onEnd);
        destroyClient(other.connection.client);
        this.count--;
      }
      this.removeWaiter(waiter);
      this.enter(waiter.fn);
      this.count++;
      this.startOpening(waiter);
    }
  }

  private startOpening(waiter: Waiter): void {
    const opened = this.openConnection(waiter.role, waiter.deadline).then(
      (client) => {
        const connection: RoleConnection = { client, role: waiter.role, openedAt: Date.now() };
        if (this.closed) {
          destroyClient(client);
          this.count--;
          this.leave(waiter.fn);
          waiter.reject(
            new HostFunctionError("db_query failed: the daemon is shutting down", true),
          );
          return;
        }
        this.busy.add(connection);
        waiter.resolve(connection);
      },
      (error: unknown) => {
        this.count--;
        this.leave(waiter.fn);
        waiter.reject(error);
        this.pump();
      },
    );
    this.opening.add(opened);
    void opened.finally(() => {
      this.opening.delete(opened);
      this.onBusyChange?.();
    });
  }

  private takeIdle(role: string): RoleConnection | undefined {
    // The most recently used: the others then age out when traffic drops.
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const idle = this.idle[i]!;
      if (idle.connection.role === role) {
        this.idle.splice(i, 1);
        clearTimeout(idle.timer);
        idle.connection.client.off("end", idle.onEnd);
        return idle.connection;
      }
    }
    return undefined;
  }

  private closeIdle(connection: RoleConnection): void {
    const i = this.idle.findIndex((idle) => idle.connection === connection);
    if (i < 0) return;
    const [idle] = this.idle.splice(i, 1);
    clearTimeout(idle!.timer);
    connection.client.off("end", idle!.onEnd);
    this.count--;
    void connection.client.end().catch(() => undefined);
    this.pump();
  }

  private removeWaiter(waiter: Waiter): void {
    const i = this.waiters.indexOf(waiter);
    if (i >= 0) this.waiters.splice(i, 1);
    clearTimeout(waiter.timer);
  }

  private enter(fn: string): void {
    this.perFunction.set(fn, (this.perFunction.get(fn) ?? 0) + 1);
  }

  private leave(fn: string): void {
    const n = (this.perFunction.get(fn) ?? 1) - 1;
    if (n <= 0) this.perFunction.delete(fn);
    else this.perFunction.set(fn, n);
  }
}
