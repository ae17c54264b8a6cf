#!/usr/bin/env bash
# A scratch PostgreSQL cluster owned by the postgres user, on loopback only: the command-line
# form of scripts/lib.sh (the docs, the Makefile and tests that start their own clusters call it).
#   scripts/cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   scripts/cluster.sh stop DIR [mode]
#   scripts/cluster.sh pgbin MAJOR     print where PostgreSQL MAJOR's binaries are
#   scripts/cluster.sh majors          print the PostgreSQL majors the project builds and tests
#   scripts/cluster.sh freeport [N]    print N (default 1) distinct TCP ports nobody on this
#                                      machine listens on now (the kernel picks them), one a line
# Which PostgreSQL: the binaries in $PGBIN (default Debian's 15; scripts/test.sh sets it per
# major, e.g. /opt/lease_sched/pg18/bin for 18).
# `start` makes a new cluster (UTF8, C.UTF-8 locale) that preloads lease_sched, and pg_cron
# too when that PostgreSQL has it; LEASE_CLUSTER_PRELOAD preloads exactly that list instead
# (may be empty). lease_sched.database and cron.database_name name the database
# `lease_sched` that `start` creates (scripts/lib.sh, lease_cluster_start).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
case "${1:-}" in
  start) lease_cluster_start "${2:?cluster directory}" "${3:?port}" "${@:4}" ;;
  stop) lease_cluster_stop "${2:?cluster directory}" "${3:-fast}" ;;
  pgbin) pg_bin "${2:?major}" ;;
  majors) echo "${LEASE_MAJORS[*]}" ;;
  freeport) free_ports "${2:-1}" ;;
  *) echo "usage: $0 start DIR PORT [conf...] | stop DIR [mode] | pgbin MAJOR | majors | freeport [N]" >&2; exit 2 ;;
esac
