# lease_sched — the two commands a newcomer needs, and the ones after them.
#   make demo   build, install, start a scratch cluster and run the demo scenario
#   make test   every test of the project (what CI runs)
.PHONY: demo test install bench clean

demo:
	scripts/demo.sh

test:
	scripts/test.sh

install:
	scripts/setup.sh
	PATH="$$HOME/.cargo/bin:$$PATH" cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config

clean:
	cargo clean
	cargo clean --manifest-path tests/integration/Cargo.toml
