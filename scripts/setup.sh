#!/usr/bin/env bash
# Installs the Debian packages a target needs, if any is missing.
#   scripts/setup.sh run    what `make run` needs: a C/C++ compiler, Python 3 with venv and pip
#   scripts/setup.sh test   also what `make test` needs: Prometheus, Chromium, Node.js with npm,
#                           PostgreSQL and MariaDB
# Idempotent, and quiet when everything is there. Uses apt-get as root, or
# through sudo; without either it names what to install and fails.
set -euo pipefail
what="${1:-test}"

need=()
command -v cc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ "$what" = test ]; then
  # tests/prometheus.rs runs a real Prometheus against the gateway.
  command -v prometheus >/dev/null || need+=(prometheus)
  # tests/console.rs drives the web console in Debian's Chromium with Playwright (npm).
  command -v chromium >/dev/null || need+=(chromium)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  # tests/postgres.rs and the store suite run against a real PostgreSQL
  # (scripts/postgres-up.sh starts the cluster on loopback).
  command -v pg_lsclusters >/dev/null || need+=(postgresql)
  # tests/mysql.rs and the store suite run against a real MariaDB
  # (scripts/mariadb-up.sh starts it on loopback).
  { command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; } || need+=(mariadb-server mariadb-client)
fi
if ! command -v cargo >/dev/null; then
  echo "setup: no Rust toolchain (cargo) on PATH; install one with rustup first" >&2
  exit 1
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "setup: missing packages: ${need[*]}; install them as root (apt-get install ${need[*]})" >&2
  exit 1
fi
echo "setup: installing ${need[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
