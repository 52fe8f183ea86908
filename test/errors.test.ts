// Error codes as pgfn reads them: SQLSTATEs from real Postgres errors, errno
// codes from Node, and the one line the CLI prints for each.
import { describe, expect, it } from "vitest";
import { describeError } from "../src/cli.js";
import { errorCodeOf, PgfnError, SQLSTATE, sqlState } from "../src/errors.js";
import { adminUrl } from "./helpers.js";
import { withClient } from "./connections.js";

/** What Postgres throws for `sql`. */
const failure = (sql: string) =>
  withClient(adminUrl(), (client) =>
    client.query(sql).then(
      () => undefined,
      (e: unknown) => e,
    ),
  );

describe("sqlState", () => {
  it("reads a real Postgres error's SQLSTATE, which the table names", async () => {
    expect(sqlState(await failure("select * from pgfn_no_such_table"))).toBe(
      SQLSTATE.UNDEFINED_TABLE,
    );
    expect(sqlState(await failure("select 1/0"))).toBe("22012");
  });

  it("is undefined for errno codes, which errorCodeOf still reads", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
    expect(sqlState(refused)).toBeUndefined();
    expect(errorCodeOf(refused)).toBe("ECONNREFUSED");
    const pipe = Object.assign(new Error("write EPIPE"), { code: "EPIPE", syscall: "write" });
    expect(sqlState(pipe)).toBeUndefined();
    expect(errorCodeOf(pipe)).toBe("EPIPE");
    expect(sqlState(new Error("no code"))).toBeUndefined();
    expect(sqlState(null)).toBeUndefined();
    expect(errorCodeOf({ code: 42 })).toBeUndefined();
  });
});

describe("describeError (the CLI's one line)", () => {
  it("names a Postgres error by its SQLSTATE", async () => {
    expect(describeError(await failure("select 1 / 0"))).toBe(
      "Postgres error 22012: division by zero",
    );
    // A missing table is pgfn's schema missing: the CLI only reads its own.
    expect(describeError(await failure("select * from pgfn.no_such_table"))).toBe(
      'relation "pgfn.no_such_table" does not exist: pgfn is not installed in this database, or not completely. Run `pgfn migrate` first.',
    );
  });

  it("says where it could not connect, with the password hidden", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
    expect(describeError(refused)).toBe(
      "Cannot connect to Postgres at DATABASE_URL (ECONNREFUSED). Is the server running and DATABASE_URL right?",
    );
    const url = "postgres://pgfn:hunter22@db.example:5432/app";
    expect(describeError(refused, { databaseUrl: url } as never)).not.toContain("hunter22");
  });

  it("gives pgfn's own message as it is, and any other error's message", () => {
    expect(describeError(new PgfnError("INVALID_REQUEST", "Bad thing; do this."))).toBe(
      "Bad thing; do this.",
    );
    expect(describeError(Object.assign(new Error("boom"), { code: "ERR_SOMETHING" }))).toBe("boom");
  });
});
