#!/usr/bin/env bash
# What attaching pgfn costs writers, measured with pgbench: INSERT
# transactions per second at 4 clients (fsync as the server has it), no
# consumer running, into three tables of one shape:
#   none    no trigger
#   row     a hand-written `for each row execute function pgfn.enqueue('echo')`
#   attach  pgfn.attach('...', 'echo', array['INSERT']) (statement level)
# for 1-row and 10-row transactions. Cells are interleaved, forwards then
# backwards each round, and the median of the rounds is printed: on a shared
# machine a neighbour's burst then lands on a cell of each table.
#
# Usage: bench/writepath-pgbench.sh [ROUNDS (default 4)] [SECONDS per cell (default 8)]
# Needs pgbench and psql, and DATABASE_URL pointing at a server where the
# role may create databases; uses (and recreates) the database pgfn_writepath.
set -euo pipefail
ROUNDS=${1:-4}
SECONDS_PER_CELL=${2:-8}
: "${DATABASE_URL:?set DATABASE_URL to a server where this role may create databases}"
DB=pgfn_writepath
BENCH_URL="${DATABASE_URL%/*}/$DB"
cd "$(dirname "$0")/.."

psql "$DATABASE_URL" -qc "drop database if exists $DB" -c "create database $DB"
DATABASE_URL="$BENCH_URL" node bin/pgfn.js migrate >/dev/null
psql "$BENCH_URL" -q <<'SQL'
create schema bench;
create table bench.wp_none (id bigint generated always as identity primary key, v text not null,
  created_at timestamptz not null default clock_timestamp());
create table bench.wp_row (like bench.wp_none including all);
create table bench.wp_attach (like bench.wp_none including all);
create trigger wp_row after insert on bench.wp_row for each row execute function pgfn.enqueue('echo');
select pgfn.attach('bench.wp_attach', 'echo', array['INSERT']);
SQL

script=$(mktemp)
results=$(mktemp)
trap 'rm -f "$script" "$results"' EXIT
tables=(none row attach)
for ((round = 0; round < ROUNDS; round++)); do
  for rows in 1 10; do
    order=("${tables[@]}")
    if ((round % 2 == 1)); then order=(attach row none); fi
    for t in "${order[@]}"; do
      psql "$BENCH_URL" -qc "truncate pgfn.events cascade; truncate bench.wp_$t" 2>/dev/null
      if ((rows == 1)); then
        echo "insert into bench.wp_$t (v) values ('x');" >"$script"
      else
        echo "insert into bench.wp_$t (v) select 'x' from generate_series(1, $rows);" >"$script"
      fi
      tps=$(pgbench -n -c 4 -j 2 -T "$SECONDS_PER_CELL" -f "$script" "$BENCH_URL" 2>&1 | awk '/^tps/ {print $3}')
      echo "$t $rows $tps" >>"$results"
      echo "round $((round + 1)): $t, $rows-row tx: $tps tx/s" >&2
    done
  done
done

echo
echo "| rows/tx | table | tx/s (median) | rows/s | % of none |"
echo "|---|---|---|---|---|"
for rows in 1 10; do
  none=$(awk -v r="$rows" '$1 == "none" && $2 == r {print $3}' "$results" | sort -n |
    awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')
  for t in "${tables[@]}"; do
    awk -v r="$rows" -v t="$t" '$1 == t && $2 == r {print $3}' "$results" | sort -n |
      awk -v r="$rows" -v t="$t" -v none="$none" '{a[NR] = $1} END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
        printf "| %d | %s | %.0f | %.0f | %.0f%% |\n", r, t, m, m * r, 100 * m / none }'
  done
done
