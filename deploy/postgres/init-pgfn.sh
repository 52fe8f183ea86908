#!/bin/sh
# Run by the postgres image once, when its data volume is new
# (/docker-entrypoint-initdb.d), as the superuser in POSTGRES_DB: creates
# pgfn's owner role with the password docker-compose.yml gives the daemon.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v pgfn_password="$PGFN_DB_PASSWORD" -f /pgfn/pgfn-owner.sql
