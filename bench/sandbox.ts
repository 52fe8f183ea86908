// npm run bench:sandbox: what an invocation costs. Calls of the echo handler
// with 1 KB of JSON in and out, through the thread pool (an instance kept per
// thread and restored between calls) and directly on the main thread, on a new
// instance per call and on a kept one (so the pool's overhead shows as a
// ratio); the JavaScript echo (TypeScript, a fresh QuickJS context per call)
// on the main thread and through the pool; the same with one db_query; how
// late a looping handler's TIMEOUT comes back; and the first (cold)
// invocation of a new module.
// `npm run bench` runs it too, through runSandboxBench.
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { parseArgs } from "node:util";
import { examplePath } from "../examples/build.js";
import { startEmbeddedPostgres } from "../src/embedded.js";
import { formatTable } from "../src/format.js";
import { DbQueryExecutor } from "../src/sandbox/host/dbQuery.js";
import { InstanceCache } from "../src/sandbox/instances.js";
import { invokeHandler } from "../src/sandbox/invocation.js";
import { compileJavaScript } from "../src/sandbox/jsCompile.js";
import { invokeJavaScript } from "../src/sandbox/jsEngine.js";
import { ModuleCache, sha256Hex, type JsModule } from "../src/sandbox/module.js";
import { guardMemory } from "../src/sandbox/memoryGuard.js";
import { createSandbox } from "../src/sandbox/sandbox.js";
import type { HostBinding } from "../src/sandbox/pool.js";

/** The JavaScript echo, as a user would write it. */
const JS_ECHO = `import type { Handler } from "pgfn";
const handle: Handler = (event) => event;
export default handle;`;

export const SANDBOX_HEADERS = [
  "case",
  "p50 ms",
  "p99 ms",
  "calls/s",
  "CPU us/call",
  "p50 vs main",
];

/**
 * Runs the sandbox measurements and returns the table's rows. `url`: a
 * superuser URL for the db_query rows (a role is created and dropped);
 * without one, an embedded Postgres is started for them.
 */
export async function runSandboxBench(options: {
  readonly calls: number;
  readonly threads: number;
  readonly url?: string | undefined;
}): Promise<string[][]> {
  const { calls, threads } = options;
  const input = {
    id: 1,
    attempt: 1,
    trigger: "manual",
    function: "echo",
    payload: { blob: "x".repeat(1000) },
  };
  const pct = (sorted: number[], p: number) =>
    sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

  /**
   * Runs `once` `calls` times with `parallel` in flight; returns p50, p99
   * (ms), calls/s and the process's CPU per call (all threads, µs): steadier
   * than calls/s on a shared machine.
   */
  async function measure(parallel: number, once: () => Promise<unknown>, warmUp = 200) {
    for (let i = 0; i < warmUp; i++) await once();
    const latencies: number[] = [];
    let next = 0;
    const cpu = process.cpuUsage();
    const started = performance.now();
    await Promise.all(
      Array.from({ length: parallel }, async () => {
        while (next++ < calls) {
          const t = performance.now();
          await once();
          latencies.push(performance.now() - t);
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const { user, system } = process.cpuUsage(cpu);
    latencies.sort((a, b) => a - b);
    return {
      p50: pct(latencies, 50),
      p99: pct(latencies, 99),
      rate: latencies.length / seconds,
      cpuUs: (user + system) / latencies.length,
    };
  }

  const echoBytes = await readFile(examplePath("echo"));
  const sandbox = createSandbox({ size: threads, maxInvocationsPerThread: 1_000_000 });
  await sandbox.pool.warm();
  const rows: string[][] = [];
  try {
    const echo = await sandbox.modules.get(sha256Hex(echoBytes), async () => echoBytes);
    const limits = { timeoutMs: 10_000, memoryLimitBytes: 128 * 2 ** 20 };

    const row = (
      name: string,
      r: { p50: number; p99: number; rate: number; cpuUs: number },
      base?: { p50: number },
    ) =>
      rows.push([
        name,
        r.p50.toFixed(3),
        r.p99.toFixed(3),
        r.rate.toFixed(0),
        r.cpuUs.toFixed(0),
        base ? `${(r.p50 / base.p50).toFixed(1)}x` : "",
      ]);

    const direct = await measure(1, () =>
      invokeHandler(echo, input, { memoryLimitBytes: limits.memoryLimitBytes }),
    );
    row("echo, main thread, new instance per call", direct);
    const instances = new InstanceCache();
    row(
      "echo, main thread, kept instance",
      await measure(1, () =>
        invokeHandler(echo, input, { memoryLimitBytes: limits.memoryLimitBytes, instances }),
      ),
      direct,
    );
    row(
      "echo, pool, 1 at a time",
      await measure(1, () => sandbox.pool.invoke({ module: echo, input, ...limits })),
      direct,
    );
    row(
      `echo, pool, ${threads * 2} in flight`,
      await measure(threads * 2, () => sandbox.pool.invoke({ module: echo, input, ...limits })),
      direct,
    );

    // The JavaScript echo: a new QuickJS runtime and context per call
    // (jsEngine.ts), the handler's compiled module evaluated each time.
    // QuickJS's WebAssembly runs at V8's baseline tier in each new thread
    // until it is hot (measured: p50 0.9 ms over the first 2,000 calls on
    // 2 threads, 0.4 ms after); a daemon's threads serve
    // PGFN_SANDBOX_RECYCLE_AFTER (100,000) runs, so these rows measure that
    // steady state, after 2,000 warm-up calls per thread.
    const jsWarmUp = 2_000 * threads;
    const jsBytes = Buffer.from(await compileJavaScript(JS_ECHO, "echo.ts"));
    const jsEcho = await sandbox.modules.get(sha256Hex(jsBytes), async () => jsBytes, "js");
    row(
      "JS echo, main thread, fresh context per call",
      await measure(
        1,
        () =>
          invokeJavaScript((jsEcho as JsModule).code, input, {
            memoryLimitBytes: limits.memoryLimitBytes,
          }),
        jsWarmUp,
      ),
      direct,
    );
    row(
      "JS echo, pool, 1 at a time",
      await measure(1, () => sandbox.pool.invoke({ module: jsEcho, input, ...limits }), jsWarmUp),
      direct,
    );
    row(
      `JS echo, pool, ${threads * 2} in flight`,
      await measure(
        threads * 2,
        () => sandbox.pool.invoke({ module: jsEcho, input, ...limits }),
        jsWarmUp,
      ),
      direct,
    );

    // A host call's round trip (thread -> main -> thread) with a no-op host side;
    // with a database behind it, add the query's own time.
    const queryBytes = await readFile(examplePath("query"));
    const query = await sandbox.modules.get(sha256Hex(queryBytes), async () => queryBytes);
    const host: Record<string, HostBinding> = {
      db_query: async () => ({ rows: [{ one: 1 }], rowCount: 1, fields: ["one"] }),
    };
    row(
      "one db_query (host round trip, no database)",
      await measure(1, () =>
        sandbox.pool.invoke({
          module: query,
          input: { payload: { sql: "select 1" } },
          host,
          ...limits,
        }),
      ),
      direct,
    );

    // The same through a real Postgres: db_query as a role, its own transaction.
    const server = options.url
      ? undefined
      : await startEmbeddedPostgres({
          dataDir: path.join(await mkdtemp(path.join(tmpdir(), "pgfn-bench-")), "data"),
        });
    const url = options.url || server!.connectionString;
    const setup = new pg.Client({ connectionString: url });
    await setup.connect();
    // db_query logs in as the role: a login role, its password in a pgpass file.
    const role = `pgfn_bench_${process.pid}`;
    const password = randomBytes(12).toString("hex");
    await setup.query(`create role ${role} login password '${password}'`);
    const pgpassDir = await mkdtemp(path.join(tmpdir(), "pgfn-bench-pgpass-"));
    const pgpassFile = path.join(pgpassDir, "pgpass");
    await writeFile(pgpassFile, `*:*:*:${role}:${password}\n`, { mode: 0o600 });
    const dbQuery = new DbQueryExecutor({ connectionString: url, poolSize: 4, pgpassFile });
    const realHost: Record<string, HostBinding> = {
      db_query: async (payload) =>
        dbQuery.query(
          { role, deadline: Date.now() + 10_000 },
          (payload as { sql: string }).sql,
          [],
        ),
    };
    try {
      row(
        "one db_query (select 1, real Postgres)",
        await measure(1, () =>
          sandbox.pool.invoke({
            module: query,
            input: { payload: { sql: "select 1 as one" } },
            host: realHost,
            ...limits,
          }),
        ),
        direct,
      );
    } finally {
      await dbQuery.end();
      await setup.query(`drop role ${role}`);
      await rm(pgpassDir, { recursive: true, force: true });
      await setup.end();
      await server?.stop();
    }

    // A loop's stop: how far past its deadline a looping handler's outcome
    // comes back (the pool kills the thread at the deadline and starts
    // another). The contract says within the timeout + 100 ms; a timed unit
    // test could not say that on a loaded machine, so it is measured here.
    const spinBytes = await readFile(examplePath("spin"));
    const spin = await sandbox.modules.get(sha256Hex(spinBytes), async () => spinBytes);
    const jsLoop = async (source: string, name: string) => {
      const bytes = Buffer.from(await compileJavaScript(source, name));
      return sandbox.modules.get(sha256Hex(bytes), async () => bytes, "js");
    };
    const loops = [
      ["WASM loop", spin],
      ["JS loop", await jsLoop("export default () => { for (;;) {} };", "loop.js")],
      [
        "JS promise-chain loop",
        await jsLoop(
          "export default () => { const go = () => Promise.resolve().then(go); return go(); };",
          "chain.js",
        ),
      ],
    ] as const;
    const deadlineMs = 1_000;
    for (const [name, module] of loops) {
      const late: number[] = [];
      for (let i = 0; i < 10; i++) {
        const t = performance.now();
        const outcome = await sandbox.pool.invoke({
          module,
          input,
          ...limits,
          timeoutMs: deadlineMs,
        });
        if (outcome.error?.code !== "TIMEOUT") throw new Error(`${name}: ${outcome.error?.code}`);
        late.push(performance.now() - t - deadlineMs);
      }
      late.sort((a, b) => a - b);
      rows.push([
        `${name} -> TIMEOUT: ms past a 1 s deadline`,
        pct(late, 50).toFixed(3),
        pct(late, 99).toFixed(3),
        "",
        "",
        "",
      ]);
    }

    // Cold: a module never seen (a fresh cache each time): guard + compile + first call.
    const cold: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t = performance.now();
      const modules = new ModuleCache(1, guardMemory);
      const module = await modules.get(sha256Hex(echoBytes), async () => echoBytes);
      await sandbox.pool.invoke({ module, input, ...limits });
      cold.push(performance.now() - t);
    }
    cold.sort((a, b) => a - b);
    rows.push([
      "cold: guard + compile + first call",
      pct(cold, 50).toFixed(3),
      pct(cold, 99).toFixed(3),
      "",
      "",
      "",
    ]);
  } finally {
    await sandbox.close();
  }
  return rows;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { values } = parseArgs({
    options: {
      calls: { type: "string", default: "5000" },
      threads: { type: "string", default: "2" },
    },
  });
  const calls = Number(values.calls);
  const threads = Number(values.threads);
  if (!(calls > 0) || !(threads > 0)) {
    console.error("bench: --calls and --threads take positive numbers");
    process.exit(1);
  }
  const url = process.env.DATABASE_URL;
  const rows = await runSandboxBench({ calls, threads, url });
  console.log(
    `\nsandbox, ${calls} calls per row, ${threads} threads, 1 KB JSON in and out, ${url ? "DATABASE_URL server" : "embedded Postgres"}\n`,
  );
  console.log(formatTable(SANDBOX_HEADERS, rows));
}
