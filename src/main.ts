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

const { main } = await import("./cli.js");
await main(process.argv);
