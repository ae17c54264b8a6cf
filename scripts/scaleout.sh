#!/usr/bin/env bash
# lease_sched beyond one primary: PL/Proxy routing over 2 partitions, each a pg_auto_failover
# pair (docs/scaling.md). `make scaleout` runs it; `make demo-scaleout` is --keep.
#
#   scripts/scaleout.sh            1 proxy + 2 partitions (primary + synchronous secondary each,
#                                  one pg_auto_failover monitor), then the whole scale-out suite
#                                  (tests/scaleout: routing, failover under load, throughput)
#   scripts/scaleout.sh --quick    1 proxy + 2 plain partitions (no pg_auto_failover), routing
#                                  tests only (~1 min; the form scripts/test.sh runs)
#   scripts/scaleout.sh --keep     set up, run nothing, leave everything running (demo)
#   scripts/scaleout.sh --stop     stop what --keep left running
# Other arguments go to pytest (e.g. -k routing -x).
#
# Everything listens on 127.0.0.1 (full: ports 55500-55521; quick: free ports); directories under /tmp:
#   full:  /tmp/lease_sched_scaleout    proxy 55500, monitor 55501, p0 55510/55511, p1 55520/55521
#   quick: /tmp/lease_sched_scaleout_q  proxy, p0, p1 on ports the kernel picks as free
# The clusters run as the postgres user. lease_sched must be installed into PostgreSQL 15
# (it is built and installed here only when missing: reinstalling under running servers
# can crash them, see docs/operations.md). The proxy SQL must be what scripts/gen_proxy.py
# generates from sql/*.sql (checked first).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# PL/Proxy and pg_auto_failover come from Debian's packages for 15.
PGBIN=$(pg_bin 15)
export PGBIN LEASE_SCHED_PGBIN=$PGBIN  # the bin directory tests/scaleout reads
mode=full
args=()
for a in "$@"; do
  case "$a" in
    --quick) mode=quick ;;
    --keep) mode=keep ;;
    --stop) mode=stop ;;
    *) args+=("$a") ;;
  esac
done
section() { echo "== [scaleout $((SECONDS / 60))m$(printf %02d $((SECONDS % 60)))s] $*"; }
as_pg() {
  runuser -u postgres -- env LC_ALL=C.UTF-8 LANG=C.UTF-8 ${XDG_CONFIG_HOME:+XDG_CONFIG_HOME=$XDG_CONFIG_HOME} \
    ${XDG_DATA_HOME:+XDG_DATA_HOME=$XDG_DATA_HOME} ${XDG_RUNTIME_DIR:+XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR} "$@"
}
psql_at() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$@"; }

if [ $mode = quick ]; then
  DIR=/tmp/lease_sched_scaleout_q
  mapfile -t ports < <(free_ports 3)
  PROXY_PORT=${ports[0]} QUICK_PORTS=("${ports[1]}" "${ports[2]}")
else
  DIR=/tmp/lease_sched_scaleout; PROXY_PORT=55500; MONITOR_PORT=55501
  # pg_autoctl keeps its state (config, FSM state, pid files) under the XDG directories:
  # keep it inside $DIR, so that removing $DIR forgets an earlier run entirely.
  export XDG_CONFIG_HOME=$DIR/xdg/config XDG_DATA_HOME=$DIR/xdg/data XDG_RUNTIME_DIR=$DIR/xdg/run
fi

# The pg_autoctl service of node directory $1, if it runs.
keeper_pid() { pgrep -u postgres -f "^pg_autoctl run --pgdata $1/data\$" || true; }
stop_full() {
  # pg_autoctl services first (they would restart their postgres), then every server.
  local d pid
  for d in "$DIR"/p0a "$DIR"/p0b "$DIR"/p1a "$DIR"/p1b "$DIR"/monitor; do
    for pid in $(keeper_pid "$d"); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 2
  for d in "$DIR"/p0a "$DIR"/p0b "$DIR"/p1a "$DIR"/p1b "$DIR"/monitor; do
    for pid in $(keeper_pid "$d"); do kill -9 "$pid" 2>/dev/null || true; done
    [ -d "$d/data" ] && pg_stop "$d" "$PGBIN" immediate
  done
  lease_cluster_stop "$DIR/proxy" immediate
}
stop_quick() {
  local d
  for d in proxy p0 p1; do lease_cluster_stop "$DIR/$d" immediate; done
}

if [ $mode = stop ]; then
  stop_full
  exit 0
fi

section "prerequisites"
scripts/setup.sh
need=(postgresql-15-plproxy)
[ $mode = quick ] || need+=(postgresql-15-auto-failover pg-auto-failover-cli)
apt_ensure scaleout "${need[@]}"
# dpkg may list a package while this PostgreSQL tree lacks its library (a private copy of
# the tree, made before the package was installed): put it back.
libs=(plproxy:postgresql-15-plproxy)
[ $mode = quick ] || libs+=(pgautofailover:postgresql-15-auto-failover)
for l in "${libs[@]}"; do
  if [ ! -e "$("$PGBIN/pg_config" --pkglibdir)/${l%%:*}.so" ]; then
    echo "scaleout: ${l%%:*}.so is missing from $("$PGBIN/pg_config" --pkglibdir): reinstalling ${l#*:}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall --no-install-recommends "${l#*:}" >/dev/null
  fi
done
if [ ! -e "$("$PGBIN/pg_config" --pkglibdir)/lease_sched.so" ]; then
  section "building and installing lease_sched into PostgreSQL 15 (it was missing)"
  PATH="$HOME/.cargo/bin:$PATH" cargo pgrx install --release --pg-config "$PGBIN/pg_config" \
    --no-default-features --features pg15 >/tmp/lease_sched_scaleout_install.log 2>&1 \
    || { tail -40 /tmp/lease_sched_scaleout_install.log; exit 1; }
fi
# The proxy SQL loaded here is generated from the sql/*.sql of this tree; the quick run
# (part of `make test`) also insists that the committed sql/proxy file is that same text.
PROXY_SQL=/tmp/lease_sched_scaleout_proxy.sql
python3 scripts/gen_proxy.py --out "$PROXY_SQL"
if ! python3 scripts/gen_proxy.py --check; then
  [ $mode = quick ] && exit 1
  echo "scaleout: WARNING: loading the proxy generated from this tree's sql/*.sql instead" >&2
fi
VENV=/tmp/lease_sched_scaleout_venv
if ! "$VENV/bin/python" -c "import psycopg, pytest" 2>/dev/null; then
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'psycopg[binary]>=3.1' 'pytest>=7'
fi

# The roles of docs/scaling.md, "Privileges": on each partition (primary) the remote role
# lease_proxy with what the proxy needs there. $1: the partition's port.
setup_partition_roles() {
  psql_at "$1" -d lease_sched \
    -c "CREATE ROLE lease_proxy LOGIN PASSWORD 'lease_proxy'" \
    -c "GRANT USAGE ON SCHEMA lease_sched TO lease_proxy" \
    -c "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched TO lease_proxy" \
    -c "GRANT SELECT ON lease_sched.executions, lease_sched.runtimes TO lease_proxy"
}

# The proxy: a cluster without lease_sched, database lease_sched holding the PL/Proxy
# functions over every partition, and database lease_sched_1p over partition 0 only (the
# throughput comparison). $1..: the partitions' connect strings. Roles as docs/scaling.md
# documents them: lease_runner (a runner, mapped to lease_proxy on the partitions),
# lease_reader (finds a key's partition, nothing else); the suite's own superuser postgres
# is mapped to itself. No mapping FOR PUBLIC.
setup_proxy() {
  LEASE_CLUSTER_PRELOAD='' lease_cluster_start "$DIR/proxy" "$PROXY_PORT" "log_min_messages = warning" \
    "max_connections = 100"
  as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PROXY_PORT" lease_sched_1p
  psql_at "$PROXY_PORT" -d postgres -c "CREATE ROLE lease_runner LOGIN" -c "CREATE ROLE lease_reader LOGIN"
  local db opts i
  for db in lease_sched lease_sched_1p; do
    opts="connection_lifetime '1800', query_timeout '30'"
    i=0
    for cs in "$@"; do
      opts+=", p$i '$cs'"
      i=$((i + 1))
      [ $db = lease_sched_1p ] && break
    done
    psql_at "$PROXY_PORT" -d "$db" -f "$PROXY_SQL"
    psql_at "$PROXY_PORT" -d "$db" -c "CREATE SERVER lease_sched FOREIGN DATA WRAPPER plproxy OPTIONS ($opts)" \
      -c "CREATE USER MAPPING FOR postgres SERVER lease_sched OPTIONS (user 'postgres')" \
      -c "GRANT USAGE ON SCHEMA lease_sched, lease_sched_proxy TO lease_runner" \
      -c "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched, lease_sched_proxy TO lease_runner" \
      -c "GRANT USAGE ON FOREIGN SERVER lease_sched TO lease_runner" \
      -c "CREATE USER MAPPING FOR lease_runner SERVER lease_sched OPTIONS (user 'lease_proxy', password 'lease_proxy')" \
      -c "GRANT USAGE ON SCHEMA lease_sched_proxy TO lease_reader" \
      -c "GRANT EXECUTE ON FUNCTION lease_sched_proxy.partition_of(text), lease_sched_proxy.hash32(text),
                 lease_sched_proxy.partition_count() TO lease_reader"
  done
}

if [ $mode = quick ]; then
  [ -n "${SCALEOUT_KEEP:-}" ] || trap stop_quick EXIT
  section "quick: proxy :$PROXY_PORT, plain partitions p0 :${QUICK_PORTS[0]}, p1 :${QUICK_PORTS[1]}"
  for i in 0 1; do
    lease_cluster_start "$DIR/p$i" "${QUICK_PORTS[i]}" "log_min_messages = warning" "lease_sched.sweep_interval = '1s'"
    psql_at "${QUICK_PORTS[i]}" -d lease_sched -c "CREATE EXTENSION lease_sched"
    setup_partition_roles "${QUICK_PORTS[i]}"
  done
  parts=()
  for i in 0 1; do parts+=("host=127.0.0.1 port=${QUICK_PORTS[i]} dbname=lease_sched user=postgres connect_timeout=2"); done
  setup_proxy "${parts[@]}"
  export SCALEOUT_MODE=quick
  export SCALEOUT_PROXY_DSN="host=127.0.0.1 port=$PROXY_PORT dbname=lease_sched user=postgres"
  export SCALEOUT_PARTITIONS="${parts[0]};${parts[1]}"
  section "routing tests (tests/scaleout, -m routing)"
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/scaleout -m routing "${args[@]}"
  exit $?
fi

# ---- full: pg_auto_failover ------------------------------------------------------------
section "full: monitor :$MONITOR_PORT, p0 :55510/:55511, p1 :55520/:55521, proxy :$PROXY_PORT"
stop_full
rm -rf "$DIR" && mkdir -p "$DIR" "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR" && chown -R postgres "$DIR"
chmod 700 "$XDG_RUNTIME_DIR"
MONITOR_URI="postgres://autoctl_node@127.0.0.1:$MONITOR_PORT/pg_auto_failover?sslmode=disable"

# Run the pg_autoctl service of node directory $1 in the background (log: $1/autoctl.log).
run_keeper() {
  local d=$1
  (cd "$d" && as_pg setsid pg_autoctl run --pgdata "$d/data" >>"$d/autoctl.log" 2>&1 </dev/null &)
}
# State of node $1 as the monitor sees it: "reported assigned".
node_state() {
  psql_at "$MONITOR_PORT" -d pg_auto_failover -Atc \
    "SELECT reportedstate || ' ' || goalstate FROM pgautofailover.node WHERE nodename = '$1'"
}
wait_state() {   # node, wanted reported state, timeout seconds
  local t=0
  until [ "$(node_state "$1")" = "$2 $2" ]; do
    t=$((t + 1))
    if [ $t -gt "$3" ]; then
      echo "scaleout: $1 did not reach $2 in $3 s (now: $(node_state "$1"))" >&2
      tail -20 "$DIR/$1/autoctl.log" >&2
      return 1
    fi
    sleep 1
  done
}

mkdir -p "$DIR/monitor" && chown postgres "$DIR/monitor"
as_pg pg_autoctl create monitor --pgdata "$DIR/monitor/data" --pgport "$MONITOR_PORT" --hostname 127.0.0.1 \
  --pgctl "$PGBIN/pg_ctl" --auth trust --no-ssl >"$DIR/monitor/create.log" 2>&1 \
  || { tail -30 "$DIR/monitor/create.log"; exit 1; }
# Failure detection within seconds instead of the defaults' ~20 s + 30 s (docs/scaling.md):
# the monitor checks every second and calls a node unhealthy after 3 s of failed checks;
# a primary the monitor lost waits 10 s before its secondary is promoted, and every
# keeper demotes its own primary after 5 s without the monitor and the standby (below), so
# an isolated old primary stops taking writes before the new one starts.
cat >>"$DIR/monitor/data/postgresql.conf" <<CONF
pgautofailover.health_check_period = 1000
pgautofailover.health_check_timeout = 1000
pgautofailover.health_check_max_retries = 1
pgautofailover.health_check_retry_delay = 500
pgautofailover.node_considered_unhealthy_timeout = 3000
pgautofailover.primary_demote_timeout = 10000
log_min_messages = warning
CONF
run_keeper "$DIR/monitor"
for i in $(seq 60); do psql_at "$MONITOR_PORT" -d pg_auto_failover -c "SELECT 1" >/dev/null 2>&1 && break; sleep 1; done
for f in p0 p1; do
  as_pg pg_autoctl create formation --pgdata "$DIR/monitor/data" --formation "$f" --kind pgsql \
    --dbname lease_sched >/dev/null
done

# What every data node adds to the postgresql.conf pg_autoctl writes (copied to the
# secondary by its base backup).
node_conf() {
  cat >>"$1/postgresql.conf" <<CONF
shared_preload_libraries = 'lease_sched'
lease_sched.database = 'lease_sched'
lease_sched.sweep_interval = '1s'
max_worker_processes = 16
max_connections = 150
log_min_messages = warning
CONF
}
create_node() {  # name port formation
  local name=$1 port=$2 formation=$3 d=$DIR/$1
  mkdir -p "$d" && chown postgres "$d"
  as_pg bash -c "cd '$d' && pg_autoctl create postgres --pgdata '$d/data' --pgport $port --hostname 127.0.0.1 \
      --pgctl '$PGBIN/pg_ctl' --listen 127.0.0.1 --name $name --formation $formation --monitor '$MONITOR_URI' \
      --dbname lease_sched --auth trust --no-ssl" >"$d/create.log" 2>&1 \
    || { tail -30 "$d/create.log"; exit 1; }
  as_pg pg_autoctl config set --pgdata "$d/data" timeout.network_partition_timeout 5 >/dev/null
}
for f in p0 p1; do
  port=$([ $f = p0 ] && echo 55510 || echo 55520)
  create_node "${f}a" "$port" "$f"
  node_conf "$DIR/${f}a/data"
  as_pg "$PGBIN/pg_ctl" -D "$DIR/${f}a/data" -m fast -w stop >/dev/null 2>&1 || true
  run_keeper "$DIR/${f}a"
done
for f in p0 p1; do wait_state "${f}a" single 90; done
wait_pg() {  # port
  local t
  for t in $(seq 60); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" && return 0; sleep 1; done
  echo "scaleout: nothing accepts connections on port $1" >&2; return 1
}
for f in p0 p1; do
  port=$([ $f = p0 ] && echo 55510 || echo 55520)
  wait_pg "$port"
  psql_at "$port" -d lease_sched -c "CREATE EXTENSION IF NOT EXISTS lease_sched"
  setup_partition_roles "$port"
done
for f in p0 p1; do
  port=$([ $f = p0 ] && echo 55511 || echo 55521)
  create_node "${f}b" "$port" "$f"
  run_keeper "$DIR/${f}b"
done
for f in p0 p1; do wait_state "${f}a" primary 180; wait_state "${f}b" secondary 180; done
for f in p0 p1; do as_pg pg_autoctl show state --pgdata "$DIR/monitor/data" --formation "$f"; done

parts=("host=127.0.0.1,127.0.0.1 port=55510,55511 dbname=lease_sched user=postgres connect_timeout=2 target_session_attrs=read-write"
       "host=127.0.0.1,127.0.0.1 port=55520,55521 dbname=lease_sched user=postgres connect_timeout=2 target_session_attrs=read-write")
setup_proxy "${parts[@]}"
export SCALEOUT_MODE=full SCALEOUT_DIR=$DIR XDG_CONFIG_HOME XDG_DATA_HOME XDG_RUNTIME_DIR SCALEOUT_MONITOR_PORT=$MONITOR_PORT
export SCALEOUT_PROXY_DSN="host=127.0.0.1 port=$PROXY_PORT dbname=lease_sched user=postgres"
export SCALEOUT_PROXY_1P_DSN="host=127.0.0.1 port=$PROXY_PORT dbname=lease_sched_1p user=postgres"
export SCALEOUT_PARTITIONS="${parts[0]};${parts[1]}"

if [ $mode = keep ]; then
  cat <<MSG

lease_sched scale-out is running: 1 proxy, 2 partitions (pg_auto_failover pairs), 1 monitor.
    $PGBIN/psql -h 127.0.0.1 -p $PROXY_PORT -U postgres lease_sched        # the proxy
    SELECT * FROM lease_sched.lease_try_claim('nightly-report', now(), 'me');
    SELECT lease_sched_proxy.partition_of('nightly-report');
    $PGBIN/psql "${parts[0]}"     # partition 0
    runuser -u postgres -- env XDG_CONFIG_HOME=$XDG_CONFIG_HOME XDG_DATA_HOME=$XDG_DATA_HOME \\
        pg_autoctl show state --pgdata $DIR/monitor/data
Stop everything with: scripts/scaleout.sh --stop
MSG
  exit 0
fi
trap stop_full EXIT
section "the scale-out suite (tests/scaleout)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -s tests/scaleout "${args[@]}"
