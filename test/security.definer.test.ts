// The rule of sql/000008_writer_role.sql, checked on the migrated catalog:
// the only code that runs with pgfn's owner rights is a short, audited list
// of SECURITY DEFINER functions, each with its search_path pinned and none
// executable by PUBLIC. A migration that recreates a function (000014 did
// twelve) or adds one must keep that; a new definer must be audited and
// added to the list below on purpose.
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./helpers.js";

/** The audited SECURITY DEFINER functions (sql/000008, sql/000011, sql/000013). */
const AUDITED = [
  "pgfn.record_row_event(text,text,text,text,jsonb,jsonb)",
  "pgfn.record_row_events(text,text,text,text,jsonb[])",
  "pgfn.wake()",
];

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase("security_definer");
});
afterAll(() => t?.drop());

interface DefinerRow {
  signature: string;
  config: string[] | null;
  public_execute: boolean;
}

async function definers(): Promise<DefinerRow[]> {
  const { rows } = await t.pool.query<DefinerRow>(
    `select p.oid::regprocedure::text as signature, p.proconfig as config,
            has_function_privilege('public', p.oid, 'execute') as public_execute
     from pg_proc p
     where p.pronamespace = 'pgfn'::regnamespace and p.prosecdef
     order by 1`,
  );
  return rows;
}

it("runs only the audited functions with pgfn's owner rights", async () => {
  expect((await definers()).map((r) => r.signature).sort()).toEqual([...AUDITED].sort());
});

it("pins search_path on every SECURITY DEFINER function", async () => {
  for (const row of await definers()) {
    expect({ fn: row.signature, config: row.config }).toEqual({
      fn: row.signature,
      config: expect.arrayContaining(["search_path=pg_catalog, pg_temp"]),
    });
  }
});

it("lets PUBLIC execute no SECURITY DEFINER function", async () => {
  for (const row of await definers()) {
    expect({ fn: row.signature, public: row.public_execute }).toEqual({
      fn: row.signature,
      public: false,
    });
  }
});
