// The `direct` baseline's consumer: a plain graphile-worker runner, as a
// team would write it in an afternoon. Its one task records when it started
// and when it finished, which is all pgfn's echo handler does in spirit.
//
//   DATABASE_URL=... BENCH_CONCURRENCY=10 node --import tsx bench/baselines/direct.worker.ts
import { Logger, run, type Task } from "graphile-worker";

const url = process.env.DATABASE_URL;
const concurrency = Number(process.env.BENCH_CONCURRENCY ?? "10");
if (!url) throw new Error("direct.worker: DATABASE_URL is not set");

const benchDirect: Task = async (payload, helpers) => {
  const { id, created_at } = payload as { id: number; created_at: string };
  await helpers.withPgClient(async (client) => {
    const { rows } = await client.query<{ id: string }>(
      "insert into bench.direct_runs (event_id, created_at) values ($1, $2) returning id",
      [id, created_at],
    );
    await client.query(
      "update bench.direct_runs set finished_at = clock_timestamp() where id = $1",
      [rows[0]!.id],
    );
  });
};

// graphile-worker logs a line per job at info; pgfn's daemon runs at error
// level in the bench, so this one is kept as quiet.
const logger = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

const runner = await run({
  connectionString: url,
  concurrency,
  // New jobs arrive by LISTEN/NOTIFY; the poll only finds jobs that became due.
  pollInterval: 1000,
  logger,
  taskList: { bench_direct: benchDirect },
});
// The harness closes stdin when it goes away, however it goes.
process.stdin.on("close", () => void runner.stop());
process.stdin.resume();
await runner.promise;
process.exit(0);
