"""Routing through the PL/Proxy layer (sql/proxy/lease_sched_proxy.sql): every key lands on
exactly its partition, calls without a key find their row's partition, a claim retried after
a lost reply is harmless, and what cannot work through a proxy says so."""
import datetime as dt
import os
import subprocess
import time
import uuid

import psycopg
import pytest

from conftest import DIR, MODE, PARTITIONS, claim, connect, finish, hash32, heartbeat, partition_of, pgbin, unique

pytestmark = pytest.mark.routing
PLAN = dt.datetime(2026, 1, 1, 3, 0, tzinfo=dt.timezone.utc)


def test_hash_is_frozen(proxy):
    # These values are part of the on-disk layout of every deployment: a job's partition.
    frozen = {"nightly-report": -1014338502, "": -736260903, "é": None, "x" * 1000: None}
    for key, expected in frozen.items():
        got = proxy.execute("SELECT lease_sched_proxy.hash32(%s)", (key,)).fetchone()[0]
        assert got == hash32(key), key
        if expected is not None:
            assert got == expected, key
    assert proxy.execute("SELECT lease_sched_proxy.partition_count()").fetchone()[0] == len(PARTITIONS)
    assert proxy.execute("SELECT lease_sched_proxy.hash32(NULL)").fetchone()[0] == 0


def test_1000_jobs_land_only_on_their_partition_and_heartbeat_finish_reach_it(proxy, parts):
    prefix = unique("route")
    jobs = [f"{prefix}-{i}" for i in range(1000)]
    leases = {}
    for j in jobs:
        r = claim(proxy, j, PLAN)
        assert r["outcome"] == "won", j
        leases[j] = r
    per_part = [0] * len(parts)
    for p, c in enumerate(parts):
        rows = dict(c.execute(
            "SELECT job_name, id FROM lease_sched.executions WHERE job_name LIKE %s", (prefix + "-%",)).fetchall())
        for j in rows:
            assert partition_of(j) == p, f"{j} is on partition {p}, its hash says {partition_of(j)}"
            assert rows[j] == leases[j]["execution_id"]
        per_part[p] = len(rows)
    assert sum(per_part) == 1000, per_part
    assert min(per_part) > 400, f"a fair split: {per_part}"
    # The proxy's partition_of agrees with the rows.
    got = proxy.execute("SELECT count(*) FROM unnest(%s::text[]) j WHERE lease_sched_proxy.partition_of(j) = 0",
                        (jobs,)).fetchone()[0]
    assert got == per_part[0]
    for j in jobs:
        assert heartbeat(proxy, leases[j]["execution_id"], leases[j]["lease_token"]) is True
    for j in jobs:
        assert finish(proxy, leases[j]["execution_id"], leases[j]["lease_token"]) is True
    for c in parts:
        bad = c.execute("SELECT count(*) FROM lease_sched.executions WHERE job_name LIKE %s AND status <> 'SUCCESS'",
                        (prefix + "-%",)).fetchone()[0]
        assert bad == 0
    # A finished lease: heartbeat and finish say false, as on one primary.
    j = jobs[0]
    assert heartbeat(proxy, leases[j]["execution_id"], leases[j]["lease_token"]) is False
    assert finish(proxy, leases[j]["execution_id"], leases[j]["lease_token"]) is False
    assert heartbeat(proxy, uuid.uuid4(), uuid.uuid4()) is False
    print(f"\nrouting: 1000 jobs split {per_part} over {len(parts)} partitions")


def test_a_claim_retried_after_a_lost_reply_is_harmless(proxy, parts):
    # The client "loses" the reply: here its transaction on the proxy rolls back, but the
    # partition committed the claim on its own (PL/Proxy has no two-phase commit), exactly
    # as when the connection drops after the partition committed.
    job2 = unique("lost-reply")
    proxy.execute("BEGIN")
    lost = claim(proxy, job2, PLAN, runner="r1", stale_timeout="1 second")
    proxy.execute("ROLLBACK")
    assert lost["outcome"] == "won"
    p2 = parts[partition_of(job2)]
    assert p2.execute("SELECT count(*) FROM lease_sched.executions WHERE job_name = %s", (job2,)).fetchone()[0] == 1, \
        "the rolled-back proxy transaction did not undo the partition's claim"
    # The retry: same arguments. It names the same execution and does not take a second
    # lease, and it cannot give the token back: nobody holds the lost lease.
    retry = claim(proxy, job2, PLAN, runner="r1", stale_timeout="1 second")
    assert retry["outcome"] == "conflicted"
    assert retry["execution_id"] == lost["execution_id"] and retry["attempt"] == 1
    assert retry["lease_token"] is None and retry["fencing_token"] is None
    assert p2.execute("SELECT count(*), max(attempt) FROM lease_sched.executions WHERE job_name = %s",
                      (job2,)).fetchone() == (1, 1)
    # Once the lost lease is stale (stale_timeout after the claim), the plan is stolen, once,
    # with a higher token; the lost token is dead.
    time.sleep(1.2)
    again = claim(proxy, job2, PLAN, runner="r1", stale_timeout="1 minute")
    assert again["outcome"] == "stole" and again["attempt"] == 2
    assert again["execution_id"] == lost["execution_id"]
    assert again["fencing_token"] > lost["fencing_token"]
    assert heartbeat(proxy, lost["execution_id"], lost["lease_token"]) is False
    assert finish(proxy, again["execution_id"], again["lease_token"]) is True


def test_locks_route_by_name(proxy, parts):
    names = [unique("lock") for _ in range(20)]
    for n in names:
        acquired, token, fencing, holder, _ = proxy.execute(
            "SELECT * FROM lease_sched.lock_acquire(%s, 'h1', '1 minute')", (n,)).fetchone()
        assert acquired and holder == "h1"
        assert proxy.execute("SELECT acquired FROM lease_sched.lock_acquire(%s, 'h2')", (n,)).fetchone()[0] is False
        for p, c in enumerate(parts):
            here = c.execute("SELECT count(*) FROM lease_sched.locks WHERE name = %s", (n,)).fetchone()[0]
            assert here == (1 if p == partition_of(n) else 0), (n, p)
        info = proxy.execute("SELECT holder, fencing_token FROM lease_sched.lock_info(%s)", (n,)).fetchone()
        assert info == ("h1", fencing)
        assert proxy.execute("SELECT lease_sched.lock_heartbeat(%s, %s)", (n, token)).fetchone()[0] is True
        assert proxy.execute("SELECT lease_sched.lock_release(%s, %s)", (n, token)).fetchone()[0] is True
        assert proxy.execute("SELECT count(*) FROM lease_sched.lock_info(%s)", (n,)).fetchone()[0] == 0


def test_planner_and_runtimes_through_the_proxy(proxy, parts):
    job = unique("planned")
    nxt = proxy.execute("SELECT lease_sched.lease_next_plan(%s, '1 hour')", (job,)).fetchone()[0]
    assert nxt is not None
    r = claim(proxy, job, nxt)
    assert proxy.execute("SELECT lease_sched.lease_next_plan(%s, '1 hour')", (job,)).fetchone()[0] is None
    assert finish(proxy, r["execution_id"], r["lease_token"])
    assert proxy.execute("SELECT status FROM lease_sched.lease_latest_plan(%s)", (job,)).fetchone()[0] == "SUCCESS"
    rts = [proxy.execute("SELECT lease_sched.runtime_register(%s)", (unique("rt"),)).fetchone()[0] for _ in range(8)]
    for rt in rts:
        assert proxy.execute("SELECT lease_sched.runtime_touch(%s)", (rt,)).fetchone()[0] is True
        homes = [c.execute("SELECT count(*) FROM lease_sched.runtimes WHERE id = %s", (rt,)).fetchone()[0] for c in parts]
        assert sorted(homes) == [0] * (len(parts) - 1) + [1]
    assert proxy.execute("SELECT lease_sched.runtime_touch(%s)", (uuid.uuid4(),)).fetchone()[0] is False
    stranger = uuid.uuid4()
    untouched = proxy.execute("SELECT lease_sched.runtime_touch_batch(%s)", (rts + [stranger],)).fetchone()[0]
    assert untouched == [stranger]
    assert proxy.execute("SELECT lease_sched.retry_backoff(3, '10 seconds', '1 hour')").fetchone()[0] \
        == dt.timedelta(seconds=40)


def test_errors_are_the_extensions_own_and_fences_refuse(proxy):
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        claim(proxy, None, PLAN)
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        heartbeat(proxy, None, uuid.uuid4())
    job = unique("errors")
    r = claim(proxy, job, PLAN)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        finish(proxy, r["execution_id"], r["lease_token"], status="MAYBE")
    assert finish(proxy, r["execution_id"], r["lease_token"]) is True
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        proxy.execute("SELECT lease_sched.lease_fence(%s, 1)", (r["execution_id"],))
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        proxy.execute("SELECT lease_sched.lock_fence('x', 1)")


@pytest.mark.skipif(MODE != "quick", reason="plain partitions only: the full run fails partitions over instead")
def test_a_partition_down_stops_only_its_own_keys(proxy, parts):
    """With partition 1 down, partition 0's leases still heartbeat and finish through the
    proxy (the degraded path asks each partition alone); partition 1's keys get an error,
    never a false 'lease lost'."""
    j0 = next(j for j in (unique("p0job") for _ in range(100)) if partition_of(j) == 0)
    j1 = next(j for j in (unique("p1job") for _ in range(100)) if partition_of(j) == 1)
    l0, l1 = claim(proxy, j0, PLAN), claim(proxy, j1, PLAN)
    data = f"{DIR}/p1/data"
    pg_ctl = ["runuser", "-u", "postgres", "--", f"{pgbin()}/pg_ctl", "-D", data, "-w"]
    subprocess.run(pg_ctl + ["-m", "immediate", "stop"], check=True, stdout=subprocess.DEVNULL)
    try:
        assert heartbeat(proxy, l0["execution_id"], l0["lease_token"]) is True
        with pytest.raises(psycopg.Error):
            heartbeat(proxy, l1["execution_id"], l1["lease_token"])
        with pytest.raises(psycopg.Error):
            claim(proxy, j1, PLAN + dt.timedelta(hours=1))
        assert claim(proxy, j0, PLAN + dt.timedelta(hours=1))["outcome"] == "won"
        assert finish(proxy, l0["execution_id"], l0["lease_token"]) is True
    finally:
        subprocess.run(pg_ctl + ["-l", f"{DIR}/p1/server.log", "start"], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert finish(proxy, l1["execution_id"], l1["lease_token"]) is True
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
