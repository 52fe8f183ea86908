// An event a batch job deferred (max_concurrency, circuit) belongs to its
// pgfn:wait job: when the batch job runs again (its daemon was reaped, or a
// try failed), it must not start that event too, or two attempts of one
// event would run at once (pgfn.begin_run: refused DEFERRED).
import { beforeAll, expect, it } from "vitest";
import { enqueueManyManual } from "./helpers.js";
import { useTestDatabase } from "./fixture.js";

const t = useTestDatabase("batch_defer");

beforeAll(async () => {
  await t.deploy("capped", { example: "echo", maxConcurrency: 1 });
});

it("a deferred event of a batch is not started again by the batch's next try", async () => {
  const [a, b] = await enqueueManyManual(t.pool, "capped", 2);
  await t.pool.query(`select pgfn.dispatch(500, 50)`);
  const batch = (await t.pool.query(`select id from graphile_worker._private_jobs`)).rows[0].id;

  // Try 1 of the batch: a starts, b is refused (max_concurrency 1) and
  // deferred as executeJob does (pgfn.add_wait_job).
  const first = await t.pool.query(
    `select event_id, run_id, refused from pgfn.begin_runs(array[$1, $2]::bigint[], 'd1', $3)`,
    [a, b, batch],
  );
  expect(first.rows.map((r) => r.refused)).toEqual([null, "CONCURRENCY_LIMIT"]);
  await t.pool.query(`select pgfn.add_wait_job($1, 0)`, [b]);
  // a finishes; then the batch runs again (daemon reaped, or the job threw).
  await t.pool.query(`update pgfn.function_runs set status = 'succeeded' where event_id = $1`, [a]);
  await t.pool.query(`select * from pgfn.begin_runs(array[$1, $2]::bigint[], 'd2', $3)`, [
    a,
    b,
    batch,
  ]);
  // b's wait job runs too (max_concurrency raised meanwhile, or another
  // function of the same batch... any free slot).
  await t.pool.query(`update pgfn.functions set max_concurrency = 10 where name = 'capped'`);
  const wait = (
    await t.pool.query(
      `select id from graphile_worker._private_jobs where key = 'pgfn:wait:' || $1`,
      [b],
    )
  ).rows[0].id;
  await t.pool.query(`select * from pgfn.begin_runs(array[$1]::bigint[], 'd3', $2)`, [b, wait]);

  const { rows } = await t.pool.query(
    `select count(*)::int as n from pgfn.function_runs where event_id = $1 and status = 'running'`,
    [b],
  );
  expect(rows[0].n).toBeLessThanOrEqual(1);
});
