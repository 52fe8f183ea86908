-- pgfn's owner in a new database: the role that runs `pgfn migrate` and the
-- daemon and owns schemas pgfn and graphile_worker. Not a superuser and
-- without CREATEROLE, so nothing a deployer names as a handler's db_role
-- reaches the daemon's own rights (README "db_query roles", SECURITY.md
-- "Who is who": the Operator). Run once as a superuser, in the database pgfn
-- is installed in:
--   psql -v ON_ERROR_STOP=1 -v pgfn_password=... [-v pgfn_role=pgfn_owner] -d app -f pgfn-owner.sql
-- docker-compose.yml runs it through init-pgfn.sh when its data volume is new.

\if :{?pgfn_role}
\else
  \set pgfn_role pgfn_owner
\endif

create role :"pgfn_role" login password :'pgfn_password';

-- `pgfn migrate` needs the role pgfn_writer and may not create roles; with
-- the admin option the owner grants it to the roles that write attached
-- tables (README "Who may write attached tables"). Roles are cluster-wide:
-- another database's pgfn may have made it already.
select 'create role pgfn_writer nologin'
where not exists (select from pg_roles where rolname = 'pgfn_writer') \gexec
grant pgfn_writer to :"pgfn_role" with admin option;

-- Room for its two schemas in this database, and nothing more.
grant connect, create on database :"DBNAME" to :"pgfn_role";
