#!/usr/bin/env bash
# A scratch PostgreSQL 15 cluster owned by the postgres user, on loopback only.
#   scripts/cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   scripts/cluster.sh stop DIR [mode]
# It preloads lease_sched and pg_cron; lease_sched.database and cron.database_name
# name the database `lease_sched` that `start` creates.
set -euo pipefail
PGBIN=/usr/lib/postgresql/15/bin
cmd=${1:?start|stop}; dir=${2:?cluster directory}

case "$cmd" in
start)
  port=${3:?port}; shift 3
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir"
  runuser -u postgres -- "$PGBIN/initdb" -A trust -U postgres -D "$dir/data" >/dev/null
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "shared_preload_libraries = 'lease_sched,pg_cron'"
    echo "lease_sched.database = 'lease_sched'"
    echo "cron.database_name = 'lease_sched'"
    echo "cron.host = '127.0.0.1'"
    echo "max_worker_processes = 16"
    echo "max_connections = 200"
    for line in "$@"; do echo "$line"; done
  } >> "$dir/data/postgresql.conf"
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
  runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$port" lease_sched
  ;;
stop)
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w stop >/dev/null 2>&1 || true
  ;;
*) echo "usage: $0 start DIR PORT [conf...] | stop DIR [mode]" >&2; exit 2 ;;
esac
