"""The runner of examples/runner.py, with the lease_sched client library (clients/python):
heartbeats, loss detection, FAILED-on-exception and never-finish-after-loss come with it.
Against the demo cluster (make demo listens on 55450), from the repository root (Debian 12
has no system pip: a virtualenv is the way; apt-get install python3-venv if it is missing):

    python3 -m venv /tmp/lease_venv && /tmp/lease_venv/bin/pip install ./clients/python
    /tmp/lease_venv/bin/python examples/runner_client.py "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres" example-report
"""
import sys
import time
from datetime import timedelta

from lease_sched import Client, Lease, LeaseLost


def work(lease: Lease) -> dict:
    # The job's real work goes here. Pass lease.fencing_token to anything downstream that must
    # refuse writes from an older holder; call lease.check() between steps (it raises LeaseLost),
    # and run long queries on lease.connection() so cancel_on_loss can stop them.
    lease.connection().execute("SELECT pg_sleep(0.5)")
    lease.check()
    lease.rows_affected = 1
    return {"rows": 1, "fencing_token": lease.fencing_token}


def main() -> None:
    dsn = sys.argv[1]
    job = sys.argv[2] if len(sys.argv) > 2 else "example-report"
    client = Client(dsn)
    try:
        run = client.run_due(job, timedelta(minutes=1), work,
                             stale_timeout=timedelta(seconds=30), cancel_on_loss=True)
    except LeaseLost as e:
        print(f"lost: {e.reason}")
        return
    if run.outcome == "success":
        assert run.claim is not None
        print(f"{run.claim.outcome} success")
    else:
        print(run.outcome.replace("_", " "))


if __name__ == "__main__":
    main()
