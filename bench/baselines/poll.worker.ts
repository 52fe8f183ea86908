// The `poll` baseline's consumer: an outbox relay that polls, in the style of
// Hasura's event triggers. One loop: claim up to 100 undelivered rows (SKIP
// LOCKED, so several relays could share the outbox), "deliver" each by
// recording its start, mark them delivered, commit; sleep 1 s whenever the
// batch was not full, since then the outbox is (nearly) empty.
//
//   DATABASE_URL=... node --import tsx bench/baselines/poll.worker.ts
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";

const BATCH = 100;
const IDLE_SLEEP_MS = 1000;

const url = process.env.DATABASE_URL;
if (!url) throw new Error("poll.worker: DATABASE_URL is not set");

let stopping = false;
const stop = () => {
  stopping = true;
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("close", stop);
process.stdin.resume();

const client = new pg.Client({ connectionString: url, application_name: "bench-poll" });
await client.connect();
while (!stopping) {
  await client.query("begin");
  const { rows } = await client.query<{ id: string }>(
    `select id from bench.poll_outbox where delivered_at is null
      order by id limit ${BATCH} for update skip locked`,
  );
  if (rows.length > 0) {
    const ids = rows.map((r) => r.id);
    await client.query(
      `insert into bench.poll_runs (event_id, started_at, finished_at)
       select id, clock_timestamp(), clock_timestamp() from unnest($1::bigint[]) id`,
      [ids],
    );
    await client.query(
      "update bench.poll_outbox set delivered_at = clock_timestamp() where id = any ($1::bigint[])",
      [ids],
    );
  }
  await client.query("commit");
  if (rows.length < BATCH && !stopping) await sleep(IDLE_SLEEP_MS);
}
await client.end();
process.exit(0);
