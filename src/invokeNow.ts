/**
 * A synchronous invocation, for `pgfn invoke` and `POST
 * /functions/v1/invoke/:name`: record the event (already marked dispatched,
 * so no daemon runs it too) and run it here, now, through the same executor
 * as a job. The run is recorded like any other, so `pgfn runs` and psql show
 * it. (Running one handler in the sandbox is `sandbox/`'s business.)
 */
import { deleteEvent, insertEvent } from "./db/events.js";
import { unstorableJson } from "./db/jsonb.js";
import { getFunction } from "./db/functions.js";
import type { Run } from "./db/runs.js";
import { PgfnError } from "./errors.js";
import type { EventSource } from "./interfaces.js";
import { assertFunctionName } from "./deploy.js";
import { executeEvent, type ExecutorDeps } from "./worker/execute.js";

/**
 * Runs `name` once with `payload` and returns the recorded run, failed or
 * not. Throws when the function is missing or disabled, the payload cannot
 * be stored, or the run is refused before it starts (circuit open, at
 * max_concurrency; no event is left behind then).
 */
export async function invokeNow(
  deps: ExecutorDeps,
  name: string,
  payload: unknown,
  source: Exclude<EventSource, "database"> = "manual",
): Promise<Run> {
  assertFunctionName(name);
  // Refused here, as the caller's mistake: Postgres would refuse the event's
  // jsonb, which is no fault of pgfn's.
  const unstorable = unstorableJson(payload);
  if (unstorable) {
    throw new PgfnError(
      "INVALID_REQUEST",
      `The payload contains ${unstorable}, which Postgres jsonb cannot store; remove it, or encode the text (e.g. as base64).`,
    );
  }
  const fn = await getFunction(deps.db, name);
  if (!fn || !fn.enabled) {
    throw new PgfnError(
      "FUNCTION_NOT_FOUND",
      fn
        ? `Function "${name}" is disabled: \`pgfn enable ${name}\` (or PATCH {"enabled": true}) enables it.`
        : `Function "${name}" is not deployed (see \`pgfn deploy\`).`,
    );
  }
  const event = await insertEvent(deps.db, {
    functionName: name,
    source,
    payload,
    dispatched: true,
  });
  // The caller gets the outcome: a failure is theirs to handle, not a dead letter.
  const run = await executeEvent(deps, event.id, null, { sync: true }).catch(async (error) => {
    // Refused before it ran (circuit open, at max_concurrency): the caller is
    // told; an event left behind would look like lost work.
    if (error instanceof PgfnError && ["CIRCUIT_OPEN", "CONCURRENCY_LIMIT"].includes(error.code)) {
      await deleteEvent(deps.db, event.id);
    }
    throw error;
  });
  if (!run) throw new PgfnError("INTERNAL", `Event ${event.id} vanished before it ran.`);
  return run;
}
