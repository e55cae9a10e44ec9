#!/usr/bin/env bash
# Starts Milvus (PyPI's `milvus` package: the real Milvus 2.3.5 standalone
# server, embedded) on loopback if it is down, and prints the URL of its
# RESTful API (MODELCACHE_TEST_MILVUS_URL). Installs the package into a venv
# of its own on first use (outside the checkout, so that it survives).
# Idempotent.
#   scripts/milvus-up.sh          start (if down) and print the URL
#   scripts/milvus-up.sh stop     stop the server (tests of an outage)
#   scripts/milvus-up.sh fresh    stop it, empty its data folder, start it (make test)
set -euo pipefail
# Only the URL goes to stdout: the Makefile reads it. The server started
# below must not inherit fd 3 (this script's stdout).
exec 3>&1 1>&2

port=19530
url="http://127.0.0.1:${port}"
venv="${MODELCACHE_MILVUS_VENV:-$HOME/.cache/modelcache-milvus}"
data="${MODELCACHE_MILVUS_DATA:-/tmp/modelcache-milvus}"
python="${PYTHON:-python3}"

answers() {
  "$python" - "$url" <<'PY' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/v1/vector/collections", timeout=2) as r:
        sys.exit(0 if json.load(r).get("code") == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

server_pids() { pgrep -f "milvus run standalone" || true; }

# Whether anything listens on the port (a server starting, or one dying).
listening() {
  "$python" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(('127.0.0.1', $port)) == 0 else 1)"
}

# Until neither the process nor its port is left (up to 10 s).
gone() {
  for _ in $(seq 1 50); do
    [ -z "$(server_pids)" ] && ! listening && return 0
    sleep 0.2
  done
  return 1
}

stop_server() {
  pkill -CONT -f "milvus run standalone" 2>/dev/null || true
  pkill -TERM -f -- "--data $data --proxy-port" 2>/dev/null || true
  pkill -TERM -f "milvus run standalone" 2>/dev/null || true
  # NOTE: a graceful stop can take half a minute; past 5 s it is killed
  # (Milvus replays its log on the next start).
  for _ in $(seq 1 25); do
    [ -z "$(server_pids)" ] && break
    sleep 0.2
  done
  pkill -KILL -f "milvus run standalone" 2>/dev/null || true
  gone || { echo "milvus-up: the server did not stop" >&2; exit 1; }
}

case "${1:-}" in
  stop)
    stop_server
    exit 0
    ;;
  fresh)
    # NOTE: every test run leaves its collections, and Milvus loads them
    # all again at each start: a test run starts from an empty server.
    stop_server
    rm -rf "$data"
    ;;
esac

if [ ! -x "$venv/bin/milvus-server" ]; then
  echo "milvus-up: installing PyPI's milvus==2.3.5 into $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "milvus==2.3.5"
fi

# A server stopped with SIGSTOP by a test that died is woken, not doubled.
pkill -CONT -f "milvus run standalone" 2>/dev/null || true
if ! answers; then
  if [ -z "$(server_pids)" ]; then
    # NOTE: the launcher moves to another port if this one is still held
    # (a server just stopped), so it starts only once the port is free.
    gone || { echo "milvus-up: port $port is taken by something else" >&2; exit 1; }
    mkdir -p "$data"
    # NOTE: the launcher checks each port with a bind that a connection of
    # the server just stopped (TIME_WAIT) refuses, and then moves to another
    # port; its check binds with SO_REUSEADDR here, as Milvus itself does.
    setsid "$venv/bin/python" -c '
import socket, sys, milvus
def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None
milvus.MilvusServerConfig.try_bind_port = try_bind_port
sys.argv[0] = "milvus-server"
sys.exit(milvus.main())
' --data "$data" --proxy-port "$port" \
      </dev/null >>/tmp/modelcache-milvus.log 2>&1 3>&- &
  fi
  # NOTE: a server just started can answer once and then not for a while
  # (its components are still coming up): it counts as up after three
  # answers in a row.
  streak=0
  deadline=$((SECONDS + 300))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if answers; then
      streak=$((streak + 1))
      [ "$streak" -ge 3 ] && break
    else
      streak=0
    fi
    sleep 0.3
  done
  [ "$streak" -ge 3 ] || { echo "milvus-up: Milvus did not answer on $url (/tmp/modelcache-milvus.log)" >&2; exit 1; }
fi
echo "$url" >&3
