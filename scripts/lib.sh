# shellcheck shell=bash
# The plumbing every script shares, sourced (never run): which PostgreSQL majors the project
# builds and tests, where each one's binaries are, scratch clusters run as the postgres
# user, and free ports. scripts/cluster.sh is the command-line form of the same functions.
#
#   . "$(dirname "$0")/lib.sh"      (or: . scripts/lib.sh from the top of the tree)
#
# Functions return non-zero with a message on stderr when they fail; they never exit, so a
# caller decides (under `set -e` a failed call in a plain statement ends the script).

# The PostgreSQL majors, oldest first: `make test` runs each (LEASE_TEST_MAJORS picks some),
# `make package` packages each, and each has a cargo feature pgN in Cargo.toml. Adding a
# major is this list plus that feature line (docs/testing.md, "Adding a PostgreSQL major").
# shellcheck disable=SC2034 # used by the scripts that source this file
LEASE_MAJORS=(15 18)

# pg_bin MAJOR: prints the bin directory of PostgreSQL MAJOR. LEASE_TEST_PGBIN_<MAJOR>
# overrides; otherwise 18 is the PyPI build scripts/setup.sh installs under
# /opt/lease_sched/pg18, and every other major is where Debian's packages put it.
pg_bin() {
  local major=${1:?major} var=LEASE_TEST_PGBIN_$1
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  case "$major" in
    18) echo /opt/lease_sched/pg18/bin ;;
    *) echo "/usr/lib/postgresql/$major/bin" ;;
  esac
}

# pg_config_of MAJOR: prints PostgreSQL MAJOR's pg_config when it is there and reports that
# major, else fails. Where pg_bin points first, then the one `cargo pgrx init` registered
# (~/.pgrx/config.toml), the headers pgrx builds against.
pg_config_of() {
  local major=${1:?major} p
  for p in "$(pg_bin "$major")/pg_config" \
           "$(sed -n "s/^pg$major *= *\"\(.*\)\"/\1/p" "$HOME/.pgrx/config.toml" 2>/dev/null | head -1)"; do
    [ -n "$p" ] && [ -x "$p" ] && "$p" --version 2>/dev/null | grep -q "^PostgreSQL $major\." && { echo "$p"; return 0; }
  done
  echo "no PostgreSQL $major: no pg_config in $(pg_bin "$major") (scripts/setup.sh installs it; LEASE_TEST_PGBIN_$major names another)" >&2
  return 1
}

# free_ports N: prints N distinct TCP ports nobody on this machine listens on
# now, one a line. Fixed ports collide with whatever else runs on a shared machine (another
# checkout's suite, somebody's scratch cluster): the kernel chooses, and every socket is held
# until all N are chosen so that they differ.
free_ports() {
  python3 - "${1:?how many}" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print("\n".join(str(s.getsockname()[1]) for s in held))
PY
}

# apt_ensure WHO PACKAGE...: installs the Debian packages of the list that are not installed
# yet (WHO names the caller in the message), and nothing when all are: setup stays fast.
apt_ensure() {
  local who=$1 p missing=(); shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "$who: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# test_python: prints the Python of the tests' virtualenv (/tmp/lease_sched_venv), made or
# completed first: psycopg for the examples and clients, croniter, the independent cron
# implementation tests/integration/tests/calendars.rs compares the calendars with.
test_python() {
  local venv=/tmp/lease_sched_venv
  if ! { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import psycopg, croniter" 2>/dev/null; }; then
    { /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install -q 'psycopg[binary]>=3.1' 'croniter>=2,<7'; } >&2 || return 1
  fi
  echo "$venv/bin/python"
}

# as_postgres CMD...: initdb refuses root, and the servers run as the postgres user.
as_postgres() { runuser -u postgres -- "$@"; }

# pg_init DIR PGBIN PORT [postgresql.conf lines...]: a new cluster in DIR/data (whatever was
# in DIR is stopped and removed), owned by postgres, UTF8 with the C.UTF-8 locale (without
# it, a root shell with no LANG gets SQL_ASCII), trust authentication for user postgres,
# listening on 127.0.0.1:PORT and a socket in DIR. initdb's output goes to DIR/initdb.log.
# PG_INITDB_ARGS adds initdb arguments (word-split).
pg_init() {
  local dir=${1:?directory} pgbin=${2:?bin directory} port=${3:?port} line; shift 3
  if [ -d "$dir/data" ]; then pg_stop "$dir" "$pgbin" immediate; fi
  rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir" || return 1
  # shellcheck disable=SC2086 # PG_INITDB_ARGS: extra initdb arguments, one a word
  if ! as_postgres "$pgbin/initdb" -E UTF8 --locale=C.UTF-8 -A trust -U postgres ${PG_INITDB_ARGS:-} \
         -D "$dir/data" >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2; echo "initdb failed in $dir" >&2; return 1
  fi
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    for line in "$@"; do echo "$line"; done
  } >> "$dir/data/postgresql.conf"
}

# pg_start DIR PGBIN: starts the cluster of pg_init, log in DIR/server.log; waits until it
# accepts connections (at most a minute).
pg_start() {
  as_postgres "$2/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 start >/dev/null \
    || { tail -30 "$1/server.log" >&2; echo "the server in $1 did not start" >&2; return 1; }
}

# pg_stop DIR PGBIN [MODE]: stops it (MODE fast by default); nothing when it does not run.
pg_stop() {
  as_postgres "$2/pg_ctl" -D "$1/data" -m "${3:-fast}" -w -t 60 stop >/dev/null 2>&1 || true
}

# lease_cluster_start DIR PORT [extra postgresql.conf lines...]: the scratch cluster the
# suites, the benchmarks and the demo use, with the binaries in $PGBIN (default PostgreSQL
# 15's). It preloads lease_sched, and pg_cron too when that PostgreSQL has it (Debian's 15
# does, the PostgreSQL 18 of scripts/setup.sh does not); LEASE_CLUSTER_PRELOAD preloads
# exactly that list instead (may be empty). lease_sched.database and cron.database_name name
# the database `lease_sched`, which it creates.
lease_cluster_start() {
  local dir=${1:?cluster directory} port=${2:?port} pgbin=${PGBIN:-$(pg_bin 15)} pkglibdir preload; shift 2
  if [ -x "$pgbin/pg_config" ]; then pkglibdir=$("$pgbin/pg_config" --pkglibdir); else pkglibdir="$pgbin/../lib"; fi
  preload=lease_sched
  [ -e "$pkglibdir/pg_cron.so" ] && preload=lease_sched,pg_cron
  preload=${LEASE_CLUSTER_PRELOAD-$preload}
  local conf=("shared_preload_libraries = '$preload'" "lease_sched.database = 'lease_sched'")
  [[ ",$preload," == *,pg_cron,* ]] && conf+=("cron.database_name = 'lease_sched'" "cron.host = '127.0.0.1'")
  conf+=("max_worker_processes = 16" "max_connections = 200")
  pg_init "$dir" "$pgbin" "$port" "${conf[@]}" "$@" \
    && pg_start "$dir" "$pgbin" \
    && as_postgres "$pgbin/createdb" -h 127.0.0.1 -p "$port" lease_sched
}

# lease_cluster_stop DIR [MODE]: stops what lease_cluster_start started ($PGBIN as there).
lease_cluster_stop() { pg_stop "${1:?cluster directory}" "${PGBIN:-$(pg_bin 15)}" "${2:-fast}"; }
