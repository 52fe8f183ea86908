// The leak guard (a vitest setup file, so it wraps every test file): after a
// file's own afterAll hooks, nothing it opened may still be open: no
// database (dropped, or kept because a test failed), no daemon, no pg pool
// or client, no child process, no file in its temporary directory. Anything
// left fails the file, named, and is then closed so the process can exit.
import { mkdirSync, symlinkSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { tmpdir, userInfo } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, inject } from "vitest";
import { installTracking, openResources, RESOURCE_KINDS, setCurrentFile } from "./leaks.js";
import { MACHINE_TMPDIR_VARIABLE } from "./processes.js";

/**
 * How long what a file closed may take to be gone: a pool's sockets close
 * just after `end()` resolves, a SIGKILLed child exits a moment after
 * kill(). Generous, for a loaded machine; a real leak waits this long once.
 */
const CLOSE_GRACE_MS = 10_000;

installTracking();

// A temporary directory for this file alone, inside the run's (removed by
// globalSetup's teardown): what the file leaves there is named below. Set
// before the test file is imported, so everything it does sees it.
const fileName = path.basename(expect.getState().testPath ?? `file-${process.pid}`);
const tmpDir = path.join(inject("tmpRoot"), `${fileName}-${process.pid}`);
// 0755 like /tmp's own entries: as root, the embedded Postgres runs as the
// `postgres` user, which must traverse into a data directory made here.
mkdirSync(tmpDir, { recursive: true, mode: 0o755 });
// tsx (the sandbox threads load TypeScript through it in tests) keeps its
// compile cache in the temporary directory: point this file's at the
// machine's, which stays warm across files and runs.
const tsxCache = `tsx-${process.geteuid?.() ?? userInfo().username}`;
mkdirSync(path.join(tmpdir(), tsxCache), { recursive: true });
symlinkSync(path.join(tmpdir(), tsxCache), path.join(tmpDir, tsxCache));
process.env[MACHINE_TMPDIR_VARIABLE] ??= process.env.TMPDIR ?? "";
process.env.TMPDIR = tmpDir;

// vitest passes the suite second, after a fixtures object it insists on destructuring.
// eslint-disable-next-line no-empty-pattern
beforeAll(({}, suite) => {
  setCurrentFile(suite.file);
});

/** After the guard closed a kind of leak: what those owned goes in moments. */
const OWNED_CLOSE_GRACE_MS = 3_000;

/** Waits until nothing is open, or `graceMs` has passed. */
async function settle(graceMs: number): Promise<void> {
  const deadline = Date.now() + graceMs;
  while (openResources().length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

afterAll(async () => {
  await settle(CLOSE_GRACE_MS);
  const leaks: string[] = [];
  // An owner before what it owns, each kind given time to let go of what it
  // owned: a daemon's pools are not leaks of their own.
  for (const kind of RESOURCE_KINDS) {
    const open = openResources().filter((resource) => resource.kind === kind);
    for (const resource of open) {
      leaks.push(resource.description);
      await resource.close().catch(() => undefined);
    }
    if (open.length > 0) await settle(OWNED_CLOSE_GRACE_MS);
  }

  const leftFiles = (await readdir(tmpDir).catch(() => [])).filter((name) => name !== tsxCache);
  for (const name of leftFiles) leaks.push(`${name} in the temporary directory, never removed`);
  await rm(tmpDir, { recursive: true, force: true });
  setCurrentFile(undefined);

  if (leaks.length > 0) {
    throw new Error(
      `${fileName} left ${leaks.length} thing(s) open after its afterAll hooks (the leak guard has closed them now):\n` +
        leaks.map((leak) => `  - ${leak}`).join("\n"),
    );
  }
}, 60_000);
