#!/usr/bin/env bash
# Starts the machine's PostgreSQL cluster on loopback if it is down, and makes
# sure the test role and database exist. Prints the URL the tests use
# (MODELCACHE_TEST_POSTGRES_URL). Needs Debian's postgresql package (.ci/run
# installs it). Idempotent.
set -euo pipefail
# Only the URL goes to stdout: the Makefile reads it. Everything the cluster
# tools print (pg_ctlcluster says "Removed stale pid file." on stdout after an
# unclean stop) goes to stderr.
# The server started below must not inherit fd 3, or whoever reads this
# script's stdout (the Makefile's $(...), a test's output()) waits for it
# forever: every command that may leave a process behind gets 3>&-.
exec 3>&1 1>&2

url="postgres://modelcache:modelcache@127.0.0.1:5432/modelcache_test"
if ! command -v pg_lsclusters >/dev/null; then
  echo "postgres-up: PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 1
fi
read -r ver name port status _ < <(pg_lsclusters --no-header | head -1) || true
if [ -z "${ver:-}" ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$ver" main >/dev/null 3>&-
  read -r ver name port status _ < <(pg_lsclusters --no-header | head -1)
fi
if [ "$status" != "online" ]; then
  # A postmaster killed uncleanly (a machine snapshot, a killed container)
  # leaves a socket lock naming a dead process; the server refuses to start
  # until it is gone.
  for lock in /var/run/postgresql/.s.PGSQL."$port".lock; do
    [ -f "$lock" ] || continue
    owner=$(head -1 "$lock" 2>/dev/null || true)
    if [ -z "$owner" ] || [ "$(cat /proc/"$owner"/comm 2>/dev/null)" != postgres ] \
      || grep -q '^State:[[:space:]]*Z' /proc/"$owner"/status 2>/dev/null; then
      echo "postgres-up: removing stale socket lock $lock (pid ${owner:-?} is gone)"
      rm -f "$lock"
    fi
  done
  pg_ctlcluster "$ver" "$name" start 3>&-
fi
as_pg() { runuser -u postgres -- "$@"; }
for _ in $(seq 1 50); do
  as_pg psql -p "$port" -tAc "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! as_pg psql -p "$port" -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'modelcache'" | grep -q 1; then
  as_pg psql -p "$port" -qc "CREATE ROLE modelcache LOGIN PASSWORD 'modelcache'"
fi
if ! as_pg psql -p "$port" -tAc "SELECT 1 FROM pg_database WHERE datname = 'modelcache_test'" | grep -q 1; then
  as_pg psql -p "$port" -qc "CREATE DATABASE modelcache_test OWNER modelcache"
fi
echo "${url/5432/$port}" >&3
