#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the tests: `start` makes a fresh cluster in $PGTEST_DIR (loopback
# TCP on $PGTEST_PORT and a unix socket in the same directory) with a database `chat_test`;
# `stop` stops it and deletes it; `halt` / `resume` stop and start the same cluster (outage tests);
# `freeze` / `thaw` stop and continue its processes (SIGSTOP: a host that no longer answers).
# Postgres refuses to run as root, so as root the server runs as the `postgres` user.
set -euo pipefail

PGTEST_DIR=${PGTEST_DIR:-/tmp/chat-backend-pgtest}
PGTEST_PORT=${PGTEST_PORT:-54329}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ctl() {
  as_pg "$PGBIN/pg_ctl" -D "$PGTEST_DIR/data" -l "$PGTEST_DIR/server.log" "$@"
}

case "${1:-}" in
  start)
    [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)"; exit 1; }
    if [ -f "$PGTEST_DIR/data/postmaster.pid" ]; then ctl stop -m immediate >/dev/null 2>&1 || true; fi
    rm -rf "$PGTEST_DIR"
    mkdir -p "$PGTEST_DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGTEST_DIR"
    as_pg "$PGBIN/initdb" -D "$PGTEST_DIR/data" -A trust -U postgres -E UTF8 >/dev/null
    ctl -w -o "-p $PGTEST_PORT -k $PGTEST_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    as_pg "$PGBIN/createdb" -h "$PGTEST_DIR" -p "$PGTEST_PORT" -U postgres chat_test
    echo "host=127.0.0.1 port=$PGTEST_PORT user=postgres dbname=chat_test"
    ;;
  halt)
    ctl -w stop -m fast >/dev/null
    ;;
  resume)
    ctl -w -o "-p $PGTEST_PORT -k $PGTEST_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    ;;
  freeze|thaw)
    signal=$([ "$1" = freeze ] && echo STOP || echo CONT)
    postmaster=$(head -1 "$PGTEST_DIR/data/postmaster.pid")
    kill -"$signal" "$postmaster"
    pkill -"$signal" -P "$postmaster" || true
    ;;
  stop)
    if [ -f "$PGTEST_DIR/data/postmaster.pid" ]; then ctl -w stop -m fast >/dev/null || true; fi
    rm -rf "$PGTEST_DIR"
    ;;
  *)
    echo "usage: $0 start|halt|resume|freeze|thaw|stop" >&2
    exit 2
    ;;
esac
