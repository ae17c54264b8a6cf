# lease_sched — the two commands a newcomer needs, and the ones after them.
#   make demo   build, install, start a scratch cluster and run the demo scenario
#   make test   every test of the project (what CI runs), on PostgreSQL 15 and 18 (scripts/lib.sh)
#               (LEASE_TEST_MAJORS=18 make test: one major only)
.PHONY: demo test install torture faults bench clean package scaleout demo-scaleout portable

demo:
	demo/run.sh

test:
	scripts/test.sh

# Longer runs of the reliability suites (a bounded run of each is part of `make test`),
# on every major of LEASE_TEST_MAJORS (default: LEASE_MAJORS of scripts/lib.sh, 15 and 18).
torture:
	LEASE_TEST_ONLY=integration LEASE_TORTURE_SECONDS=$${SECONDS_TO_RUN:-300} LEASE_TORTURE_CLAIMS=$${CLAIMS:-1000000} LEASE_TORTURE_CLIENTS=64 \
	  LEASE_TEST_CARGO_ARGS="--release --test torture" scripts/test.sh --nocapture

faults:
	LEASE_TEST_ONLY=integration LEASE_HOSTILE_CASES=$${CASES:-5000} \
	  LEASE_TEST_CARGO_ARGS="--release --test restarts --test failover --test hostile_input --test runtimes --test disk_full" scripts/test.sh --nocapture

# lease_sched against the SQL users write by hand (docs/benchmarks.md), the native edition
# then the portable one (docs/portable.md), each side by side with the same hand-written
# SQL; about 45 minutes each. bench/run.sh --quick is the one-minute smoke run.
bench: portable
	scripts/setup.sh && bench/run.sh \
	  && bench/run.sh --portable dist/lease_sched_portable--$$(scripts/meta.sh --version).sql --chart docs/benchmarks-portable.svg

# The portable edition (docs/portable.md): SQL and PL/pgSQL only, for managed PostgreSQL.
# Writes dist/lease_sched_portable--<version>.sql, and the same as a pg_tle extension
# (.pg_tle.sql, untested); needs python3 only (no Rust, no server).
portable:
	python3 scripts/portable.py
	python3 scripts/portable.py --pg-tle

# Into PostgreSQL 15 (Debian's); MAJORS="15 18" make install for both.
install:
	scripts/setup.sh
	for m in $${MAJORS:-15}; do \
	  PATH="$$HOME/.cargo/bin:$$PATH" cargo pgrx install --release --pg-config "$$(scripts/cluster.sh pgbin $$m)/pg_config" \
	    --no-default-features --features pg$$m || exit 1; \
	done

clean:
	cargo clean

# Debian packages, one per PostgreSQL major (default: every major of scripts/lib.sh), into
# target/packages/ (scripts/package.sh; docs/install.md). MAJORS="15" make package for one.
package:
	scripts/setup.sh
	scripts/package.sh $${MAJORS:-}

# Beyond one primary (docs/scaling.md): a PL/Proxy proxy over 2 partitions, each a
# pg_auto_failover pair with one monitor, all on 127.0.0.1 (ports 55500-55521); runs the
# scale-out suite (tests/scaleout: routing, failover under load, throughput), then stops it.
scaleout:
	scripts/scaleout.sh

# The same set-up, left running; prints how to psql into the proxy (scripts/scaleout.sh --stop).
demo-scaleout:
	scripts/scaleout.sh --keep
