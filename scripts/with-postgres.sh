#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL 15 cluster.
#
#   scripts/with-postgres.sh npm run test:ts
#
# Creates a cluster in a temp dir (initdb, trust auth, loopback only, a free port, fsync off),
# exports LATHE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:PORT/lathe_test, runs the
# command, then stops the cluster and deletes it, also when the command fails or is
# interrupted. Exits with the command's status.
#
# Uses Debian's postgresql-15 (/usr/lib/postgresql/15/bin); when it is missing and we are root,
# installs it with apt-get. initdb refuses to run as root, so as root the server runs as the
# `postgres` user. Override the binaries with PG_BIN=/path/to/bin.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
log() { echo "with-postgres: $*" >&2; }

if [ ! -x "$PG_BIN/initdb" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "$PG_BIN/initdb not found; install postgresql-15 (or set PG_BIN)"
    exit 1
  fi
  log "installing postgresql-15"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql-15 >&2
  [ -x "$PG_BIN/initdb" ] || { log "$PG_BIN/initdb still missing after installing postgresql-15"; exit 1; }
fi

# Run a command as the cluster's owner: `postgres` when we are root, else ourselves.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { log "no 'postgres' user to run the server as"; exit 1; }
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/lathe-pg.XXXXXX")"
DATA="$TMP/data"
STARTED=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$STARTED" -eq 1 ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || log "pg_ctl stop failed"
  fi
  rm -rf "$TMP"
  exit "$rc"
}
# On INT/TERM: stop the command (it runs in the background so that we can), then clean up.
CHILD=0
on_signal() {
  if [ "$CHILD" -ne 0 ]; then
    kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

[ "$(id -u)" -eq 0 ] && chown postgres: "$TMP"
chmod 700 "$TMP"

as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$TMP/initdb.log" 2>&1 || {
  cat "$TMP/initdb.log" >&2
  log "initdb failed"
  exit 1
}

free_port() {
  if command -v node >/dev/null 2>&1; then
    node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
  else
    python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1]);s.close()"
  fi
}

# A port can be taken between probing and binding: retry a few times.
for attempt in 1 2 3 4 5; do
  PORT="$(free_port)"
  if as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$TMP/server.log" -w -t 60 \
    -o "-p $PORT -k $TMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null 2>&1; then
    STARTED=1
    break
  fi
  log "start on port $PORT failed (attempt $attempt)"
  tail -n 5 "$TMP/server.log" >&2 2>/dev/null || true
done
if [ "$STARTED" -ne 1 ]; then
  log "could not start PostgreSQL"
  exit 1
fi

as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres lathe_test
export LATHE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/lathe_test"
log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (LATHE_TEST_DATABASE_URL=$LATHE_TEST_DATABASE_URL)"

set +e
# Explicit stdin: a background command would otherwise read /dev/null.
"$@" 0<&0 &
CHILD=$!
wait "$CHILD"
rc=$?
CHILD=0
set -e
exit "$rc"
