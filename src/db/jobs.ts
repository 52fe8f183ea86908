/**
 * The jobs pgfn gives graphile-worker, and what becomes of an event that
 * runs out of them. The keys, the task and the rules live in SQL
 * (sql/000015_job_contract.sql lists them); these call it.
 */
import { sql } from "kysely";
import type { Db } from "./database.js";

/**
 * Adds the job that runs attempt `attempt` of an event at `runAt`, after
 * the attempt before it failed and may be retried (pgfn.add_retry_job).
 */
export async function addRetryJob(
  db: Db,
  eventId: string,
  attempt: number,
  runAt: Date,
): Promise<void> {
  await sql`select pgfn.add_retry_job(${eventId}::bigint, ${attempt}::integer, ${runAt}::timestamptz)`.execute(
    db,
  );
}

/**
 * Runs the event again in `delayMs`, as a job of its own, because its
 * attempt may not start now; the job that found it waiting then completes.
 * Nothing is recorded: the event did not run (pgfn.add_wait_job).
 */
export async function addWaitJob(db: Db, eventId: string, delayMs: number): Promise<void> {
  await sql`select pgfn.add_wait_job(${eventId}::bigint, ${delayMs}::double precision)`.execute(db);
}

/**
 * Puts the run's event in the dead letters with the run's error, and a new
 * dead letter's event in the function's on_error handler's hands; an open
 * dead letter of the event follows its latest run (pgfn.dead_letter).
 */
export async function deadLetter(db: Db, runId: string): Promise<void> {
  await sql`select pgfn.dead_letter(${runId}::bigint)`.execute(db);
}
