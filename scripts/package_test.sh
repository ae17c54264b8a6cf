#!/usr/bin/env bash
# The PostgreSQL 15 package on a bare Debian 12: no Rust, no compiler, no
# PostgreSQL, only what debootstrap's minbase variant installs. Inside a throwaway copy of
# that root (chroot), the way a user would:
#   apt-get install ./postgresql-15-lease-sched_<version>_<arch>.deb   (pulls postgresql-15)
# then Debian's own cluster 15/main preloading lease_sched: CREATE EXTENSION, a claim, a
# heartbeat, a finish, a sweep (and the background sweeper failing an abandoned lease), the
# upgrade path from 0.1.0 on offer, a reinstall and an `apt-get remove` under the running
# server (the maintainer scripts say a restart is needed), and the files gone again. The
# package is built under umask 077 and must still carry 0755 directories and 0644 files.
# First, without any of that: the committed META.json matches Cargo.toml (scripts/meta.sh).
#
# The bare root is built once with debootstrap (about a minute) and cached in
# /var/tmp/lease_sched_pkgroot/base; each run works in a copy that is removed afterwards.
# Prints SKIP and exits 0 when it cannot run (not root, no debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
started=$SECONDS
say() { echo "package test: $*"; }
die() { echo "package test: FAIL: $*" >&2; exit 1; }

scripts/meta.sh --check || die "META.json is stale"

[ "$(id -u)" = 0 ] || { say "SKIP (needs root for debootstrap and chroot)"; exit 0; }
apt_ensure "package test" debootstrap 2>/dev/null || { say "SKIP (no debootstrap, and apt-get could not install it)"; exit 0; }

top=/var/tmp/lease_sched_pkgroot
base=$top/base
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$top"
if [ ! -e "$base/.lease_sched_base" ]; then
  say "building a bare Debian 12 root with debootstrap (once; cached in $base)"
  rm -rf "$base" "$base.partial"
  if ! debootstrap --variant=minbase bookworm "$base.partial" "$mirror" >"$top/debootstrap.log" 2>&1; then
    tail -5 "$top/debootstrap.log"
    say "SKIP (debootstrap could not build a Debian 12 root from $mirror)"; exit 0
  fi
  mv "$base.partial" "$base" && touch "$base/.lease_sched_base"
fi

version=$(scripts/meta.sh --version)
arch=$(dpkg --print-architecture)
say "building the PostgreSQL 15 package (under umask 077, as a careful builder's shell has)"
(umask 077 && scripts/package.sh 15) >/tmp/lease_sched_package_test_build.log 2>&1 \
  || { tail -30 /tmp/lease_sched_package_test_build.log; die "scripts/package.sh 15 failed"; }
deb=${LEASE_PACKAGE_DIR:-target/packages}/postgresql-15-lease-sched_${version}_${arch}.deb
[ -f "$deb" ] || die "scripts/package.sh did not make $deb"
# Modes are the package's, not the builder's umask: directories 0755, files 0644, the
# maintainer scripts 0755.
bad=$(dpkg-deb --contents "$deb" | awk '($1 ~ /^d/ && $1 != "drwxr-xr-x") || ($1 ~ /^-/ && $1 != "-rw-r--r--") {print "  " $1 " " $NF}')
[ -z "$bad" ] || die "entries with modes other than 0755 (directories) and 0644 (files):
$bad"
ctl=$(mktemp -d)
dpkg-deb --control "$deb" "$ctl"
for script in postinst prerm; do
  [ "$(stat -c %a "$ctl/$script" 2>/dev/null)" = 755 ] || { rm -rf "$ctl"; die "the package has no executable $script"; }
done
rm -rf "$ctl"
say "modes: directories 0755, files 0644, postinst and prerm 0755"

run=$top/run-$$
cleanup() {
  chroot "$run" pg_ctlcluster 15 main stop -m immediate >/dev/null 2>&1 || true
  # Anything still running inside the root was started by this test.
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$run" ] && { kill -9 "${p#/proc/}" 2>/dev/null || true; }
  done
  for m in dev/pts dev sys proc; do umount -l "$run/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$run"
}
trap cleanup EXIT
cp -a "$base" "$run"
mount -t proc proc "$run/proc"; mount -t sysfs sys "$run/sys"
mount --bind /dev "$run/dev"; mount --bind /dev/pts "$run/dev/pts"
# The same apt sources and name resolution as this machine; no service starts by itself.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$run/etc/apt/sources.list.d/" && rm -f "$run/etc/apt/sources.list"
fi
cp /etc/apt/apt.conf.d/99artifact-registry "$run/etc/apt/apt.conf.d/" 2>/dev/null || true
cp /etc/resolv.conf "$run/etc/resolv.conf" 2>/dev/null || true
printf '#!/bin/sh\nexit 101\n' > "$run/usr/sbin/policy-rc.d" && chmod +x "$run/usr/sbin/policy-rc.d"
cp "$deb" "$run/tmp/"

say "installing $(basename "$deb") on a bare Debian 12 root (chroot $run)"
cat > "$run/tmp/package_test_inner.sh" <<'INNER'
set -euo pipefail
fail() { echo "package test: FAIL: $*" >&2; exit 1; }
for tool in cargo rustc cc gcc pg_config psql; do
  ! command -v $tool >/dev/null || { echo "package test: FAIL: the root is not bare: it has $tool" >&2; exit 1; }
done
cd /tmp
t=$SECONDS
apt-get update -qq
apt-get install -y -qq "./$DEB" >/tmp/apt.log 2>&1 || { tail -20 /tmp/apt.log; exit 1; }
echo "package test: apt-get install ./$DEB took $((SECONDS - t)) s (postgresql-15 and its dependencies with it)"
dpkg -L postgresql-15-lease-sched | grep -E '\.so$|\.sql$|\.control$' | sed 's/^/  /'

# Debian made cluster 15/main at install; preload lease_sched there, sockets only: no TCP
# listener, so the port only names the socket file inside this chroot and cannot collide
# with anything on the machine.
PORT=55470
cat > /etc/postgresql/15/main/conf.d/lease_sched.conf <<CONF
shared_preload_libraries = 'lease_sched'
lease_sched.database = 'app'
lease_sched.sweep_interval = '1s'
port = $PORT
listen_addresses = ''
CONF
pg_ctlcluster 15 main start
q() { runuser -u postgres -- psql -X -qAt -v ON_ERROR_STOP=1 -p $PORT -d app "$@"; }
runuser -u postgres -- createdb -p $PORT app
q -c "CREATE EXTENSION lease_sched"
[ "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'lease_sched'")" = "$VERSION" ] || fail "extversion is not $VERSION"
read -r id token fencing < <(q -F ' ' -c "SELECT execution_id, lease_token, fencing_token
    FROM lease_sched.lease_try_claim('nightly', '2026-01-01 03:00+00', 'host-a')")
[ "$(q -c "SELECT lease_sched.lease_heartbeat('$id', '$token')")" = t ] || fail "heartbeat"
[ "$(q -c "SELECT lease_sched.lease_finish('$id', '$token', 'SUCCESS')")" = t ] || fail "finish"
echo "package test: claim (fencing token $fencing), heartbeat, finish: ok"
# An abandoned lease that may not be stolen: a sweep fails it (the worker's or sweep()).
q -c "SELECT outcome FROM lease_sched.lease_try_claim('abandoned', '2026-01-01 03:00+00', 'host-b',
          stale_timeout => '1 second', allow_stale_reentry => false)" >/dev/null
sleep 2.5
q -c "SELECT * FROM lease_sched.sweep()" | sed 's/^/  sweep(): /'
[ "$(q -c "SELECT status FROM lease_sched.sys_cron_executions WHERE job_name = 'abandoned'")" = FAILED ] \
  || fail "the abandoned lease was not swept to FAILED"
[ -n "$(q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'")" ] || fail "no sweeper running"
echo "package test: the sweeper runs; the abandoned lease was swept to FAILED"
q -c "SELECT '  update path: ' || source || ' -> ' || target FROM pg_extension_update_paths('lease_sched')
       WHERE path IS NOT NULL AND target = '$VERSION'"
# Replacing the library under the running, preloading server: postinst says a restart is
# needed and names the configuration that preloads it.
dpkg -i "./$DEB" >/tmp/reinstall.log 2>&1 || { cat /tmp/reinstall.log; fail "dpkg -i (reinstall)"; }
grep -q "Restart each server that preloads lease_sched" /tmp/reinstall.log \
  || { cat /tmp/reinstall.log; fail "a reinstall under a running server did not say that it needs a restart"; }
grep -q "/etc/postgresql/15/main/conf.d/lease_sched.conf" /tmp/reinstall.log \
  || { cat /tmp/reinstall.log; fail "postinst did not name the configuration that preloads lease_sched"; }
echo "package test: a reinstall under the running server says:"
sed -n '/installed under running/,$p' /tmp/reinstall.log | sed 's/^/    /'
# Removing it under the running server: prerm says what to do before the next start.
apt-get remove -y -qq postgresql-15-lease-sched >/tmp/remove.log 2>&1 || { cat /tmp/remove.log; fail "apt-get remove"; }
grep -q "remove lease_sched from" /tmp/remove.log && grep -q "shared_preload_libraries" /tmp/remove.log \
  || { cat /tmp/remove.log; fail "a removal under a running server did not say what to do"; }
echo "package test: apt-get remove under the running server says what to do before the next start"
pg_ctlcluster 15 main stop
if ls /usr/lib/postgresql/15/lib/lease_sched.so /usr/share/postgresql/15/extension/lease_sched* 2>/dev/null; then
  fail "apt-get remove left the files above"
fi
echo "package test: apt-get remove took the files away"
INNER
chroot "$run" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive DEB="$(basename "$deb")" VERSION="$version" bash /tmp/package_test_inner.sh \
  || die "see the output above"
say "PASS ($(basename "$deb") on bare Debian 12, $((SECONDS - started)) s)"
