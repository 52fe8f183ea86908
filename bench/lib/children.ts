/**
 * The consumers as child processes: pgfn's daemon exactly as a user starts
 * it (`src/main.ts start`), and the baselines' workers. Out of the harness's
 * process, so the load generator never shares an event loop with them.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
// The compiled daemon, as `npx pgfn start` runs it (`npm run bench` builds it first).
const MAIN = path.join(ROOT, "dist/main.js");

/** How long a consumer gets to stop on SIGTERM before it is killed. */
const STOP_TIMEOUT_MS = 10_000;

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  /** Resolves with the exit code or signal when the process has gone. */
  readonly exited: Promise<string>;
  /** SIGTERM, then SIGKILL if it has not exited after 10 s. */
  stop(): Promise<void>;
  /** SIGKILL, as a crash would. */
  kill(): Promise<void>;
  /** The last lines the process wrote to stderr, for an error message. */
  logTail(lines?: number): string;
}

const live = new Set<ChildProcess>();
// Whatever way the harness ends, no consumer outlives it.
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

function start(name: string, args: string[], env: NodeJS.ProcessEnv, logDir: string): Child {
  const logFile = path.join(logDir, `${name}.log`);
  // TypeScript (the baselines) through tsx; the compiled daemon without it,
  // which its sandbox threads would otherwise inherit and load each.
  const loader = args[0]?.endsWith(".ts") ? ["--import", "tsx"] : [];
  const child = spawn(process.execPath, [...loader, ...args], {
    cwd: ROOT,
    env,
    // stdin stays open: the baselines exit when it closes (the harness died).
    // Its own process group, so a Ctrl-C reaches the harness only, which then
    // stops the children in order.
    stdio: ["pipe", "ignore", openSync(logFile, "a")],
    detached: true,
  });
  live.add(child);
  const exited = new Promise<string>((resolve) =>
    child.once("exit", (code, signal) => {
      live.delete(child);
      resolve(signal ?? `exit code ${code}`);
    }),
  );
  const gone = () => child.exitCode !== null || child.signalCode !== null;
  return {
    name,
    process: child,
    exited,
    async stop() {
      if (gone()) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    },
    async kill() {
      if (gone()) return;
      child.kill("SIGKILL");
      await exited;
    },
    logTail(lines = 20) {
      try {
        return readFileSync(logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
      } catch {
        return "";
      }
    },
  };
}

export interface ConsumerOptions {
  readonly url: string;
  readonly concurrency: number;
  readonly logDir: string;
}

/** `pgfn start` with the bench's settings; other PGFN_* variables come from the environment. */
export function startPgfnDaemon(id: string, options: ConsumerOptions): Child {
  return start(
    id,
    [MAIN, "start"],
    {
      ...process.env,
      DATABASE_URL: options.url,
      PGFN_WORKER_ID: id,
      PGFN_WORKER_CONCURRENCY: String(options.concurrency),
      PGFN_LOG_LEVEL: process.env.PGFN_LOG_LEVEL ?? "error",
      // Several benches and test runs share this machine; no port to fight over.
      PGFN_HTTP_PORT: "0",
    },
    options.logDir,
  );
}

export function startDirectWorker(id: string, options: ConsumerOptions): Child {
  return start(
    id,
    [path.join(ROOT, "bench/baselines/direct.worker.ts")],
    { ...process.env, DATABASE_URL: options.url, BENCH_CONCURRENCY: String(options.concurrency) },
    options.logDir,
  );
}

export function startPollRelay(id: string, options: ConsumerOptions): Child {
  return start(
    id,
    [path.join(ROOT, "bench/baselines/poll.worker.ts")],
    { ...process.env, DATABASE_URL: options.url },
    options.logDir,
  );
}

/** SIGKILLs every consumer still running: for an interrupted or failed run. */
export async function killAll(): Promise<void> {
  await Promise.all(
    [...live].map(
      (child) =>
        new Promise<void>((resolve) => {
          child.once("exit", () => resolve());
          child.kill("SIGKILL");
        }),
    ),
  );
}
