#!/usr/bin/env bash
# META.json (the PGXN distribution metadata) generated from Cargo.toml, the one place the
# version lives (lease_sched.control says '@CARGO_VERSION@'; cargo pgrx fills it in).
#   scripts/meta.sh            print META.json
#   scripts/meta.sh --write    rewrite the committed META.json
#   scripts/meta.sh --check    exit 1 (and show the diff) when the committed META.json is stale
#   scripts/meta.sh --version  print the version alone (scripts/package.sh uses it)
set -euo pipefail
cd "$(dirname "$0")/.."

# A key of Cargo.toml's [package] table (a one-line string value).
package_key() {
  awk -v key="$1" '
    /^\[/ { in_package = ($0 == "[package]") }
    in_package && $1 == key && $2 == "=" {
      sub(/^[^=]*=[ \t]*"/, ""); sub(/"[ \t]*$/, ""); print; exit
    }' Cargo.toml
}
json_escape() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }

version=$(package_key version)
description=$(package_key description | json_escape)
[ -n "$version" ] || { echo "meta.sh: no version in Cargo.toml's [package]" >&2; exit 1; }
case "$(package_key license)" in
  Apache-2.0) license=apache_2_0 ;;
  MIT) license=mit ;;
  PostgreSQL) license=postgresql ;;
  *) echo "meta.sh: map Cargo.toml's license to a PGXN license key here" >&2; exit 1 ;;
esac

meta() {
  cat <<JSON
{
   "name": "lease_sched",
   "abstract": "Job-execution leases decided on the database clock",
   "description": "$description",
   "version": "$version",
   "maintainer": [
      "lease_sched maintainers"
   ],
   "license": "$license",
   "provides": {
      "lease_sched": {
         "abstract": "Claim a scheduled run exactly once, heartbeat, finish, retry, fence old holders",
         "docfile": "docs/api.md",
         "version": "$version"
      }
   },
   "prereqs": {
      "runtime": {
         "requires": {
            "PostgreSQL": "15.0.0"
         }
      }
   },
   "no_index": {
      "directory": [
         "bench",
         "tests",
         "target"
      ]
   },
   "generated_by": "scripts/meta.sh (from Cargo.toml)",
   "meta-spec": {
      "version": "1.0.0",
      "url": "https://pgxn.org/meta/spec.txt"
   },
   "tags": [
      "scheduler",
      "lease",
      "cron",
      "fencing token",
      "leader election",
      "background worker",
      "pgrx"
   ],
   "release_status": "stable"
}
JSON
}

case "${1:-}" in
  "") meta ;;
  --version) echo "$version" ;;
  --write) meta > META.json ;;
  --check)
    if ! meta | diff -u META.json - >&2; then
      echo "meta.sh: META.json does not match Cargo.toml (version $version): run scripts/meta.sh --write and commit it" >&2
      exit 1
    fi ;;
  *) echo "usage: $0 [--write|--check|--version]" >&2; exit 2 ;;
esac
