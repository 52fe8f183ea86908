#!/usr/bin/env node
// Runs the compiled CLI in dist/, which `npm ci` builds (the prepare script).
import { existsSync } from "node:fs";

const entry = new URL("../dist/main.js", import.meta.url);
if (!existsSync(entry)) {
  console.error("pgfn: not built yet; run `npm run build` (npm ci does it for you).");
  process.exit(1);
}
await import(entry.href);
