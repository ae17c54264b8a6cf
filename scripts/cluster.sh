#!/usr/bin/env bash
# A scratch PostgreSQL cluster owned by the postgres user, on loopback only.
#   scripts/cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   scripts/cluster.sh stop DIR [mode]
#   scripts/cluster.sh pgbin MAJOR     print where PostgreSQL MAJOR's binaries are
#   scripts/cluster.sh freeport [N]    print N (default 1) distinct TCP ports nobody on this
#                                      machine listens on now (the kernel picks them), one a line
# Which PostgreSQL: the binaries in $PGBIN (default /usr/lib/postgresql/15/bin, Debian's 15;
# scripts/test.sh sets it per major, e.g. /opt/lease_sched/pg18/bin for 18).
# The cluster is UTF8 with the C.UTF-8 locale (without it, a root shell with no LANG gets
# SQL_ASCII). It preloads lease_sched, and pg_cron too when that PostgreSQL has it
# (Debian's 15 does, the PostgreSQL 18 of scripts/setup.sh does not); set
# LEASE_CLUSTER_PRELOAD to preload exactly that list instead (may be empty).
# lease_sched.database and cron.database_name name the database `lease_sched` that
# `start` creates.
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?start|stop|pgbin|freeport}
if [ "$cmd" = freeport ]; then
  # Fixed ports collide with whatever else runs on a shared machine (another checkout's
  # suite, somebody's scratch cluster): let the kernel choose, holding every socket until
  # all N are chosen so that they differ.
  python3 - "${2:-1}" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print("\n".join(str(s.getsockname()[1]) for s in held))
PY
  exit 0
fi
if [ "$cmd" = pgbin ]; then
  # 18 is the PyPI build scripts/setup.sh installs; every other major is Debian's layout.
  case "${2:?major}" in 18) echo /opt/lease_sched/pg18/bin ;; *) echo "/usr/lib/postgresql/$2/bin" ;; esac
  exit 0
fi
dir=${2:?cluster directory}

case "$cmd" in
start)
  port=${3:?port}; shift 3
  if [ -x "$PGBIN/pg_config" ]; then pkglibdir=$("$PGBIN/pg_config" --pkglibdir); else pkglibdir="$PGBIN/../lib"; fi
  preload=lease_sched
  [ -e "$pkglibdir/pg_cron.so" ] && preload=lease_sched,pg_cron
  preload=${LEASE_CLUSTER_PRELOAD-$preload}
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir"
  runuser -u postgres -- "$PGBIN/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$dir/data" >/dev/null
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "shared_preload_libraries = '$preload'"
    echo "lease_sched.database = 'lease_sched'"
    if [[ ",$preload," == *,pg_cron,* ]]; then
      echo "cron.database_name = 'lease_sched'"
      echo "cron.host = '127.0.0.1'"
    fi
    echo "max_worker_processes = 16"
    echo "max_connections = 200"
    for line in "$@"; do echo "$line"; done
  } >> "$dir/data/postgresql.conf"
  if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null; then
    tail -20 "$dir/server.log" >&2; exit 1
  fi
  runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$port" lease_sched
  ;;
stop)
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w stop >/dev/null 2>&1 || true
  ;;
*) echo "usage: $0 start DIR PORT [conf...] | stop DIR [mode] | pgbin MAJOR | freeport [N]" >&2; exit 2 ;;
esac
