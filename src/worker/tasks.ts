/** The task identifier pgfn.dispatch and retries give their jobs. */
export const RUN_TASK = "pgfn_run";
