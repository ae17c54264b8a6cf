#!/usr/bin/env bash
# Absolute rates of the lock and fence calls on this machine (docs/benchmarks.md): pgbench,
# 8 clients, -M prepared, synchronous_commit as given (default on), SECONDS per workload:
#   lock acquire     lock_acquire of a lock nobody holds (a new name each time: an INSERT)
#   lock heartbeat   lock_heartbeat of one of the client's 100 held locks
#   lease fence      BEGIN; lease_fence(id, fencing_token, lease_token); COMMIT (a held lease)
#   lock fence       BEGIN; lock_fence(name, fencing_token, lock_token); COMMIT (a held lock)
#
#   bench/locks_fences.sh [SECONDS] [SYNC]
#
# Uses the lease_sched installed in $PGBIN's PostgreSQL (default Debian's 15); a scratch
# cluster preloading lease_sched in /tmp/lease_sched_locks_fences, started and stopped here.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
export PGBIN
secs=${1:-10} sync=${2:-on}
dir=/tmp/lease_sched_locks_fences
port=$(free_ports 1)
LEASE_CLUSTER_PRELOAD=lease_sched lease_cluster_start "$dir" "$port" "synchronous_commit = $sync" >/dev/null
trap 'lease_cluster_stop "$dir" >/dev/null 2>&1 || true' EXIT
psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d lease_sched)
"${psql[@]}" <<'SQL'
CREATE EXTENSION lease_sched;
CREATE TABLE held_locks AS
SELECT c, i, name, (a).lock_token, (a).fencing_token
  FROM (SELECT c, i, 'held-' || c || '-' || i AS name,
               lease_sched.lock_acquire('held-' || c || '-' || i, 'bench', '1 day') AS a
          FROM generate_series(1, 8) c, generate_series(0, 99) i) s;
CREATE TABLE held_leases AS
SELECT c, i, (a).execution_id, (a).fencing_token, (a).lease_token
  FROM (SELECT c, i, lease_sched.lease_try_claim('fence-' || c, to_timestamp(i), 'bench', 'global', '',
                                                 '1 day', 3, true) AS a
          FROM generate_series(1, 8) c, generate_series(0, 99) i) s;
CREATE UNIQUE INDEX ON held_locks (c, i);
CREATE UNIQUE INDEX ON held_leases (c, i);
SQL
w=$(mktemp -d)
cat >"$w/lock_acquire.sql" <<'EOF2'
\set r random(1, 2000000000)
SELECT acquired FROM lease_sched.lock_acquire('free-' || :client_id || '-' || :r, 'bench', '1 minute');
EOF2
cat >"$w/lock_heartbeat.sql" <<'EOF2'
\set i random(0, 99)
SELECT lease_sched.lock_heartbeat(name, lock_token) FROM held_locks WHERE c = :client_id + 1 AND i = :i;
EOF2
cat >"$w/lease_fence.sql" <<'EOF2'
\set i random(0, 99)
BEGIN;
SELECT lease_sched.lease_fence(execution_id, fencing_token, lease_token) FROM held_leases WHERE c = :client_id + 1 AND i = :i;
COMMIT;
EOF2
cat >"$w/lock_fence.sql" <<'EOF2'
\set i random(0, 99)
BEGIN;
SELECT lease_sched.lock_fence(name, fencing_token, lock_token) FROM held_locks WHERE c = :client_id + 1 AND i = :i;
COMMIT;
EOF2
echo "PostgreSQL $("$PGBIN/pg_config" --version | cut -d' ' -f2), synchronous_commit = $sync, 8 clients, ${secs} s each; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for wl in lock_acquire lock_heartbeat lease_fence lock_fence; do
  script="$w/$wl.sql"
  tps=$("$PGBIN/pgbench" -n -M prepared -c 8 -j 2 -T "$secs" -f "$script" -h 127.0.0.1 -p "$port" -U postgres lease_sched 2>&1 \
        | awk '/failed transactions: [1-9]|ERROR/ {print "FAILED: " $0; exit} /^tps/ {print int($3); exit}')
  echo "$wl: $tps tps"
done
rm -rf "$w"
