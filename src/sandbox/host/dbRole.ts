/**
 * Connecting as a function's `db_role`: the connection settings (the server
 * of PGFN_DB_QUERY_URL, the user replaced by the role), its password (the
 * standard pgpass file, never the daemon's), and the check that refuses a
 * role from which handler SQL could reach more than its own grants.
 *
 * The session user of every db_query connection is the db_role itself, so
 * `SET ROLE`, `set_config('role', ...)` or dynamic SQL in a DO block can only
 * reach roles the db_role was granted, however the SQL text is written.
 */
import { readFile, stat } from "node:fs/promises";
import { homedir, userInfo } from "node:os";
import path from "node:path";
import pg from "pg";
import { parseIntoClientConfig } from "pg-connection-string";
import { SQLSTATE, sqlState } from "../../errors.js";
import { HostFunctionError } from "./errors.js";

/**
 * Built-in roles that reach the server's files and programs, other roles'
 * sessions (the daemon's own, when it is not a superuser) or every table
 * (`copy ... to program`, `pg_read_file`, `pg_terminate_backend`, reading
 * `pgfn.functions.env`), or the text of every session's current query (other
 * handlers' SQL, with whatever literals it holds: pg_read_all_stats, which
 * pg_monitor includes). pg_read_all_data and pg_write_all_data exist from
 * Postgres 14 on; a missing one is skipped.
 */
const DANGEROUS_BUILTIN_ROLES: readonly string[] = [
  "pg_execute_server_program",
  "pg_signal_backend",
  "pg_read_server_files",
  "pg_write_server_files",
  "pg_read_all_data",
  "pg_write_all_data",
  "pg_read_all_stats",
  "pg_monitor",
];

/** Schemas whose owners (or owners of anything in them) a db_role must not reach. */
const PGFN_SCHEMAS: readonly string[] = ["pgfn", "graphile_worker"];

/** The columns of pgfn.functions that hold every function's secrets (env) and code. */
const SECRET_COLUMNS: readonly string[] = ["env", "source", "wasm"];

/**
 * pgfn's SECURITY DEFINER functions that may run for a db_role: audited
 * (sql/000008, sql/000013; test/security.definer.test.ts keeps the list),
 * they only record events, from a trigger, for members of pgfn_writer. Any
 * other definer in pgfn runs with the rights of pgfn's owner, who reads
 * every function's env and code.
 */
const AUDITED_DEFINERS: readonly string[] = [
  "pgfn.record_row_event(text,text,text,text,jsonb,jsonb)",
  "pgfn.record_row_events(text,text,text,text,jsonb[])",
];

/** The connection settings of `url` for `role`; the URL's password only if its user is `role`. */
export function roleConnectionConfig(
  url: string,
  role: string,
  options: { readonly pgpassFile?: string; readonly applicationName: string },
): pg.ClientConfig {
  const base = parseIntoClientConfig(url);
  const urlUser = base.user || process.env.PGUSER || userInfo().username;
  const urlPassword = typeof base.password === "string" ? base.password : undefined;
  // pg names the database after the user when none is given; that is the
  // URL's user, not the db_role.
  const database = base.database || process.env.PGDATABASE || urlUser;
  return {
    ...base,
    user: role,
    database,
    application_name: options.applicationName,
    // Asked only when the server wants a password. A function, so pg never
    // falls back to PGPASSWORD (the daemon's) or reads pgpass on its own.
    password: async (params: { host?: string; port?: number; database?: string }) => {
      if (urlPassword && urlUser === role) return urlPassword;
      return pgpassPasswordOrFail(
        { host: params.host, port: params.port, database: params.database, user: role },
        options.pgpassFile,
      );
    },
  } as pg.ClientConfig;
}

/** The pgpass file libpq would read: PGPASSFILE, else ~/.pgpass. */
export function pgpassPath(explicit?: string): string {
  return explicit ?? process.env.PGPASSFILE ?? path.join(homedir(), ".pgpass");
}

interface PgpassKey {
  readonly host: string | undefined;
  readonly port: number | undefined;
  readonly database: string | undefined;
  readonly user: string;
}

/**
 * The password for `key` from the pgpass file, with libpq's rules: lines
 * `host:port:database:user:password`, `*` matches anything, `\:` and `\\`
 * escape, `#` starts a comment, the first match wins, `localhost` matches a
 * Unix socket, and a file readable by group or others is ignored.
 */
export async function pgpassPassword(
  key: PgpassKey,
  file: string = pgpassPath(),
): Promise<{ password: string | undefined; problem: string | undefined }> {
  let text: string;
  try {
    const info = await stat(file);
    if (!info.isFile()) return { password: undefined, problem: `${file} is not a plain file` };
    if (process.platform !== "win32" && (info.mode & 0o077) !== 0) {
      return {
        password: undefined,
        problem: `${file} is ignored because group or others may read it (chmod 0600 ${file})`,
      };
    }
    text = await readFile(file, "utf8");
  } catch {
    return { password: undefined, problem: `there is no readable ${file}` };
  }
  const host = key.host === undefined || key.host.startsWith("/") ? "localhost" : key.host;
  const wanted = [host, String(key.port ?? 5432), key.database ?? "", key.user];
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === "" || line.startsWith("#")) continue;
    const fields = splitPgpassLine(line);
    if (fields.length < 5) continue;
    if (wanted.every((value, i) => fields[i] === "*" || fields[i] === value)) {
      return { password: fields.slice(4).join(":"), problem: undefined };
    }
  }
  return { password: undefined, problem: `${file} has no line for it` };
}

/** Fields of a pgpass line: split on unescaped colons, `\x` means x. */
function splitPgpassLine(line: string): string[] {
  const fields: string[] = [];
  let current = "";
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "\\" && i + 1 < line.length) current += line[++i];
    else if (c === ":" && fields.length < 4) {
      fields.push(current);
      current = "";
    } else current += c;
  }
  fields.push(current);
  return fields;
}

async function pgpassPasswordOrFail(key: PgpassKey, file: string | undefined): Promise<string> {
  const where = pgpassPath(file);
  const { password, problem } = await pgpassPassword(key, where);
  if (password !== undefined) return password;
  throw new HostFunctionError(
    `db_query refused: the server asks for db_role "${key.user}"'s password and ${problem}. ` +
      `Add the line ${pgpassLine(key)} to the pgpass file the daemon reads (PGPASSFILE, else ~/.pgpass; mode 0600).`,
    false,
  );
}

function pgpassLine(key: PgpassKey): string {
  const esc = (s: string) => s.replace(/[\\:]/g, (c) => `\\${c}`);
  const host = key.host === undefined || key.host.startsWith("/") ? "localhost" : key.host;
  return `${esc(host)}:${key.port ?? 5432}:${esc(key.database ?? "*")}:${esc(key.user)}:PASSWORD`;
}

/**
 * A failed login as `role`, in the user's terms. Refusals (the role cannot
 * log in as configured) are non-transient; anything else is left to the
 * caller's classification (a server that is down is transient).
 */
export function loginFailure(role: string, error: unknown): HostFunctionError | undefined {
  if (error instanceof HostFunctionError) return error;
  const state = sqlState(error);
  const detail = error instanceof Error ? error.message : String(error);
  const id = sqlIdent(role);
  if (state === SQLSTATE.INVALID_AUTHORIZATION_SPECIFICATION) {
    return new HostFunctionError(
      `db_query refused: cannot log in as db_role "${role}" (${detail}). ` +
        `db_query logs in as the function's db_role itself: make it a login role ` +
        `(alter role ${id} login; or create role ${id} login password '...'), allow it in pg_hba.conf, ` +
        `and put its password in the pgpass file the daemon reads (PGPASSFILE, else ~/.pgpass; mode 0600).`,
      false,
      { cause: error },
    );
  }
  if (state === SQLSTATE.INVALID_PASSWORD) {
    return new HostFunctionError(
      `db_query refused: the password for db_role "${role}" was rejected (${detail}). ` +
        `Put its current password in the pgpass file the daemon reads (PGPASSFILE, else ~/.pgpass; mode 0600).`,
      false,
      { cause: error },
    );
  }
  return undefined;
}

interface RoleFacts {
  session_user: string;
  canlogin: boolean;
  superuser: boolean;
  /** The role initdb made (the cluster's owner): it cannot stop being a superuser. */
  bootstrap: boolean;
  createrole: boolean;
  replication: boolean;
  superusers_reached: string[];
  builtins_reached: string[];
  owners_reached: string[];
  creates_in: string[];
  /** Roles within reach (itself included) that hold CREATE in creates_in. */
  creates_holders: string[];
  daemon_reached: boolean;
  /** pgfn.functions.env (or .source, .wasm), or a relation showing them, that it may select. */
  reads_secrets: string[];
  /** SECURITY DEFINER functions that may hand them over, that it may execute. */
  runs_definers: string[];
  /** The grants that let it do either: `revoke ... from ...;` statements. */
  secret_revokes: string[];
  /** The roles those grants are to, other than itself and PUBLIC. */
  secret_holders: string[];
  /** Roles within reach (itself included) that may insert into or update pgfn.functions. */
  functions_writers: string[];
}

/** What runs the facts query: a pg client, or one connection of a Kysely database. */
export interface RoleQueryable {
  query<R>(text: string, values: readonly unknown[]): Promise<{ rows: R[] }>;
}

/**
 * The facts about `role` that db_query judges it by, read through `client`
 * (one connection: the search_path set here must be the one the query sees),
 * or undefined when there is no such role.
 */
async function roleFacts(
  client: RoleQueryable,
  role: string,
  daemonRole: string | undefined,
): Promise<RoleFacts | undefined> {
  // The role may have set its own search_path (alter role ... set
  // search_path) to a schema of its own with a pg_has_role or pg_roles that
  // says "no": resolve every name in pg_catalog while checking.
  await client.query("set search_path = pg_catalog, pg_temp", []);
  try {
    const { rows } = await client.query<RoleFacts>(
      `with recursive
            me as (select oid, rolcanlogin, rolsuper, rolcreaterole, rolreplication from pg_roles
                   where rolname = $4::text),
            schemas as (select oid, nspowner from pg_namespace where nspname = any($1::text[])),
            owners as (
              select nspowner as owner from schemas
              union select c.relowner from pg_class c where c.relnamespace in (select oid from schemas)
              union select p.proowner from pg_proc p where p.pronamespace in (select oid from schemas)),
            functions as (
              select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = 'pgfn' and c.relname = 'functions'),
            -- Itself and every role it is a member of: has_*_privilege
            -- follows only inherited grants, but handler SQL can SET ROLE
            -- to a role it is a NOINHERIT member of and use that role's.
            reach as (select r.oid, r.rolname from pg_roles r, me
                      where pg_has_role(me.oid, r.oid, 'MEMBER')),
            -- Whose grants it may use: those roles and PUBLIC (grantee 0).
            grantees as (select oid from reach union all select 0::oid),
            secret_columns as (
              select a.attrelid as rel, a.attnum, a.attname from pg_attribute a
              where a.attrelid in (select oid from functions) and a.attname = any($5::text[])
                and not a.attisdropped),
            -- Relations that show them: pgfn.functions, any relation in pgfn
            -- with an env column (pgfn.function_info, a copy), and every view
            -- or materialized view over one of those, in any schema. Postgres
            -- records a view's whole-row use (select f from pgfn.functions f)
            -- as a use of the relation, like any other, so any view over one
            -- counts. A table filled from one (create table as) is not seen.
            showing(rel) as (
              select oid from functions
              union
              select a.attrelid from pg_attribute a join pg_class c on c.oid = a.attrelid
              where c.relnamespace = (select oid from pg_namespace where nspname = 'pgfn')
                and a.attname = 'env' and a.attnum > 0 and not a.attisdropped
              union
              select rw.ev_class from showing s
              join pg_depend d on d.refclassid = 'pg_class'::regclass and d.refobjid = s.rel
                and d.classid = 'pg_rewrite'::regclass
              join pg_rewrite rw on rw.oid = d.objid and rw.rulename = '_RETURN'),
            -- What it may select of them: of pgfn.functions the secret
            -- columns (a grant of its other columns is harmless), of the
            -- others any column. Schema USAGE is not asked for: without it
            -- pg_stats still shows the most common values of every column
            -- a role may select.
            readable as (
              select sc.rel, sc.attname::text as col from secret_columns sc
              where exists (select 1 from reach
                            where has_column_privilege(reach.oid, sc.rel, sc.attnum, 'SELECT'))
              union all
              select s.rel, null from showing s
              where s.rel not in (select oid from functions)
                and exists (select 1 from reach
                            where has_any_column_privilege(reach.oid, s.rel, 'SELECT'))),
            -- SECURITY DEFINER functions that could hand them over: in pgfn
            -- every one but the audited and triggers (which cannot be
            -- called), elsewhere those whose SQL body uses a relation
            -- showing them (Postgres records no uses for a plpgsql body).
            definers as (
              select p.oid from pg_proc p
              where p.prosecdef
                and ((p.pronamespace = (select oid from pg_namespace where nspname = 'pgfn')
                      and p.prorettype not in ('trigger'::regtype, 'event_trigger'::regtype)
                      and p.oid::regprocedure::text <> all($6::text[]))
                     or exists (select 1 from pg_depend d
                                where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                                  and d.refclassid = 'pg_class'::regclass
                                  and d.refobjid in (select rel from showing)))
                and exists (select 1 from reach
                            where has_function_privilege(reach.oid, p.oid, 'EXECUTE'))),
            -- The grants that give it those: to a role within reach or to
            -- PUBLIC, on the relation, on a column, or on the function (a
            -- function nobody granted anything is PUBLIC's to execute).
            grants as (
              select c.oid::regclass::text as object, null::text as cols, 'select' as privilege,
                     g.grantee
              from pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) g
              where c.oid in (select rel from readable) and g.privilege_type = 'SELECT'
                and g.grantee in (select oid from grantees)
              union all
              select c.oid::regclass::text, string_agg(quote_ident(a.attname), ', ' order by a.attnum),
                     'select', g.grantee
              from pg_class c join pg_attribute a on a.attrelid = c.oid,
                   aclexplode(a.attacl) g
              where c.oid in (select rel from readable) and a.attnum > 0 and not a.attisdropped
                and (c.oid not in (select oid from functions) or a.attname = any($5::text[]))
                and g.privilege_type = 'SELECT' and g.grantee in (select oid from grantees)
              group by c.oid, g.grantee
              union all
              select 'function ' || p.oid::regprocedure::text, null, 'execute', g.grantee
              from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) g
              where p.oid in (select oid from definers) and g.privilege_type = 'EXECUTE'
                and g.grantee in (select oid from grantees))
       select session_user::text as session_user, me.rolcanlogin as canlogin,
              me.rolsuper as superuser, me.oid = 10 as bootstrap, me.rolcreaterole as createrole,
              me.rolreplication as replication,
              array(select rolname::text from pg_roles r
                    where r.rolsuper and r.oid <> me.oid and pg_has_role(me.oid, r.oid, 'MEMBER')
                    order by 1) as superusers_reached,
              array(select rolname::text from pg_roles r
                    where r.rolname = any($2::text[]) and pg_has_role(me.oid, r.oid, 'MEMBER')
                    order by 1) as builtins_reached,
              array(select distinct r.rolname::text from owners o join pg_roles r on r.oid = o.owner
                    where pg_has_role(me.oid, r.oid, 'MEMBER') order by 1) as owners_reached,
              array(select nspname::text from pg_namespace n
                    where n.oid in (select oid from schemas)
                      and exists (select 1 from reach
                                  where has_schema_privilege(reach.oid, n.oid, 'CREATE'))
                    order by 1) as creates_in,
              array(select reach.rolname::text from reach, pg_namespace n
                    where n.oid in (select oid from schemas)
                      and has_schema_privilege(reach.oid, n.oid, 'CREATE')
                    group by 1 order by 1) as creates_holders,
              -- By name, not to_regrole: that parses an identifier, so a
              -- mixed-case or dotted daemon role would be another role or none.
              coalesce((select pg_has_role(me.oid, d.oid, 'MEMBER') from pg_roles d
                        where d.rolname = $3::text), false) as daemon_reached,
              array(select distinct case when col is null then rel::regclass::text
                                         else format('%s.%I', rel::regclass, col) end
                    from readable order by 1) as reads_secrets,
              array(select oid::regprocedure::text from definers order by 1) as runs_definers,
              array(select distinct format('revoke %s%s on %s from %s;', privilege,
                                           coalesce(' (' || cols || ')', ''), object,
                                           coalesce(quote_ident(r.rolname), 'public'))
                    from grants left join pg_roles r on r.oid = grants.grantee
                    order by 1) as secret_revokes,
              array(select distinct r.rolname::text from grants join pg_roles r on r.oid = grants.grantee
                    where r.oid <> me.oid order by 1) as secret_holders,
              array(select reach.rolname::text from reach, functions f
                    where has_any_column_privilege(reach.oid, f.oid, 'INSERT')
                       or has_any_column_privilege(reach.oid, f.oid, 'UPDATE')
                    order by 1) as functions_writers
       from me`,
      [
        PGFN_SCHEMAS,
        DANGEROUS_BUILTIN_ROLES,
        daemonRole ?? null,
        role,
        SECRET_COLUMNS,
        AUDITED_DEFINERS,
      ],
    );
    return rows[0];
  } finally {
    await client.query("reset search_path", []);
  }
}

/** Why db_query refuses a role, and the fix, in words that follow its name. */
export interface RoleRefusal {
  /** "is a superuser", "has CREATEROLE (it could grant itself other roles)", ... */
  readonly why: string;
  /** A sentence naming the fix, often the SQL to run. */
  readonly fix: string;
}

/**
 * Why db_query must not run handler SQL as the role `facts` describe: it
 * is, or can become, a superuser, a role that can grant itself any role
 * (CREATEROLE), one with REPLICATION (logical decoding from SQL), a member
 * of a built-in role with file, program, signal or all-data access, the
 * owner of pgfn's or graphile-worker's objects (every function's env, the
 * job queue), a role that may create objects in those schemas, the daemon's
 * own role, a role that may write `pgfn.functions`, or one that may read
 * its env, source or wasm (every function's secrets and code), directly,
 * through a view showing them (like `pgfn.function_info`) or through a
 * SECURITY DEFINER function that could return them.
 * Undefined when none of these holds.
 */
function refusalOf(
  role: string,
  f: RoleFacts,
  daemonRole: string | undefined,
): RoleRefusal | undefined {
  const id = sqlIdent(role);
  if (f.superuser) {
    const own = `Give the function a role of its own with only the grants it needs (see the README, "db_query roles")`;
    // Not a fix for the cluster's own superuser, nor for the role pgfn itself
    // connects as (the daemon would lose what it migrates and runs with).
    return {
      why: "is a superuser",
      fix:
        f.bootstrap || role === daemonRole
          ? `${own}: e.g. create role greeter login; grant select on public.users to greeter; then --db-role greeter.`
          : `${own}, or run: alter role ${id} nosuperuser;`,
    };
  }
  if (f.superusers_reached.length > 0) {
    return {
      why: `is a member of superuser role ${list(f.superusers_reached)}`,
      fix: `Revoke that membership (revoke ${f.superusers_reached.map((r) => sqlIdent(r)).join(", ")} from ${id}; or the role that passes it on).`,
    };
  }
  if (f.createrole) {
    return {
      why: "has CREATEROLE (it could grant itself other roles)",
      fix: `Run: alter role ${id} nocreaterole;`,
    };
  }
  if (f.daemon_reached) {
    return {
      why: `is, or is a member of, the role the daemon connects as ("${daemonRole}")`,
      fix: 'Give the function a role of its own (see the README, "db_query roles").',
    };
  }
  if (f.owners_reached.length > 0) {
    return {
      why: `is, or is a member of, ${list(f.owners_reached)}, which owns pgfn's or graphile-worker's objects (every function's env, the job queue)`,
      fix: "Give the function a role of its own that is not a member of that owner.",
    };
  }
  if (f.builtins_reached.length > 0) {
    return {
      why: `is a member of ${list(f.builtins_reached)} (server files, programs, every table or every session's queries)`,
      fix: `Revoke it: revoke ${f.builtins_reached.join(", ")} from ${id};`,
    };
  }
  if (f.replication) {
    return {
      why: "has REPLICATION (logical decoding reads every change in the database, other functions' env included)",
      fix: `Run: alter role ${id} noreplication;`,
    };
  }
  if (f.creates_in.length > 0) {
    return {
      why: `may create objects in schema ${list(f.creates_in)} (where pgfn's own functions look names up)`,
      fix: `Revoke it: revoke create on schema ${f.creates_in.join(", ")} from ${idents(f.creates_holders)};`,
    };
  }
  if (f.functions_writers.length > 0) {
    return {
      why: "may insert into or update pgfn.functions (deploy code, or point a function at another db_role)",
      fix: `Revoke it: revoke insert, update on pgfn.functions from ${idents(f.functions_writers)};`,
    };
  }
  if (f.reads_secrets.length > 0 || f.runs_definers.length > 0) {
    const what = [
      ...(f.reads_secrets.length > 0 ? [`may read ${f.reads_secrets.join(", ")}`] : []),
      ...(f.runs_definers.length > 0
        ? [
            `may execute ${f.runs_definers.join(", ")}, which run${f.runs_definers.length > 1 ? "" : "s"} with the rights of an owner who may read them`,
          ]
        : []),
    ];
    const through =
      f.secret_holders.length > 0
        ? ` (or revoke ${idents(f.secret_holders)} from ${id}, or from the role that passes it on)`
        : "";
    return {
      why: `${what.join(" and ")} (every function's env secrets or code)`,
      fix:
        f.secret_revokes.length > 0
          ? `Revoke it: ${f.secret_revokes.join(" ")}${through}`
          : "Revoke its SELECT on them, and its membership in any role that has it.",
    };
  }
  return undefined;
}

/** The sentence db_query refuses a role with; deploy quotes it. */
export function refusalText(role: string, refusal: RoleRefusal): string {
  return `db_role "${role}" ${refusal.why}, so handler SQL could reach far more than the function needs. ${refusal.fix}`;
}

/**
 * Refuses (throws a non-transient HostFunctionError naming the fix) a
 * connection whose role db_query must not use (see `refusalOf`), or that is
 * not logged in as `role`. Run on every new connection, before any handler
 * SQL.
 */
export async function checkRoleIsSafe(
  client: pg.ClientBase,
  role: string,
  daemonRole: string | undefined,
): Promise<void> {
  const facts = await roleFacts(client, role, daemonRole);
  // session_user, not current_user: the role may have set itself a default
  // role (alter role ... set role), so that a login starts as one of its
  // member roles; handler SQL can switch back with RESET ROLE at any time.
  // The facts are the session user's, then.
  const refusal: RoleRefusal | undefined =
    !facts || facts.session_user !== role
      ? { why: "is not the user the connection logged in as", fix: "Check PGFN_DB_QUERY_URL." }
      : refusalOf(role, facts, daemonRole);
  if (refusal)
    throw new HostFunctionError(`db_query refused: ${refusalText(role, refusal)}`, false);
}

/**
 * What deploy says about a db_role before storing it, or undefined when
 * db_query could use it: the role does not exist, cannot log in (db_query
 * logs in as it), or would be refused at run time, for the same reason.
 * The facts are read through `client` (one connection, as `daemonRole`).
 */
export async function dbRoleProblem(
  client: RoleQueryable,
  role: string,
  daemonRole: string | undefined,
): Promise<"missing" | "nologin" | RoleRefusal | undefined> {
  const facts = await roleFacts(client, role, daemonRole);
  if (!facts) return "missing";
  return refusalOf(role, facts, daemonRole) ?? (facts.canlogin ? undefined : "nologin");
}

const list = (names: readonly string[]) => names.map((n) => `"${n}"`).join(", ");
const idents = (names: readonly string[]) => names.map((n) => sqlIdent(n)).join(", ");

/** An identifier as a person would type it: bare when Postgres would not need quotes. */
export function sqlIdent(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : pg.escapeIdentifier(name);
}
