// What a test file has open, for the leak guard (test/leakGuard.ts): its
// databases and daemons (registered by test/helpers.ts), every pg pool and
// client and every child process (seen by patching their classes once per
// process), and whether any of its tests has failed (for keeping a failed
// test's database).
import { ChildProcess, type SpawnOptions } from "node:child_process";
import pg from "pg";
import type { RunnerTask, RunnerTestFile } from "vitest";

/**
 * The comment on a database kept because a test failed while it existed
 * (`\l+` shows it): globalSetup's teardown leaves such databases alone and
 * lists them. Drop one with `drop database NAME`.
 */
export const KEPT_DATABASE_COMMENT = "kept by pgfn's tests for inspection:";

/** In the order the leak guard closes them: an owner before what it owns. */
export const RESOURCE_KINDS = ["daemon", "child", "pool", "client", "database"] as const;
export type ResourceKind = (typeof RESOURCE_KINDS)[number];

/** Something left open, as the leak guard reports it and cleans it up. */
export interface OpenResource {
  readonly kind: ResourceKind;
  /** What it is, for the failure message: "database pgfn_t_..._cli_1", "child process node ...". */
  readonly description: string;
  /** Gone: nothing to report any more. */
  closed(): boolean;
  /** Closes or kills it, so that the process can exit and later files are not disturbed. */
  close(): Promise<void>;
}

interface Tracked {
  readonly databases: Set<OpenResource>;
  readonly daemons: Set<OpenResource>;
  readonly pools: Map<pg.Pool, string>;
  readonly clients: Map<pg.Client, string>;
  readonly children: Map<ChildProcess, string>;
  /** Pools that a tracked database closes itself: reported as the database. */
  readonly ownedPools: WeakSet<pg.Pool>;
  file: RunnerTestFile | undefined;
}

// On globalThis: one registry per process however many times vitest
// evaluates this module, because the patched classes (pg, child_process)
// are loaded once per process.
const KEY = Symbol.for("pgfn.test.leaks");
const tracked: Tracked =
  ((globalThis as Record<symbol, unknown>)[KEY] as Tracked | undefined) ??
  (((globalThis as Record<symbol, unknown>)[KEY] = {
    databases: new Set(),
    daemons: new Set(),
    pools: new Map(),
    clients: new Map(),
    children: new Map(),
    ownedPools: new WeakSet(),
    file: undefined,
  } satisfies Tracked) as Tracked);

/**
 * Registers an open database or daemon (with the pool it closes itself, if
 * any); returns the function that unregisters it.
 */
export function trackOpen(resource: OpenResource, ownPool?: pg.Pool): () => void {
  const set = resource.kind === "database" ? tracked.databases : tracked.daemons;
  if (ownPool) tracked.ownedPools.add(ownPool);
  set.add(resource);
  return () => set.delete(resource);
}

/** The test file now running (set by the leak guard; absent when it is not installed). */
export function setCurrentFile(file: RunnerTestFile | undefined): void {
  tracked.file = file;
}

/** The test file now running, if the leak guard is installed. */
export function currentFile(): RunnerTestFile | undefined {
  return tracked.file;
}

function countFailures(task: RunnerTask): number {
  const own = task.result?.state === "fail" ? 1 : 0;
  return own + ("tasks" in task ? task.tasks.reduce((n, child) => n + countFailures(child), 0) : 0);
}

/**
 * How many tests and suites of the current file have failed so far: a
 * database is kept when this grew while it existed. A test's state is final
 * before its afterEach hooks run, a failed beforeAll marks its suite before
 * the afterAll hooks run. Always 0 without the leak guard.
 */
export function failuresSoFar(): number {
  return tracked.file ? countFailures(tracked.file) : 0;
}

/** The frames of a stack that are ours (test/, src/, bench/), to say who opened something. */
function ourFrames(stack: string | undefined): string {
  const frames = (stack ?? "")
    .split("\n")
    .slice(1)
    .map((line) => line.trim())
    .filter(
      (line) => /\/(test|src|bench)\//.test(line) && !/\/test\/(leaks|helpers)\.ts/.test(line),
    )
    .slice(0, 3);
  return frames.length ? ` (opened ${frames.join(", ")})` : "";
}

/** A stack deep enough to get from pg's or node's internals out to a test. */
function captureStack(): string | undefined {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 40;
  try {
    return new Error().stack;
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** " (opened at ...)": where the caller's caller is, for a leak's description. */
export function openedBy(): string {
  return ourFrames(captureStack());
}

function describeConnection(database: string | undefined, application: string | undefined) {
  return `on database ${database ?? "?"}${application ? ` (application_name ${application})` : ""}`;
}

const PATCHED = Symbol.for("pgfn.test.leaks.patched");

/**
 * Patches pg.Pool, pg.Client and ChildProcess, once per process, to record
 * every pool that was used and not ended, every client connected and not
 * ended, and every child process spawned and not exited.
 */
export function installTracking(): void {
  const globals = globalThis as Record<symbol, unknown>;
  if (globals[PATCHED]) return;
  globals[PATCHED] = true;

  // pg.Pool is pg's subclass of pg-pool's Pool, where connect() and end() live.
  const poolPrototype = Object.getPrototypeOf(pg.Pool.prototype) as {
    connect: (...args: unknown[]) => unknown;
    end: (...args: unknown[]) => unknown;
  };
  const poolConnect = poolPrototype.connect;
  poolPrototype.connect = function (this: pg.Pool & { ending?: boolean }, ...args: unknown[]) {
    if (!this.ending && !tracked.pools.has(this)) {
      const options = (this as unknown as { options: pg.PoolConfig }).options;
      const database = options.database ?? databaseOf(options.connectionString);
      tracked.pools.set(
        this,
        `a pg pool ${describeConnection(database, options.application_name)}, never ended${ourFrames(captureStack())}`,
      );
    }
    return poolConnect.apply(this, args);
  };
  const poolEnd = poolPrototype.end;
  poolPrototype.end = function (this: pg.Pool, ...args: unknown[]) {
    tracked.pools.delete(this);
    return poolEnd.apply(this, args);
  };

  const clientPrototype = pg.Client.prototype as unknown as {
    connect: (...args: unknown[]) => unknown;
  };
  const clientConnect = clientPrototype.connect;
  clientPrototype.connect = function (this: pg.Client, ...args: unknown[]) {
    const params = (this as unknown as { connectionParameters: pg.ClientConfig })
      .connectionParameters;
    tracked.clients.set(
      this,
      `a pg client ${describeConnection(params.database, params.application_name)}, never ended${ourFrames(captureStack())}`,
    );
    this.once("end", () => tracked.clients.delete(this));
    return clientConnect.apply(this, args);
  };

  // spawn(), execFile() and fork() all create a ChildProcess and call its spawn().
  const childPrototype = ChildProcess.prototype as unknown as {
    spawn: (options: SpawnOptions & { file?: string; args?: string[] }) => unknown;
  };
  const childSpawn = childPrototype.spawn;
  childPrototype.spawn = function (this: ChildProcess, options) {
    const result = childSpawn.call(this, options);
    if (this.pid !== undefined && this.exitCode === null && this.signalCode === null) {
      const command = (options.args ?? [options.file ?? "?"]).join(" ");
      tracked.children.set(
        this,
        `child process ${this.pid} \`${command.length > 200 ? `${command.slice(0, 200)}…` : command}\`, still running${ourFrames(captureStack())}`,
      );
      this.once("exit", () => tracked.children.delete(this));
    }
    return result;
  };
}

function databaseOf(connectionString: string | undefined): string | undefined {
  if (!connectionString) return undefined;
  try {
    return decodeURIComponent(new URL(connectionString).pathname.slice(1)) || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether a client's connection has ended. Its 'end' event is not enough:
 * pg-listen removes every listener from a client whose connection broke
 * before that event comes.
 */
function clientEnded(client: pg.Client): boolean {
  return (client as unknown as { _ended?: boolean })._ended === true;
}

/** Everything still open now, in the order to close it: daemons first (they own pools and clients), databases last. */
export function openResources(): OpenResource[] {
  const pools = [...tracked.pools.entries()].filter(([pool]) => !tracked.ownedPools.has(pool));
  // A pool's own clients are reported as the pool.
  const pooled = new Set(
    pools.flatMap(([pool]) => (pool as unknown as { _clients: pg.Client[] })._clients ?? []),
  );
  return [
    ...tracked.daemons,
    ...[...tracked.children.entries()].map(([child, description]) => ({
      kind: "child" as const,
      description,
      closed: () => !tracked.children.has(child),
      close: async () => {
        if (!tracked.children.has(child)) return;
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGKILL");
        await exited;
      },
    })),
    ...pools.map(([pool, description]) => ({
      kind: "pool" as const,
      description,
      closed: () => !tracked.pools.has(pool),
      close: () => pool.end().catch(() => undefined),
    })),
    ...[...tracked.clients.entries()]
      .filter(([client]) => !pooled.has(client))
      .map(([client, description]) => ({
        kind: "client" as const,
        description,
        closed: () => !tracked.clients.has(client) || clientEnded(client),
        close: () => client.end().catch(() => undefined),
      })),
    ...tracked.databases,
  ].filter((resource) => !resource.closed());
}
