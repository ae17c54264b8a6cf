"""A lease_sched runner in Python (psycopg 3): claim the due plan of a job, heartbeat
from a thread while the work runs, finish with the token.

    python3 examples/runner.py "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres" example-report
"""
import json
import os
import sys
import threading
import time
from datetime import timedelta

import psycopg

STALE_TIMEOUT = timedelta(seconds=30)


def work():
    time.sleep(0.5)  # the job's real work goes here
    return {"rows": 1}


def heartbeat_until(stop, dsn, execution_id, token, lost):
    # Its own connection: the work may hold the other one busy for a long time.
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.wait(STALE_TIMEOUT.total_seconds() / 3):
            ok = conn.execute("SELECT lease_sched.lease_heartbeat(%s, %s)", (execution_id, token)).fetchone()[0]
            if not ok:
                lost.set()  # someone else holds the run now: stop working
                return


def run_once(dsn, job):
    with psycopg.connect(dsn, autocommit=True) as conn:
        plan = conn.execute("SELECT lease_sched.lease_next_plan(job_name => %s, every => '1 minute')",
                            (job,)).fetchone()[0]
        if plan is None:
            return "nothing due"
        outcome, execution_id, token, fencing_token = conn.execute(
            """SELECT outcome, execution_id, lease_token, fencing_token
                 FROM lease_sched.lease_try_claim(job_name => %s, plan_time => %s, runner_id => %s,
                                                  stale_timeout => %s)""",
            (job, plan, f"python-{os.getpid()}", STALE_TIMEOUT)).fetchone()
        if outcome == "conflicted":
            return "conflicted"
        stop, lost = threading.Event(), threading.Event()
        beat = threading.Thread(target=heartbeat_until, args=(stop, dsn, execution_id, token, lost))
        beat.start()
        try:
            result = work()  # pass fencing_token to anything downstream that must reject stale writers
            status, error = "SUCCESS", None
        except Exception as e:  # noqa: BLE001 - a failed run is recorded, then retried
            result, status, error = None, "FAILED", str(e)
        finally:
            stop.set()
            beat.join()
        if lost.is_set():
            return "lost"
        finished = conn.execute(
            "SELECT lease_sched.lease_finish(%s, %s, %s, result => %s, error_msg => %s)",
            (execution_id, token, status, json.dumps(result) if result else None, error)).fetchone()[0]
        return f"{outcome} {status.lower()}" if finished else "lost"


if __name__ == "__main__":
    print(run_once(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "example-report"))
