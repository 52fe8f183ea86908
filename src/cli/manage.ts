/**
 * The commands that look after deployed functions: `pgfn functions`, `rm`,
 * `source`, `enable`, `disable`, `schedule`, `unschedule` and `logs`. Each does what
 * its HTTP route or `pgfn.*` SQL function does (the README's CLI section
 * pairs them), so psql, HTTP and the CLI cannot disagree.
 */
import { Command, Option } from "commander";
import { sql } from "kysely";
import { loadConfig } from "../config.js";
import { createDb, type Db } from "../db/database.js";
import {
  deleteFunction,
  getFunction,
  getSource,
  listFunctions,
  RECENT_RUNS,
} from "../db/functions.js";
import { LOG_RUNS_SCANNED, listLogLines } from "../db/runs.js";
import { assertFunctionName } from "../deploy.js";
import { PgfnError, SQLSTATE, sqlState } from "../errors.js";
import { formatFunctionsTable, formatLogLines } from "../format.js";
import { functionListItem } from "../http/views.js";
import { CATCH_UPS } from "../interfaces.js";
import { intOption, LIMIT_RANGE, notDeployed, withPool } from "./common.js";

/** `pgfn logs` without -n. (50) */
const DEFAULT_LOG_LINES = 50;

/** Runs `fn` on a database for one command. */
function withDb<T>(fn: (db: Db) => Promise<T>): Promise<T> {
  return withPool(loadConfig(), (pool) => fn(createDb(pool)));
}

/**
 * Calls a `pgfn.*` SQL function for NAME. Those refuse in sentences written
 * for people: a missing function becomes the CLI's own line for it, a bad
 * argument (a cron, a time zone) the SQL's sentence after `doing`, without
 * its "pgfn.schedule: " prefix.
 */
async function callSql<T>(name: string, doing: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    const state = sqlState(error);
    if (state === SQLSTATE.NO_DATA_FOUND) throw notDeployed(name, error);
    if (state === SQLSTATE.INVALID_PARAMETER_VALUE) {
      const reason = (error as Error).message.replace(/^pgfn\.\w+: /, "");
      const stop = /[.!?]$/.test(reason) ? "" : ".";
      throw new PgfnError("INVALID_REQUEST", `Cannot ${doing}: ${reason}${stop}`, { cause: error });
    }
    throw error;
  }
}

/** `pgfn schedule`'s flags; absent: pgfn.schedule's default. */
interface ScheduleFlags {
  catchUp?: string;
  timezone?: string;
}

/** Adds the commands to `program`, after the ones src/cli.ts defines. */
export function addManageCommands(program: Command): void {
  program
    .command("functions")
    .description(
      `List the deployed functions: runtime, enabled, last run and its status, errors among the latest ${RECENT_RUNS} finished runs (failed or abandoned attempts), schedule.`,
    )
    .option("--json", "print one JSON object per function (as GET /functions/v1 lists them)")
    .action(async (opts: { json?: boolean }) => {
      const functions = await withDb(listFunctions);
      if (opts.json)
        for (const summary of functions) console.log(JSON.stringify(functionListItem(summary)));
      else console.log(formatFunctionsTable(functions));
    });

  program
    .command("rm")
    .description(
      "Delete a function (as DELETE /functions/v1/NAME). Its events and runs stay; events that still arrive for it fail as FUNCTION_NOT_FOUND.",
    )
    .argument("<name>", "function name")
    .action(async (name: string) => {
      assertFunctionName(name);
      const { schedule, errorHandlerOf } = await withDb(
        async (db) => (await deleteFunction(db, name)) ?? Promise.reject(notDeployed(name)),
      );
      console.log(`deleted ${name}; its events and runs stay`);
      if (errorHandlerOf.length > 0)
        console.log(
          `${name} was the on_error of ${errorHandlerOf.join(", ")}: their failures now reach no error handler (its events fail as FUNCTION_NOT_FOUND) until ${name} is deployed again or their on_error changes`,
        );
      if (schedule)
        console.log(
          `${name} still has a schedule, whose runs will fail: \`pgfn unschedule ${name}\` removes it`,
        );
    });

  program
    .command("source")
    .description(
      "Print a JavaScript or TypeScript function's source as deployed (GET /functions/v1/NAME shows it too).",
    )
    .argument("<name>", "function name")
    .action(async (name: string) => {
      assertFunctionName(name);
      const source = await withDb((db) => getSource(db, name));
      if (source === undefined) throw notDeployed(name);
      if (source === null)
        throw new PgfnError(
          "INVALID_REQUEST",
          `Function "${name}" is a WebAssembly module; it has no source to print.`,
        );
      process.stdout.write(source.endsWith("\n") ? source : `${source}\n`);
    });

  program
    .command("enable")
    .description("Enable a function (pgfn.enable).")
    .argument("<name>", "function name")
    .action(async (name: string) => {
      assertFunctionName(name);
      await withDb((db) =>
        callSql(name, `enable ${name}`, () => sql`select pgfn.enable(name => ${name})`.execute(db)),
      );
      console.log(
        `enabled ${name}; events that failed while it was disabled are dead letters: \`select pgfn.retry_dead_letters('${name}')\` runs them again`,
      );
    });

  program
    .command("disable")
    .description(
      "Disable a function (pgfn.disable): its events keep arriving and fail as FUNCTION_NOT_FOUND into dead letters.",
    )
    .argument("<name>", "function name")
    .action(async (name: string) => {
      assertFunctionName(name);
      await withDb((db) =>
        callSql(name, `disable ${name}`, () =>
          sql`select pgfn.disable(name => ${name})`.execute(db),
        ),
      );
      console.log(
        `disabled ${name}; its events fail as FUNCTION_NOT_FOUND into dead letters until \`pgfn enable ${name}\``,
      );
    });

  program
    .command("schedule")
    .description(
      "Run a function at the slots of a cron expression (pgfn.schedule); scheduling it again replaces its schedule. A running daemon's scheduler fires it.",
    )
    .argument("<name>", "function name")
    .argument(
      "<cron>",
      "5 fields, minute hour day-of-month month day-of-week, quoted: '*/5 * * * *'; or @hourly, @daily, ...",
    )
    .addOption(
      new Option(
        "--catch-up <mode>",
        "after downtime, fire every missed slot (all), the most recent one (latest) or none; pgfn.schedule's default is latest",
      ).choices(CATCH_UPS),
    )
    .option(
      "--timezone <zone>",
      "IANA time zone the cron is read in, e.g. Europe/Berlin; pgfn.schedule's default is UTC",
    )
    // An unquoted cron arrives as five arguments (and its * as file names):
    // say what to do rather than commander's "too many arguments".
    .allowExcessArguments()
    .action(async (name: string, cron: string, opts: ScheduleFlags, command: Command) => {
      if (command.args.length > 2)
        throw new PgfnError(
          "INVALID_REQUEST",
          `CRON is one argument: quote it, e.g. pgfn schedule ${name} '*/5 * * * *'.`,
        );
      assertFunctionName(name);
      // Only the flags given: the defaults are pgfn.schedule's own.
      const catchUp = opts.catchUp === undefined ? sql`` : sql`, catch_up => ${opts.catchUp}`;
      const timezone = opts.timezone === undefined ? sql`` : sql`, timezone => ${opts.timezone}`;
      const { rows } = await withDb((db) =>
        callSql(name, `schedule ${name}`, () =>
          sql<{ done: string }>`
            select pgfn.schedule(name => ${name}, cron => ${cron}${catchUp}${timezone}) as done`.execute(
            db,
          ),
        ),
      );
      console.log(rows[0]!.done);
    });

  program
    .command("unschedule")
    .description(
      "Remove a function's schedule (pgfn.unschedule); events it already fired still run.",
    )
    .argument("<name>", "function name")
    .action(async (name: string) => {
      assertFunctionName(name);
      const outcome = await withDb(async (db) => {
        const { rows } = await sql<{ removed: boolean }>`
          select pgfn.unschedule(name => ${name}) as removed`.execute(db);
        if (rows[0]!.removed) return "removed";
        // A schedule outlives its deleted function, so this comes second.
        if (!(await getFunction(db, name))) throw notDeployed(name);
        return "none";
      });
      console.log(outcome === "removed" ? `unscheduled ${name}` : `${name} has no schedule`);
    });

  program
    .command("logs")
    .description(
      `Show what a function's handler logged in its latest ${LOG_RUNS_SCANNED} runs, oldest line first: time (UTC), level, run id, message.`,
    )
    .argument("<name>", "function name")
    .option(
      "-n, --limit <n>",
      "how many lines, the latest",
      intOption("--limit", LIMIT_RANGE),
      DEFAULT_LOG_LINES,
    )
    .option("--json", "print one JSON object per line: run_id, at, level, message")
    .action(async (name: string, opts: { limit: number; json?: boolean }) => {
      assertFunctionName(name);
      const lines = await withDb(async (db) => {
        const found = await listLogLines(db, name, opts.limit);
        // The runs of a deleted function keep their logs: only a name with
        // neither is unknown.
        if (found.length === 0 && !(await getFunction(db, name))) throw notDeployed(name);
        return found;
      });
      if (opts.json) {
        for (const l of lines)
          console.log(
            JSON.stringify({
              run_id: Number(l.runId),
              at: l.at.toISOString(),
              level: l.level,
              message: l.message,
            }),
          );
      } else if (lines.length === 0) {
        console.log(`(no log lines in the latest ${LOG_RUNS_SCANNED} runs of ${name})`);
      } else console.log(formatLogLines(lines));
    });
}
