// npm run bench: pgfn side by side with the alternatives (a direct
// graphile-worker trigger, a polling outbox relay, no trigger at all).
// Latency, sustained throughput, write-path cost, recovery after SIGKILL
// and the sandbox, then the targets. `npm run bench -- --help` for options.
//
// Only the options are parsed here; the harness is imported afterwards, so
// a bad option fails in a moment, before anything starts.
import { parseBenchArgs, UsageError, USAGE } from "./lib/options.js";

let options;
try {
  options = parseBenchArgs(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof UsageError)) throw error;
  console.error(`bench: ${error.message}\nRun \`npm run bench -- --help\` for the options.`);
  process.exit(2);
}
if (!options) {
  console.log(USAGE);
  process.exit(0);
}
// The sandbox loads node:wasi, and Node warns that WASI is experimental:
// noise in the middle of the tables (src/main.ts drops it the same way).
process.removeAllListeners("warning");
process.on("warning", (warning) => {
  if (warning.name === "ExperimentalWarning" && /WASI/.test(warning.message)) return;
  console.error(`${warning.name}: ${warning.message}`);
});
const { runBench } = await import("./harness.js");
process.exitCode = await runBench(options);
