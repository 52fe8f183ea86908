// The one definition of a function's columns (src/functionColumns.ts) and
// of the error codes (src/errors.ts) against the migrated database: a
// migration that changes a column, a default, a range or the code list
// without the TypeScript (or the other way round) fails here.
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RUN_ERROR_CODES } from "../src/errors.js";
import { HTTP_STATUS } from "../src/http/errors.js";
import {
  COLUMN_NAMES,
  columnSpec,
  INFO_COLUMNS,
  type ColumnName,
  type Range,
} from "../src/functionColumns.js";
import { RUN_STATUSES } from "../src/interfaces.js";
import { createTestDatabase, type TestDatabase } from "./helpers.js";

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase("catalog");
});
afterAll(() => t?.drop());

const CHECK_VIOLATION = "23514";
/** integer's own limits, for a bound the definition does not give. */
const INT4 = { min: -2_147_483_648, max: 2_147_483_647 };
/** Well inside real's limits, for a bound the definition does not give. */
const REAL = { min: -1e30, max: 1e30 };

interface CatalogColumn {
  column_name: string;
  data_type: string;
  udt_name: string;
  is_nullable: "YES" | "NO";
  column_default: string | null;
}

async function catalogColumns(table: string): Promise<Map<string, CatalogColumn>> {
  const { rows } = await t.pool.query<CatalogColumn>(
    `select column_name, data_type, udt_name, is_nullable, column_default
     from information_schema.columns
     where table_schema = 'pgfn' and table_name = $1
     order by ordinal_position`,
    [table],
  );
  return new Map(rows.map((r) => [r.column_name, r]));
}

/** The type information_schema reports for a definition's sqlType. */
function catalogType(column: ColumnName): { data_type: string; udt_name?: string } {
  const { sqlType } = columnSpec(column);
  return sqlType === "text[]" ? { data_type: "ARRAY", udt_name: "_text" } : { data_type: sqlType };
}

/** A row with only what has no default: every other column takes its default. */
async function insertMinimal(client: pg.PoolClient, name: string): Promise<void> {
  await client.query(
    `insert into pgfn.functions (name, wasm, wasm_sha256) values ($1, '\\x0061736d01000000', $2)`,
    [name, "0".repeat(64)],
  );
}

describe("pgfn.functions matches src/functionColumns.ts", () => {
  it("has exactly the definition's columns, with their types and nullability", async () => {
    const catalog = await catalogColumns("functions");
    expect([...catalog.keys()].sort()).toEqual([...COLUMN_NAMES].sort());
    for (const column of COLUMN_NAMES) {
      const actual = catalog.get(column)!;
      expect(
        { data_type: actual.data_type, udt_name: actual.udt_name },
        `type of ${column}`,
      ).toMatchObject(catalogType(column));
      expect(actual.is_nullable, `nullability of ${column}`).toBe(
        columnSpec(column).nullable ? "YES" : "NO",
      );
    }
  });

  it("has the definition's defaults", async () => {
    const catalog = await catalogColumns("functions");
    const client = await t.pool.connect();
    try {
      await client.query("begin");
      await insertMinimal(client, "defaults");
      const { rows } = await client.query<Record<string, unknown>>(
        `select * from pgfn.functions where name = 'defaults'`,
      );
      const row = rows[0]!;
      for (const column of COLUMN_NAMES) {
        const spec = columnSpec(column);
        const sqlDefault = catalog.get(column)!.column_default;
        if (spec.defaultSql !== undefined) {
          expect(sqlDefault, `default of ${column}`).toBe(spec.defaultSql);
        } else if (spec.default !== undefined) {
          expect(row[column], `default of ${column}`).toEqual(spec.default);
        } else {
          expect(sqlDefault, `${column} has a default the definition does not give`).toBeNull();
        }
      }
    } finally {
      await client.query("rollback");
      client.release();
    }
  });

  it("pgfn.function_info, what a run reads, has every column but the module", async () => {
    const view = await catalogColumns("function_info");
    expect([...view.keys()].sort()).toEqual([...INFO_COLUMNS].sort());
  });

  it("has the definition's ranges: each bound accepted, one past it refused by the column's own check", async () => {
    const owners = await constraintColumns();
    const problems: string[] = [];
    const client = await t.pool.connect();
    try {
      for (const column of COLUMN_NAMES) {
        const spec = columnSpec(column);
        if (spec.sqlType !== "integer" && spec.sqlType !== "real") continue;
        for (const [value, accepted] of probes(spec.sqlType, spec.range ?? {})) {
          const refusal = await tryUpdate(client, column, value);
          if (accepted && refusal) {
            problems.push(`${column} = ${value} was refused by ${refusal}`);
          } else if (!accepted && !refusal) {
            problems.push(`${column} = ${value} was accepted`);
          } else if (!accepted && refusal && owners.get(refusal)?.join() !== column) {
            problems.push(`${column} = ${value} was refused by ${refusal}, not by its own check`);
          }
        }
      }
    } finally {
      client.release();
    }
    expect(problems).toEqual([]);
  });

  it("has the definition's values for each text column of a fixed set", async () => {
    const problems: string[] = [];
    const client = await t.pool.connect();
    try {
      for (const column of COLUMN_NAMES) {
        const options = (columnSpec(column).type as { options?: readonly string[] }).options;
        if (!options) continue;
        for (const value of options) {
          const refusal = await tryUpdate(client, column, value);
          if (refusal) problems.push(`${column} = '${value}' was refused by ${refusal}`);
        }
        if (!(await tryUpdate(client, column, "not_a_value")))
          problems.push(`${column} = 'not_a_value' was accepted`);
      }
    } finally {
      client.release();
    }
    expect(problems).toEqual([]);
  });
});

/**
 * Values to try and whether the column must take them: each bound and one
 * past it; where the definition gives no bound, the type's own limit must be
 * accepted (a check in SQL that the definition lacks is drift too).
 */
function probes(sqlType: "integer" | "real", range: Range): [number, boolean][] {
  const step = sqlType === "integer" ? 1 : 0.001;
  const limits = sqlType === "integer" ? INT4 : REAL;
  const out: [number, boolean][] = [];
  if (range.min === undefined) out.push([limits.min, true]);
  else if (range.minExclusive) out.push([range.min, false], [range.min + step, true]);
  else out.push([range.min, true], [range.min - step, false]);
  if (range.max === undefined) out.push([limits.max, true]);
  else out.push([range.max, true], [range.max + step, false]);
  return out;
}

/**
 * Sets one column of a valid function, in a transaction rolled back at
 * once; the name of the check constraint that refused it, or undefined.
 */
async function tryUpdate(
  client: pg.PoolClient,
  column: ColumnName,
  value: unknown,
): Promise<string | undefined> {
  await client.query("begin");
  try {
    await insertMinimal(client, "probe");
    // Checks across columns (functions_retry_bounds) are no column's range:
    // without them, a refusal comes from the column's own check. The file's
    // own database, and rolled back with the probe.
    for (const [constraint, columns] of await constraintColumns(client))
      if (columns.length > 1)
        await client.query(
          `alter table pgfn.functions drop constraint ${client.escapeIdentifier(constraint)}`,
        );
    await client.query(
      `update pgfn.functions set ${client.escapeIdentifier(column)} = $1 where name = 'probe'`,
      [value],
    );
    return undefined;
  } catch (error) {
    const e = error as { code?: string; constraint?: string };
    if (e.code !== CHECK_VIOLATION) throw error;
    return e.constraint ?? "a check";
  } finally {
    await client.query("rollback");
  }
}

/** The columns each check constraint of pgfn.functions reads, by name. */
async function constraintColumns(
  db: pg.Pool | pg.PoolClient = t.pool,
): Promise<Map<string, string[]>> {
  const { rows } = await db.query<{ name: string; columns: string[] }>(
    `select c.conname as name, array_agg(a.attname::text order by a.attname) as columns
     from pg_constraint c
     join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any (c.conkey)
     where c.conrelid = 'pgfn.functions'::regclass and c.contype = 'c'
     group by c.conname`,
  );
  return new Map(rows.map((r) => [r.name, r.columns]));
}

describe("error codes: SQL and src/errors.ts agree", () => {
  const CODES = [...RUN_ERROR_CODES].sort();
  const isRunCode = (code: string) => (RUN_ERROR_CODES as readonly string[]).includes(code);

  /** The quoted values a check constraint lists. */
  async function checkValues(table: string, constraint: string): Promise<string[]> {
    const { rows } = await t.pool.query<{ def: string }>(
      `select pg_get_constraintdef(oid) as def from pg_constraint
       where conrelid = $1::regclass and conname = $2`,
      [table, constraint],
    );
    expect(rows, `${table} has ${constraint}`).toHaveLength(1);
    return [...rows[0]!.def.matchAll(/'([^']+)'/g)].map((m) => m[1]!).sort();
  }

  it("function_runs.error_code takes exactly RUN_ERROR_CODES", async () => {
    expect(await checkValues("pgfn.function_runs", "function_runs_error_code")).toEqual(CODES);
  });

  it("function_runs.status takes exactly RUN_STATUSES", async () => {
    expect(await checkValues("pgfn.function_runs", "function_runs_status")).toEqual(
      [...RUN_STATUSES].sort(),
    );
  });

  it("every code a pgfn SQL function writes is one of RUN_ERROR_CODES, with its HTTP status", async () => {
    const { rows } = await t.pool.query<{ name: string; src: string }>(
      `select p.proname as name, p.prosrc as src from pg_proc p
       where p.pronamespace = 'pgfn'::regnamespace`,
    );
    const written: string[] = [];
    const problems: string[] = [];
    for (const { name, src } of rows) {
      for (const m of src.matchAll(
        /error_code\s*:?=\s*'([A-Z_]+)'(?:\s*,\s*http_status\s*:?=\s*(\d+))?/g,
      )) {
        const [, code, status] = m as unknown as [string, string, string | undefined];
        written.push(code);
        if (!isRunCode(code)) problems.push(`${name} writes unknown code ${code}`);
        else if (
          status !== undefined &&
          Number(status) !== HTTP_STATUS[code as keyof typeof HTTP_STATUS]
        )
          problems.push(`${name} writes ${code} with http_status ${status}`);
      }
      // The codes an attempt is abandoned with (the callers of pgfn.abandon_run
      // and of pgfn.abandon_lost_run).
      for (const m of src.matchAll(/abandon_(?:lost_)?run\([^,]+,\s*'([A-Z_]+)'/g)) {
        written.push(m[1]!);
        if (!(m[1]! in HTTP_STATUS)) problems.push(`${name} abandons with unknown code ${m[1]}`);
      }
      // The codes a function compares error_code with (pgfn.circuit_counts).
      for (const m of src.matchAll(/error_code\s+in\s*\(([^)]*)\)/g)) {
        for (const [, code] of m[1]!.matchAll(/'([^']+)'/g))
          if (!isRunCode(code!)) problems.push(`${name} compares with unknown code ${code}`);
      }
    }
    expect(problems).toEqual([]);
    // The reaper's TIMEOUT and a lost run's INTERNAL, at least: the scan saw them.
    expect(written).toEqual(expect.arrayContaining(["TIMEOUT", "INTERNAL"]));
  });
});
