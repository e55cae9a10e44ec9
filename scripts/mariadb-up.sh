#!/usr/bin/env bash
# Starts the machine's MariaDB server on loopback if it is down, and makes
# sure the test user and database exist. Prints the URL the tests use
# (MODELCACHE_TEST_MYSQL_URL). Needs Debian's mariadb-server package
# (scripts/setup.sh installs it for `make test`). Idempotent.
#   scripts/mariadb-up.sh          start (if down) and print the URL
#   scripts/mariadb-up.sh stop     stop the server (tests of an outage)
set -euo pipefail
# Only the URL goes to stdout: the Makefile reads it. The server started
# below must not inherit fd 3 (this script's stdout), or whoever reads it
# waits for the server to exit.
exec 3>&1 1>&2

port=3306
url="mysql://modelcache:modelcache@127.0.0.1:${port}/modelcache_test"
if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
  echo "mariadb-up: MariaDB is not installed (apt-get install mariadb-server)" >&2
  exit 1
fi
server=$(command -v mariadbd || echo /usr/sbin/mariadbd)
admin() { mariadb-admin --protocol=socket -uroot "$@"; }
sql() { mariadb --protocol=socket -uroot -N -e "$1"; }

if [ "${1:-}" = stop ]; then
  admin shutdown 2>/dev/null || true
  for _ in $(seq 1 100); do
    pgrep -x mariadbd >/dev/null || exit 0
    sleep 0.1
  done
  echo "mariadb-up: the server did not stop" >&2
  exit 1
fi

if ! admin ping >/dev/null 2>&1; then
  install -d -o mysql -g mysql /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null 3>&-
  fi
  # A server stopped with SIGSTOP by a test that died is woken, not doubled.
  pkill -CONT -x mariadbd 2>/dev/null || true
  if ! admin ping >/dev/null 2>&1; then
    setsid "$server" --user=mysql --bind-address=127.0.0.1 --port="$port" \
      </dev/null >>/tmp/modelcache-mariadb.log 2>&1 3>&- &
  fi
  for _ in $(seq 1 150); do
    admin ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  admin ping >/dev/null || { echo "mariadb-up: the server did not start (/tmp/modelcache-mariadb.log)" >&2; exit 1; }
fi

if [ -z "$(sql "SELECT 1 FROM mysql.user WHERE user = 'modelcache' LIMIT 1")" ]; then
  sql "CREATE USER 'modelcache'@'localhost' IDENTIFIED BY 'modelcache';
       CREATE USER 'modelcache'@'127.0.0.1' IDENTIFIED BY 'modelcache';"
fi
# The tests make a database of their own per test (`mctest_…`).
sql "CREATE DATABASE IF NOT EXISTS modelcache_test CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
     GRANT ALL ON modelcache_test.* TO 'modelcache'@'localhost';
     GRANT ALL ON modelcache_test.* TO 'modelcache'@'127.0.0.1';
     GRANT ALL ON \`mctest\\_%\`.* TO 'modelcache'@'localhost';
     GRANT ALL ON \`mctest\\_%\`.* TO 'modelcache'@'127.0.0.1';"
echo "$url" >&3
