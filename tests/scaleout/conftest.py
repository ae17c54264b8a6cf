"""Shared helpers of the scale-out suite (scripts/scaleout.sh sets the environment).

SCALEOUT_PROXY_DSN      the proxy database (PL/Proxy functions in schema lease_sched)
SCALEOUT_PARTITIONS     the partitions' connect strings, ';'-separated, p0 first
SCALEOUT_MODE           quick (plain partitions) or full (pg_auto_failover pairs)
LEASE_SCHED_PGBIN       the bin directory of the PostgreSQL under test (the variable the
                        integration tests read too)
"""
import hashlib
import os
import time
import uuid

import psycopg
import pytest

PROXY_DSN = os.environ.get("SCALEOUT_PROXY_DSN", "host=127.0.0.1 port=55525 dbname=lease_sched user=postgres")
PARTITIONS = os.environ.get(
    "SCALEOUT_PARTITIONS",
    "host=127.0.0.1 port=55526 dbname=lease_sched user=postgres;host=127.0.0.1 port=55527 dbname=lease_sched user=postgres",
).split(";")
MODE = os.environ.get("SCALEOUT_MODE", "quick")
DIR = os.environ.get("SCALEOUT_DIR", "/tmp/lease_sched_scaleout_q")


def pgbin() -> str:
    """Where pg_ctl and pgbench are: LEASE_SCHED_PGBIN, no guessed default."""
    try:
        return os.environ["LEASE_SCHED_PGBIN"]
    except KeyError:
        raise RuntimeError("LEASE_SCHED_PGBIN: the bin directory of the PostgreSQL under test "
                           "(scripts/scaleout.sh sets it)") from None


def hash32(key: str) -> int:
    """The proxy's frozen partition hash, in Python: first 4 bytes of md5, signed."""
    return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:4], "big", signed=True)


def partition_of(key: str, n: int = None) -> int:
    return hash32(key) & ((n or len(PARTITIONS)) - 1)


def connect(dsn: str, retry_for: float = 0) -> psycopg.Connection:
    deadline = time.monotonic() + retry_for
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def claim(c, job, plan, runner="r", stale_timeout="5 minutes", **kw):
    extra = "".join(f", {k} => %({k})s" for k in kw)
    row = c.execute(
        "SELECT outcome, execution_id, lease_token, attempt, fencing_token, stale_after"
        "  FROM lease_sched.lease_try_claim(job_name => %(job)s, plan_time => %(plan)s, runner_id => %(runner)s,"
        f"       stale_timeout => %(stale)s::interval{extra})",
        dict(job=job, plan=plan, runner=runner, stale=stale_timeout, **kw),
    ).fetchone()
    return dict(zip(["outcome", "execution_id", "lease_token", "attempt", "fencing_token", "stale_after"], row))


def heartbeat(c, eid, token) -> bool:
    return c.execute("SELECT lease_sched.lease_heartbeat(%s, %s)", (eid, token)).fetchone()[0]


def finish(c, eid, token, status="SUCCESS") -> bool:
    return c.execute("SELECT lease_sched.lease_finish(%s, %s, %s)", (eid, token, status)).fetchone()[0]


@pytest.fixture
def proxy():
    c = connect(PROXY_DSN, retry_for=30)
    yield c
    c.close()


@pytest.fixture
def parts():
    cs = [connect(d, retry_for=60) for d in PARTITIONS]
    yield cs
    for c in cs:
        c.close()
