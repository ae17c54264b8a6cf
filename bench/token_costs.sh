#!/usr/bin/env bash
# What the token guarantees cost (docs/reliability.md): the floor after a server start
# (first claim after a restart vs the next new session vs a warm one, 7 restarts), and how
# often a claim draws its token again (pgbench, claims of distinct plans, 1 and 8 clients).
# Needs the extension installed into $PGBIN's PostgreSQL (cargo pgrx install); starts its own
# cluster in /tmp/lease_sched_token_costs on a free port, stops it at the end. As root.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
export PGBIN
dir=/tmp/lease_sched_token_costs
port=$(free_ports 1)
lease_cluster_start "$dir" "$port" "log_min_messages = warning" >/dev/null
P=("$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d lease_sched)
"${P[@]}" -c "CREATE EXTENSION lease_sched"
claim_ms() {  # the time of one claim in a new session, by the server's clock
  "${P[@]}" -c "SELECT extract(epoch FROM (SELECT c - s FROM (SELECT clock_timestamp() s) a,
          LATERAL (SELECT clock_timestamp() c FROM lease_sched.lease_try_claim('m-' || gen_random_uuid(), now(), 'r')) b)) * 1000"
}
first=(); second=(); steady=()
for _ in 1 2 3 4 5 6 7; do
  as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w restart -l "$dir/server.log" >/dev/null
  first+=("$(claim_ms)")      # floors: the first grant after this server start
  second+=("$(claim_ms)")     # a new backend: reads the two records, no floor
  steady+=("$("${P[@]}" -c "SELECT 1 FROM lease_sched.lease_try_claim('warm', now(), 'r')" -c "SELECT extract(epoch FROM (SELECT c - s FROM (SELECT clock_timestamp() s) a, LATERAL (SELECT clock_timestamp() c FROM lease_sched.lease_try_claim('m-' || gen_random_uuid(), now(), 'r')) b)) * 1000" | tail -1)")
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "floor: first claim after a restart (floors) median $(med "${first[@]}") ms; first claim of a second new backend $(med "${second[@]}") ms; a warm backend's claim $(med "${steady[@]}") ms  (7 restarts)"
echo "  first: ${first[*]}"; echo "  second: ${second[*]}"; echo "  steady: ${steady[*]}"

# Redraws: concurrent claims of distinct plans; every redraw takes one extra token.
cat > "$dir/claim.sql" <<'SQL'
SELECT outcome FROM lease_sched.lease_try_claim('bench-' || :client_id, clock_timestamp(), 'r');
SQL
for clients in 1 8; do
  before_seq=$("${P[@]}" -c "SELECT last_value FROM lease_sched.fencing_token_seq")
  before_rows=$("${P[@]}" -c "SELECT count(*) FROM lease_sched.sys_cron_executions")
  out=$("$PGBIN/pgbench" -n -h 127.0.0.1 -p "$port" -U postgres -c "$clients" -j "$clients" -T 10 -f "$dir/claim.sql" lease_sched 2>&1)
  after_seq=$("${P[@]}" -c "SELECT last_value FROM lease_sched.fencing_token_seq")
  after_rows=$("${P[@]}" -c "SELECT count(*) FROM lease_sched.sys_cron_executions")
  claims=$((after_rows - before_rows)); tokens=$((after_seq - before_seq))
  echo "claims with $clients clients: $claims won in 10 s ($(echo "$out" | grep -m1 '^tps' | cut -d' ' -f3) tps), tokens drawn $tokens, redraws $((tokens - claims)) ($(awk -v r=$((tokens - claims)) -v c=$claims 'BEGIN { printf "%.2f", 100 * r / c }') %)"
done
lease_cluster_stop "$dir" immediate
