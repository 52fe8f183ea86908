/**
 * The graphile-worker task every pgfn job is for: the name SQL gives the
 * jobs it makes (pgfn.dispatch, pgfn.add_event_job: sql/000015_job_contract.sql
 * lists them), under which the daemon registers its handler.
 * test/worker.contract.test.ts checks that the two agree.
 */
export const RUN_TASK = "pgfn_run";
