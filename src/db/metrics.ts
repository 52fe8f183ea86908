/** The queries a metrics scrape runs: small aggregates, never a table scan of runs. */
import { sql } from "kysely";
import type { Db } from "./database.js";

/** `pgfn.circuits.state`; a function without a row is closed. */
export type CircuitState = "closed" | "half_open" | "open";

/** Every deployed function with its breaker state. */
export async function circuitStates(
  db: Db,
): Promise<{ readonly name: string; readonly state: CircuitState }[]> {
  // pgfn.circuits is not in the Kysely schema (sql/000006_admission.sql
  // reads and writes it in SQL only), hence the template.
  const { rows } = await sql<{ name: string; state: CircuitState }>`
    select f.name, coalesce(c.state, 'closed') as state
    from pgfn.functions f
    left join pgfn.circuits c on c.function_name = f.name
    order by f.name`.execute(db);
  return rows;
}
