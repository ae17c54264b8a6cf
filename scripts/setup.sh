#!/usr/bin/env bash
# Installs everything lease_sched needs on Debian 12 as root, and does nothing that is
# already done: apt packages, sudo, cargo-pgrx 0.18.1, and `cargo pgrx init` against the
# system PostgreSQL 15. Every other script calls this first.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron pgbouncer
              libclang-dev clang sudo python3-venv prometheus-postgres-exporter)

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

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (takes a few minutes once)" >&2
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --force
fi
if ! grep -qs "pg15 = \"$PG_CONFIG\"" "$HOME/.pgrx/config.toml"; then
  cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi
# pgrx's test runner and the postgres user need to reach the build tree.
chmod o+rx "$HOME" 2>/dev/null || true
