// Child processes for tests: the CLI, the bench and fixtures, run from their
// TypeScript sources through tsx (never a possibly stale dist/, never npx),
// with deadlines a loaded machine can meet. Every child is seen by the leak
// guard (test/leakGuard.ts), which fails a file that leaves one running.
import { spawn, type ChildProcess, type StdioOptions } from "node:child_process";
import { fileURLToPath } from "node:url";

/** The repository's root: children run there, as `npm test` does. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The CLI's entry point (what bin/pgfn.js runs, compiled). */
export const PGFN_MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));

/**
 * How long one child may take before it is killed and its test fails naming
 * it. A child compiles and loads all of src/ through tsx before it does
 * anything: 3-5 s on a quiet two-core machine, 20 s and more with both
 * cores busy, which is why a single 30 s test timeout was not enough.
 * (Default for runTs: 120000)
 */
export const CHILD_DEADLINE_MS = 120_000;

/**
 * The timeout for a test that runs children one after another: a backstop
 * only. Each child has its own deadline, which fails first and says which
 * child hung; a per-test limit tight enough to catch a hang would also fail
 * a slow but healthy run on a loaded machine.
 */
export const SPAWNING_TEST_TIMEOUT_MS = 600_000;

/**
 * Where the leak guard keeps the TMPDIR it replaced ("" when there was none).
 * Not PGFN_*: those are pgfn's configuration.
 */
export const MACHINE_TMPDIR_VARIABLE = "TEST_MACHINE_TMPDIR";

/** Environment overrides; `undefined` removes a variable the test process has. */
export type ChildEnv = Record<string, string | undefined>;

export interface ChildOptions {
  /** Merged over this process's environment. */
  readonly env?: ChildEnv;
  /** (Default: the repository's root) */
  readonly cwd?: string;
}

export interface RunOptions extends ChildOptions {
  /** Kill the child (SIGKILL) and reject after this long. (Default: CHILD_DEADLINE_MS) */
  readonly deadlineMs?: number;
}

export interface ChildResult {
  /** The exit code; -1 when the child was ended by a signal. */
  readonly code: number;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * The environment of a child. TMPDIR goes back to the machine's: the leak
 * guard gives each test file a temporary directory of its own, but tsx keeps
 * its compile cache in the temporary directory, and children sharing the
 * machine's cache start in seconds instead of recompiling src/ each time.
 */
function childEnv(overrides: ChildEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  const machineTmp = env[MACHINE_TMPDIR_VARIABLE];
  delete env[MACHINE_TMPDIR_VARIABLE];
  if (machineTmp !== undefined) {
    if (machineTmp === "") delete env.TMPDIR;
    else env.TMPDIR = machineTmp;
  }
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  return env;
}

/** `node --import tsx script ...args`, as a long-running child (a daemon); kill it when done. */
export function startTs(
  script: string,
  args: readonly string[],
  options: ChildOptions & {
    stdio?: StdioOptions;
    /** Lead a process group of its own, as a terminal's foreground job. (Default: false) */
    detached?: boolean;
  } = {},
): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", script, ...args], {
    cwd: options.cwd ?? ROOT,
    env: childEnv(options.env),
    stdio: options.stdio ?? "ignore",
    detached: options.detached ?? false,
  });
}

/**
 * Runs `node --import tsx script ...args` to its end and returns its exit
 * code and output. Past the deadline the child is killed and this rejects
 * with an error naming the command and what it printed so far.
 */
export function runTs(
  script: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<ChildResult> {
  return runNode(["--import", "tsx", script, ...args], options);
}

/** Runs `node ...args` to its end; see runTs. */
export function runNode(args: readonly string[], options: RunOptions = {}): Promise<ChildResult> {
  return runCommand(process.execPath, args, options);
}

/** Runs `command ...args` (no shell) to its end; see runTs. */
export function runCommand(
  command: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<ChildResult> {
  const deadlineMs = options.deadlineMs ?? CHILD_DEADLINE_MS;
  const child = spawn(command, args, {
    cwd: options.cwd ?? ROOT,
    env: childEnv(options.env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `\`${command === process.execPath ? "node" : command} ${args.join(" ")}\` did not finish within ${deadlineMs} ms and was killed.` +
            `\nstdout so far:\n${stdout}\nstderr so far:\n${stderr}`,
        ),
      );
    }, deadlineMs);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    // 'close', not 'exit': by then both pipes are drained.
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, signal, stdout, stderr });
    });
  });
}

/** Kills `child` with SIGKILL (if it still runs) and resolves once it has exited. */
export async function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  await exited;
}
