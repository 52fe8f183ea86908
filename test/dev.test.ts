// `pgfn dev`, the README's first command: embedded Postgres, demo, runs shown.
import { expect, it } from "vitest";
import { runDev } from "../src/dev.js";

it("starts an embedded Postgres, runs the demo rows and shows their runs", async () => {
  const lines: string[] = [];
  await runDev({
    keepRunning: false,
    print: (line) => lines.push(line),
    env: { PGFN_LOG_LEVEL: "error" },
  });
  const out = lines.join("\n");
  expect(out).toContain("starting an embedded Postgres (DATABASE_URL is not set)");
  expect(out).toMatch(/migrations: \d+ applied, 0 already in place/);
  expect(out).toMatch(/deployed send_welcome_email \(sha256 [0-9a-f]{12}…\)/);
  const runLines = lines.filter((l) =>
    /^run \d+ event \d+ send_welcome_email attempt 1: succeeded/.test(l),
  );
  expect(runLines).toHaveLength(4);
  expect(out).toContain('"greeting":"Welcome, ada@example.com!"');
  // The UPDATE (event 4) greets the new address.
  expect(out).toContain('"event_id":4,"greeting":"Welcome, ada@lovelace.dev!"');
  // The table from pgfn.function_runs: a header and four succeeded rows.
  const all = out.split("\n");
  const table = all.slice(all.indexOf("select * from pgfn.function_runs:") + 1);
  expect(table[0]).toMatch(/^run\s+event\s+function/);
  expect(table.filter((l) => /send_welcome_email\s+1\s+succeeded\s+200/.test(l))).toHaveLength(4);
  // initdb and a server start, then up to 30 s for the demo's runs: on a
  // loaded machine the first two alone can take a minute.
}, 180_000);
