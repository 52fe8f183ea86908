import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The bench is run by `npm run bench`, never as a test.
    exclude: ["bench/**", "node_modules/**", "dist/**"],
    // One Postgres and one migrated template per run (test/globalSetup.ts).
    globalSetup: ["test/globalSetup.ts"],
    // Around every file: nothing left open after its afterAll hooks, a
    // temporary directory of its own (test/leakGuard.ts).
    setupFiles: ["test/leakGuard.ts"],
    // After-hooks in reverse order of registration, so that the leak guard's
    // afterAll (registered first) runs after the file's own.
    sequence: { hooks: "stack" },
    // Files run in parallel, each on a database of its own; tests within a
    // file run in order. Forks, not threads: a file may crash its process
    // (a WASM guard, a killed backend) without taking the others along.
    pool: "forks",
    fileParallelism: true,
    // Two cores; Postgres and the handlers' workers need CPU of their own.
    maxWorkers: 2,
    // Extism imports node:wasi, which warns once per process that it is experimental.
    execArgv: ["--disable-warning=ExperimentalWarning"],
    // Tests that start child processes set their own (test/processes.ts).
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
