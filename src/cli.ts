/**
 * The `pgfn` command. Thin: parses argv, calls the modules, prints. Every
 * failure is one line on stderr and exit code 1, never a stack trace.
 */
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { Command, Option } from "commander";
import { intOption, LIMIT_RANGE, notDeployed, withPool } from "./cli/common.js";
import { addManageCommands } from "./cli/manage.js";
import { loadConfig, requireDatabaseUrl, type Config } from "./config.js";
import { startDaemon, startInvoker } from "./daemon.js";
import { createDb } from "./db/database.js";
import { getFunction } from "./db/functions.js";
import { listRuns, retryRun } from "./db/runs.js";
import { isJavaScriptFile, JAVASCRIPT_EXTENSIONS } from "./sandbox/jsCompile.js";

/** The first four bytes of every WebAssembly module. */
const WASM_MAGIC = Buffer.from([0x00, 0x61, 0x73, 0x6d]);
import { assertFunctionName, checksDbRole, deployFunction, describeEnvOutcome } from "./deploy.js";
import { runDev } from "./dev.js";
import { errorCodeOf, PgfnError, SQLSTATE, sqlState } from "./errors.js";
import {
  FUNCTION_NAME,
  CLI_NAMES,
  cliFlag,
  columnSpec,
  DEPLOY_COLUMNS,
  defaultText,
  ENV_CHANGES,
  isRepeatable,
  rangeTextOf,
  settingProblems,
  settingsByName,
  type DeployColumn,
  type DeploySettings,
  type EnvChangeSettings,
} from "./functionColumns.js";
import { formatRunFailure, formatRunLine, formatRunsTable, redactUrl } from "./format.js";
import { runView } from "./http/views.js";
import { invokeNow } from "./invokeNow.js";
import { createLogger, silentLogger, type Logger } from "./logger.js";
import { migrate } from "./migrate.js";
import { waitForSignal } from "./signals.js";

/**
 * A setting's number flag: a number is passed on as one, anything else as
 * the text typed, for the setting's own check to refuse with its range
 * ("--timeout-ms must be a whole number between 1000 and 300000 (got "abc")").
 */
function settingNumber(value: string): number | string {
  return /^\s*-?\d+(\.\d+)?\s*$/.test(value) ? Number(value) : value;
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Repeated KEY=VALUE flags as an object. */
function parsePairs(flag: string, pairs: readonly string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq <= 0)
      throw new PgfnError(
        "INVALID_REQUEST",
        `${flag} takes KEY=VALUE; got "${pair.split("=")[0]}..."`,
      );
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return env;
}

/**
 * `pgfn deploy`'s flag for each setting a deploy may set, from its
 * definition (src/functionColumns.ts): "--timeout-ms <ms>  wall-clock limit
 * per run, in ms (1000..300000, default 10000)".
 */
function settingOption(column: DeployColumn): Option {
  const spec = columnSpec(column);
  const { flag, value } = cliFlag(column);
  const range = rangeTextOf(column);
  const byDefault = defaultText(column);
  const notes = [
    range,
    byDefault !== undefined && `default ${byDefault}`,
    isRepeatable(column) && "repeatable",
    // env merges on an update (its own flags say so); any other list is replaced.
    isRepeatable(column) && column !== "env" && "with --update, replaces the stored list",
  ]
    .filter(Boolean)
    .join(", ");
  const help = notes ? `${spec.description} (${notes})` : spec.description;
  const option = new Option(`${flag} <${value}>`, help);
  if (isRepeatable(column)) return option.argParser(collect);
  if (spec.sqlType === "integer" || spec.sqlType === "real") return option.argParser(settingNumber);
  if (spec.sqlType === "boolean")
    return option.choices(["true", "false"]).argParser((v) => v === "true");
  return option;
}

/** `--unset-env KEY` (repeatable) and `--replace-env`, from their definition. */
function envChangeOptions(): { unset: Option; replace: Option } {
  const { unset_env: unset, replace_env: replace } = ENV_CHANGES;
  return {
    unset: new Option(
      `${unset.cli.flag} <${unset.cli.value}>`,
      `${unset.description} (with --update; repeatable)`,
    ).argParser(collect),
    replace: new Option(replace.cli.flag, `${replace.description} (with --update)`),
  };
}

/** The deploy settings and env changes among `pgfn deploy`'s parsed flags, checked. */
function deploySettingsOf(
  opts: Record<string, unknown>,
  options: readonly Option[],
  envOptions: { unset: Option; replace: Option },
) {
  const byColumn: Partial<Record<DeployColumn | "unset_env" | "replace_env", unknown>> = {};
  DEPLOY_COLUMNS.forEach((column, i) => {
    const value = opts[options[i]!.attributeName()];
    if (value === undefined) return;
    const { flag } = cliFlag(column);
    byColumn[column] =
      columnSpec(column).sqlType === "jsonb" ? parsePairs(flag, value as string[]) : value;
  });
  byColumn.unset_env = opts[envOptions.unset.attributeName()];
  if (opts[envOptions.replace.attributeName()] === true) byColumn.replace_env = true;
  const problems = settingProblems(byColumn, CLI_NAMES);
  if (problems.length > 0) throw new PgfnError("INVALID_REQUEST", `${problems.join("; ")}.`);
  return settingsByName(byColumn) as DeploySettings & EnvChangeSettings;
}

/**
 * The settings other than env that a deploy's flags set, by column name:
 * "settings: timeout_ms 5000; on_error alert". On an update they are the
 * ones that changed (the rest kept their values); env has its own line,
 * which never shows values.
 */
function givenSettingsText(
  opts: Record<string, unknown>,
  options: readonly Option[],
  hostsRemoved: readonly string[],
): string | undefined {
  const parts = DEPLOY_COLUMNS.flatMap((column, i) => {
    const value = opts[options[i]!.attributeName()];
    if (column === "env" || value === undefined) return [];
    const text = Array.isArray(value) ? value.join(", ") : String(value);
    // The hosts given replace the list: say which ones that dropped.
    const removed =
      column === "allowed_hosts" && hostsRemoved.length > 0
        ? ` (replaced the list; no longer allowed: ${hostsRemoved.join(", ")})`
        : "";
    return [
      `${column} ${/[\s;,"]/.test(text) && !Array.isArray(value) ? JSON.stringify(text) : text}${removed}`,
    ];
  });
  return parts.length > 0 ? `settings: ${parts.join("; ")}` : undefined;
}

/** The database a connection string names, if it names one. */
function databaseName(url: string): string | undefined {
  try {
    return decodeURIComponent(new URL(url).pathname.slice(1)) || undefined;
  } catch {
    return undefined;
  }
}

/** One line saying what went wrong, for any error. */
export function describeError(error: unknown, config?: Config): string {
  if (error instanceof PgfnError) return error.message;
  const e = error as { message?: string };
  const code = errorCodeOf(error);
  if (
    code === "ECONNREFUSED" ||
    code === "ENOTFOUND" ||
    code === "EAI_AGAIN" ||
    code === "ETIMEDOUT"
  ) {
    const where = config?.databaseUrl ? redactUrl(config.databaseUrl) : "DATABASE_URL";
    return `Cannot connect to Postgres at ${where} (${code}). Is the server running and DATABASE_URL right?`;
  }
  const state = sqlState(error);
  // The two mistakes of a first run, with their fix.
  if (state === SQLSTATE.INVALID_CATALOG_NAME) {
    const name = config?.databaseUrl ? databaseName(config.databaseUrl) : undefined;
    return `${e.message ?? "The database does not exist"}. Create it (\`createdb ${name ?? "NAME"}\`) or point DATABASE_URL at one that exists.`;
  }
  if (state === SQLSTATE.UNDEFINED_TABLE || state === SQLSTATE.INVALID_SCHEMA_NAME) {
    return `${e.message ?? "A table is missing"}: pgfn is not installed in this database, or not completely. Run \`pgfn migrate\` first.`;
  }
  if (state) return `Postgres error ${state}: ${e.message ?? String(error)}`;
  return e.message ?? String(error);
}

/** `pgfn start`'s flags; each --no-X turns a part off even if PGFN_X is true. */
interface StartFlags {
  listener: boolean;
  worker: boolean;
  scheduler: boolean;
  migrate?: boolean;
}

/** This package's version (package.json sits one level above src/ and dist/). */
const PACKAGE_VERSION = (
  JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
    version: string;
  }
).version;

export function buildProgram(): Command {
  const program = new Command()
    .name("pgfn")
    .description(
      "Committed Postgres rows run your sandboxed TypeScript/JavaScript (or WebAssembly) handlers; every outcome is a row in pgfn.function_runs.",
    )
    .version(PACKAGE_VERSION, "-V, --version", "print pgfn's version")
    // Usage errors look like every other error: one line, "pgfn: ...".
    .configureOutput({ outputError: (str, write) => write(str.replace(/^error: /, "pgfn: ")) })
    // The first thing a new user needs: how to point pgfn at a database.
    .addHelpText(
      "after",
      `
Environment:
  DATABASE_URL  the Postgres to use, e.g. postgres://user@localhost:5432/app
                (all commands but dev, which starts its own Postgres without it)
  PGFN_*        the rest, e.g. PGFN_HTTP_PORT, PGFN_ADMIN_TOKEN, PGFN_LOG_LEVEL;
                each variable is in the README, section "Configuration"`,
    );

  program
    .command("migrate")
    .description(
      "Install or upgrade the pgfn and graphile_worker schemas (safe to run repeatedly and concurrently).",
    )
    .action(async () => {
      const config = loadConfig();
      const result = await withPool(config, migrate);
      console.log(
        result.applied.length === 0
          ? `pgfn schema is up to date (${result.alreadyApplied} migrations).`
          : `applied ${result.applied.length} migration(s): ${result.applied.join(", ")}`,
      );
    });

  program
    .command("start")
    .description(
      "Run the daemon: listener (NOTIFY -> jobs), worker (jobs -> handler runs), scheduler (cron slots -> events) and HTTP API (PGFN_HTTP_PORT) until SIGINT/SIGTERM.",
    )
    .option("--no-listener", "do not dispatch events (another daemon does)")
    .option("--no-worker", "do not run handlers (another daemon does)")
    .option("--no-scheduler", "do not fire schedules (another daemon does)")
    .option("--migrate", "apply pending migrations before starting")
    .action(async (opts: StartFlags) => {
      const base = loadConfig();
      const config: Config = {
        ...base,
        listener: base.listener && opts.listener,
        worker: base.worker && opts.worker,
        scheduler: base.scheduler && opts.scheduler,
      };
      const url = requireDatabaseUrl(config);
      if (opts.migrate) await withPool(config, migrate);
      const logger = createLogger({ level: config.logLevel });
      installLastResortHandlers(logger);
      let fatal: (error: Error) => void = () => undefined;
      const failed = new Promise<Error>((resolve) => (fatal = resolve));
      const daemon = await startDaemon({
        connectionString: url,
        config,
        logger,
        // PGFN_HTTP_PORT=0 turns the HTTP API off (docs/design.md section 6).
        ...(config.httpPort !== 0 && { http: { port: config.httpPort, host: config.httpHost } }),
        onFatal: (error) => fatal(error),
      });
      const ended = await Promise.race([waitForSignal(), failed]);
      if (ended instanceof Error) {
        // A part that cannot be restarted here: exit non-zero, so that the
        // process supervisor (systemd, Kubernetes, Docker) starts a fresh
        // daemon. The stop is bounded: what it waits for may be what hangs.
        process.exitCode = 1;
        const timer = setTimeout(() => process.exit(1), FATAL_STOP_TIMEOUT_MS);
        timer.unref();
        await daemon.stop().catch(() => undefined);
        return;
      }
      await daemon.stop();
    });

  const settingOptions = DEPLOY_COLUMNS.map(settingOption);
  const envOptions = envChangeOptions();
  const deploy = program
    .command("deploy")
    .description(
      "Store a WebAssembly module or a TypeScript/JavaScript handler as a function (validated first; nothing is stored on error). With --update, settings left out keep their values and --env merges into the stored env.",
    )
    .argument("<name>", `function name, ${FUNCTION_NAME.source}`)
    .argument(
      "<file>",
      `the .wasm file (Extism plugin exporting \`handle\`), or a ${JAVASCRIPT_EXTENSIONS.join("/")} file (at most 1 MiB) whose default export (or \`handle\`) is (event, ctx) => result`,
    );
  for (const option of settingOptions) deploy.addOption(option);
  deploy
    .addOption(envOptions.unset)
    .addOption(envOptions.replace)
    .option(
      "--update",
      "replace the function's module if it exists; settings left out keep their values",
    )
    .action(async (name: string, file: string, opts: Record<string, unknown>) => {
      const config = loadConfig();
      const settings = deploySettingsOf(opts, settingOptions, envOptions);
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (error) {
        throw new PgfnError(
          "INVALID_REQUEST",
          `Cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}.`,
        );
      }
      const javascript = isJavaScriptFile(file);
      // A WebAssembly module is known by its first bytes, whatever its name.
      if (!javascript && !/\.wasm$/i.test(file) && !bytes.subarray(0, 4).equals(WASM_MAGIC)) {
        throw new PgfnError(
          "INVALID_REQUEST",
          `${file} is neither a WebAssembly module (.wasm) nor a ${JAVASCRIPT_EXTENSIONS.join("/")} handler: pgfn deploy takes one of those.`,
        );
      }
      const code = javascript
        ? { source: bytes.toString("utf8"), fileName: file }
        : { wasm: bytes };
      const url = requireDatabaseUrl(config);
      const result = await withPool(config, (pool) =>
        deployFunction(
          createDb(pool),
          { ...settings, name, ...code, update: Boolean(opts.update) },
          { names: CLI_NAMES, checkDbRole: checksDbRole(config.dbQueryUrl, url) },
        ),
      );
      console.log(
        `${result.created ? "deployed" : "updated"} ${result.name} (${code.wasm ? "" : "JavaScript, "}sha256 ${result.wasmSha256}, ${bytes.byteLength} bytes)`,
      );
      const env = describeEnvOutcome(result.env);
      if (env) console.log(env);
      const given = givenSettingsText(opts, settingOptions, result.allowedHostsRemoved);
      if (given) console.log(given);
    });

  program
    .command("invoke")
    .description(
      "Run a function once, now, with a JSON payload; prints the recorded run. Exit code 1 if it failed.",
    )
    .argument("<name>", "function name")
    .argument("[json]", "the payload (JSON)", "{}")
    .option("--json", "print the run as one JSON object (as the HTTP API shows runs)")
    .action(async (name: string, json: string, opts: { json?: boolean }) => {
      const config = loadConfig();
      let payload: unknown;
      try {
        payload = JSON.parse(json);
      } catch (error) {
        throw new PgfnError(
          "INVALID_REQUEST",
          `The payload is not valid JSON: ${(error as Error).message}.`,
        );
      }
      const daemon = await startInvoker({
        connectionString: requireDatabaseUrl(config),
        config: { ...config, daemonId: `cli-${process.pid}` },
        logger: silentLogger(),
      });
      const run = await invokeNow(daemon.executor, name, payload).finally(() => daemon.stop());
      if (opts.json) console.log(JSON.stringify(runView(run)));
      else {
        console.log(formatRunLine(run));
        const more =
          run.status === "succeeded" ? JSON.stringify(run.result, null, 2) : formatRunFailure(run);
        if (more) console.log(more);
      }
      if (run.status !== "succeeded") process.exitCode = 1;
    });

  program
    .command("runs")
    .description("Show the latest runs (from pgfn.function_runs), newest first.")
    .argument("[name]", "only this function's runs")
    .option("-n, --limit <n>", "how many", intOption("--limit", LIMIT_RANGE), 20)
    .option(
      "--json",
      "print one JSON object per run (as the HTTP API shows runs) instead of a table",
    )
    .action(async (name: string | undefined, opts: { limit: number; json?: boolean }) => {
      const config = loadConfig();
      if (name !== undefined) assertFunctionName(name);
      const runs = await withPool(config, async (pool) => {
        const db = createDb(pool);
        const found = await listRuns(db, {
          limit: opts.limit,
          ...(name !== undefined && { functionName: name }),
        });
        // A deleted function's runs stay and are shown: only a name with
        // neither runs nor a function is unknown (a typo, mostly).
        if (name !== undefined && found.length === 0 && !(await getFunction(db, name)))
          throw notDeployed(name);
        return found;
      });
      if (opts.json) for (const run of runs) console.log(JSON.stringify(runView(run)));
      else console.log(formatRunsTable(runs));
    });

  program
    .command("retry")
    .description(
      "Run a run's event again, as a new event (pgfn.retry); a running daemon picks it up.",
    )
    .argument("<run_id>", "the run to retry (function_runs.id)", intOption("RUN_ID"))
    .option(
      "--force",
      "retry even if the run's event was retried or replayed already (its handler runs once more)",
    )
    .action(async (runId: number, opts: { force?: boolean }) => {
      const config = loadConfig();
      if (runId < 1)
        throw new PgfnError("INVALID_REQUEST", `RUN_ID must be a run id, over 0 (got ${runId}).`);
      const eventId = await withPool(config, (pool) =>
        retryRun(createDb(pool), runId, { force: opts.force === true }),
      ).catch((error: unknown) => {
        // Said as the CLI's own words: no "Postgres error P0002: pgfn.retry: ...".
        if (sqlState(error) === SQLSTATE.NO_DATA_FOUND)
          throw new PgfnError(
            "INVALID_REQUEST",
            `there is no run ${runId} (\`pgfn runs\` lists the latest runs).`,
            { cause: error },
          );
        if (sqlState(error) !== SQLSTATE.OBJECT_NOT_IN_PREREQUISITE_STATE) throw error;
        // Postgres' hint says how in SQL; here it is the flag.
        throw new PgfnError(
          "CONFLICT",
          `${(error as Error).message}. To retry it once more anyway: pgfn retry ${runId} --force`,
          { cause: error },
        );
      });
      console.log(`run ${runId}: its event runs again as event ${eventId}`);
    });

  program
    .command("dev")
    .description(
      "Try pgfn: embedded Postgres (unless DATABASE_URL is set), a demo function, table, trigger and rows; prints runs until Ctrl-C.",
    )
    .option("--no-keep-running", "exit after the demo rows have run")
    .option(
      "--typescript",
      "deploy the demo handler in TypeScript (examples/demo-ts/welcome.ts; its path is printed)",
    )
    .action(async (opts: { keepRunning: boolean; typescript?: boolean }) => {
      await runDev({ keepRunning: opts.keepRunning, typescript: opts.typescript === true });
    });

  // functions, rm, enable, disable, schedule, unschedule, logs.
  addManageCommands(program);

  return program;
}

/** How long `pgfn start` gives its stop after a fatal error before it exits anyway. (10000) */
const FATAL_STOP_TIMEOUT_MS = 10_000;

/**
 * The last resort, for errors that escaped every handler in pgfn and its
 * dependencies. The daemon does not rely on it: every path that can fail on
 * a database outage handles its error where it happens.
 *
 * An unhandled rejection is logged and the daemon keeps running. A rejected
 * promise has finished unwinding and leaves no half-run synchronous code
 * behind; dying for it would end every run in flight, and the next daemon
 * that picks those up would die of the same rejection (issue 10, finding
 * 3). An uncaught exception is different: it can leave any state half
 * changed, and Node cannot promise a consistent process after one, so it is
 * logged and the process exits 1 for its supervisor to restart it.
 */
export function installLastResortHandlers(logger: Logger): void {
  process.on("unhandledRejection", (reason) => {
    const error = reason instanceof Error ? reason : new Error(String(reason));
    logger.error(
      { operation: "process", error: error.message, stack: error.stack },
      "unhandled promise rejection (a bug in pgfn or a dependency); the daemon keeps running",
    );
  });
  process.on("uncaughtException", (error) => {
    logger.fatal(
      { operation: "process", error: error.message, stack: error.stack },
      "uncaught exception; exiting so that the process supervisor restarts pgfn",
    );
    process.exit(1);
  });
}

export async function main(argv: readonly string[] = process.argv): Promise<void> {
  let config: Config | undefined;
  try {
    config = loadConfig();
  } catch {
    // Reported by the command itself, with the variable's name.
  }
  try {
    await buildProgram().parseAsync([...argv]);
  } catch (error) {
    console.error(`pgfn: ${describeError(error, config)}`);
    if (process.env.PGFN_LOG_LEVEL === "debug" && error instanceof Error)
      console.error(error.stack);
    process.exitCode = 1;
  }
}
