// The process entry: bin/pgfn.js runs the compiled copy of this file.

// Extism loads node:wasi, and Node warns on that import that WASI is
// experimental: noise on every command, and not something a user can act on.
// Node installs its own printer as a 'warning' listener; replace it with one
// that drops only that warning.
process.removeAllListeners("warning");
process.on("warning", (warning) => {
  if (warning.name === "ExperimentalWarning" && /WASI/.test(warning.message)) return;
  console.error(`${warning.name}: ${warning.message}`);
});

// A reader that stops reading (`pgfn invoke f | head -1`) closes the pipe,
// and the next write fails with EPIPE, which Node throws as an unhandled
// 'error' event: a stack trace for what is no failure of the command. The
// writes are dropped instead and the command finishes as it would have:
// its exit status stays its own (0, or invoke's 1 for a failed run), not
// 141 (killed by SIGPIPE), which `set -o pipefail` scripts would take for a
// failure of work that was done.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code !== "EPIPE") throw error;
  });
}

const { main } = await import("./cli.js");
await main(process.argv);
