// Upgrading an installation from before 000008: the roles that already write
// attached tables get pgfn_writer, so no application starts failing, and
// triggers attached under the old naming keep working and can be detached.
import { readFile } from "node:fs/promises";
import pg from "pg";
import { Logger as GraphileLogger, runMigrations } from "graphile-worker";
import { afterAll, beforeAll, expect, it } from "vitest";
import { listMigrations } from "../src/migrate.js";
import { useTestDatabase } from "./fixture.js";

/** The migration under test; everything before it is "the old installation". */
const WRITER_ROLE_MIGRATION = 8;

const t = useTestDatabase("enqueue_upgrade", { migrated: false });
const roles: string[] = [];
const role = (label: string) => `pgfn_t_up_${label}_${process.pid}`;

beforeAll(async () => {
  await runMigrations({ pgPool: t.pool, logger: new GraphileLogger(() => () => undefined) });
  for (const m of await listMigrations()) {
    if (m.id >= WRITER_ROLE_MIGRATION) break;
    await t.pool.query(await readFile(m.file, "utf8"));
  }
});
afterAll(async () => {
  const { rows } = await t.pool.query<{ rolname: string }>(
    `select rolname from pg_roles where rolname = any ($1)`,
    [roles],
  );
  for (const { rolname } of rows) {
    await t.pool.query(`drop owned by ${rolname} cascade; drop role ${rolname}`);
  }
});

/** The sessions' notices while `use` runs on a fresh connection as the admin. */
async function noticesOf(use: (client: pg.Client) => Promise<unknown>): Promise<string[]> {
  const notices: string[] = [];
  const client = new pg.Client({ connectionString: t.url });
  client.on("notice", (n) => notices.push(n.message ?? ""));
  await client.connect();
  try {
    await use(client);
  } finally {
    await client.end();
  }
  return notices;
}

it("grants pgfn_writer to every role that may write an attached table, and keeps old triggers working", async () => {
  const [owner, inserter, columnUpdater, reader, group, member] = [
    "owner",
    "inserter",
    "colupd",
    "reader",
    "group",
    "member",
  ].map(role);
  roles.push(member!, owner!, inserter!, columnUpdater!, reader!, group!);
  const longName = `${"l".repeat(58)}_legac`; // 64 characters: cut by the old trigger_name
  await t.pool.query(`
    create role ${owner} nologin;
    create role ${inserter} nologin;
    create role ${columnUpdater} nologin;
    create role ${reader} nologin;
    create role ${group} nologin;
    create role ${member} nologin in role ${group};
    create table public.legacy (id int primary key, note text);
    alter table public.legacy owner to ${owner};
    grant insert, select on public.legacy to ${inserter};
    grant update (note) on public.legacy to ${columnUpdater};
    grant select on public.legacy to ${reader};
    grant delete on public.legacy to ${group};
    select pgfn.attach('public.legacy', '${longName}');
    create table public.handmade (id int primary key);
    grant insert on public.handmade to public;
    create trigger mine after insert on public.handmade
      for each row execute function pgfn.enqueue('handmade');`);
  const before = await t.pool.query(
    `select tgname from pg_trigger where tgrelid = 'public.legacy'::regclass`,
  );
  expect(before.rows).toEqual([{ tgname: `pgfn_${"l".repeat(58)}` }]);

  const [migration] = (await listMigrations()).filter((m) => m.id === WRITER_ROLE_MIGRATION);
  const text = await readFile(migration!.file, "utf8");
  const notices = await noticesOf((c) => c.query(text));
  expect(notices).toContain(
    'pgfn: PUBLIC may write public.handmade, which has a pgfn trigger: every role that writes it now needs "grant pgfn_writer to <role>"',
  );

  const { rows } = await t.pool.query<{ rolname: string; direct: boolean; usable: boolean }>(
    `select r.rolname,
            exists (select 1 from pg_auth_members m where m.member = r.oid and m.roleid = 'pgfn_writer'::regrole) as direct,
            pg_has_role(r.oid, 'pgfn_writer', 'USAGE') as usable
     from pg_roles r where r.rolname = any ($1) order by r.rolname`,
    [[owner, inserter, columnUpdater, reader, group, member]],
  );
  const byName = Object.fromEntries(
    rows.map((r) => [r.rolname, { direct: r.direct, usable: r.usable }]),
  );
  expect(byName).toEqual({
    [owner!]: { direct: true, usable: true },
    [inserter!]: { direct: true, usable: true },
    [columnUpdater!]: { direct: true, usable: true },
    [group!]: { direct: true, usable: true },
    // Inherits it through the group that holds the privilege.
    [member!]: { direct: false, usable: true },
    [reader!]: { direct: false, usable: false },
  });

  // The trigger attached before the upgrade runs the new enqueue for a plain writer...
  const writer = new pg.Client({ connectionString: t.url });
  await writer.connect();
  try {
    await writer.query(`set role ${inserter}`);
    await writer.query(`insert into public.legacy values (1, 'kept')`);
  } finally {
    await writer.end();
  }
  const events = await t.pool.query(`select new from pgfn.events where function_name = $1`, [
    longName,
  ]);
  expect(events.rows).toEqual([{ new: { id: 1, note: "kept" } }]);

  // ...and detach finds it under its old name.
  const detached = await t.pool.query(`select pgfn.detach('public.legacy', $1) as ok`, [longName]);
  expect(detached.rows[0].ok).toBe(true);
  const after = await t.pool.query(
    `select count(*)::int as n from pg_trigger where tgrelid = 'public.legacy'::regclass`,
  );
  expect(after.rows[0].n).toBe(0);
});
