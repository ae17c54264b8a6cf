"""The sync client against a real cluster, with real failures (killed backends, a cut network)."""
from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from typing import Any, Dict, List, Tuple

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from conftest import DSN, Proxy, backend_pid, fence_exists, plan, row_of, steal, unique, wait_for
from lease_sched import Client, Conflicted, FenceUnavailable, LeaseLost, NotLeader

DB = psycopg.Connection[Tuple[Any, ...]]


def test_a_lease_survives_far_past_its_stale_timeout(db: DB) -> None:
    client, job = Client(DSN), unique("py_survive")
    conflicts: List[str] = []
    stop = threading.Event()

    def thief() -> None:  # keeps trying to take the plan while the body runs
        while not stop.wait(0.2):
            conflicts.append(client.try_claim(job, plan(), "thief").outcome)

    with client.lease(job, plan(), runner_id="holder", stale_timeout=timedelta(seconds=1)) as lease:
        t = threading.Thread(target=thief)
        t.start()
        lease.connection().execute("SELECT pg_sleep(4)")  # 4 x stale_timeout
        lease.check()
        stop.set()
        t.join()
        lease.result = {"rows": 3}
        lease.rows_affected = 3
    assert conflicts and set(conflicts) == {"conflicted"}, conflicts
    status, runner, attempt, _, _, result, rows = row_of(db, lease.execution_id)
    assert (status, runner, attempt, result, rows) == ("SUCCESS", "holder", 1, {"rows": 3}, 3)
    assert lease.finished == "SUCCESS" and not lease.lost.is_set()


def test_conflicted_carries_the_claim_row() -> None:
    client, job = Client(DSN), unique("py_conflict")
    with client.lease(job, plan(), stale_timeout=timedelta(seconds=30)) as first:
        with pytest.raises(Conflicted) as e:
            with client.lease(job, plan()):
                raise AssertionError("the body must not run")
        assert e.value.claim.outcome == "conflicted"
        assert e.value.claim.execution_id == first.execution_id
        assert e.value.claim.lease_token is None and e.value.claim.stale_after is not None


def test_an_exception_finishes_failed_with_its_message_and_is_raised_again(db: DB) -> None:
    client, job = Client(DSN), unique("py_fail")
    with pytest.raises(ValueError, match="boom 42"):
        with client.lease(job, plan()) as lease:
            raise ValueError("boom 42")
    status, _, _, code, msg, _, _ = row_of(db, lease.execution_id)
    assert (status, code, msg) == ("FAILED", "ValueError", "boom 42")

    with pytest.raises(psycopg.errors.DivisionByZero):
        with client.lease(job, plan(1)) as lease2:
            lease2.connection().execute("SELECT 1 / 0")
    status, _, _, code, msg, _, _ = row_of(db, lease2.execution_id)
    assert (status, code) == ("FAILED", "22012") and "division by zero" in msg


def _held_until_lost(client: Client, job: str, stale: float, out: Dict[str, Any],
                     ready: threading.Event) -> None:
    try:
        with client.lease(job, plan(), runner_id="holder", stale_timeout=timedelta(seconds=stale),
                          cancel_on_loss=True) as lease:
            out["lease"] = lease
            conn = lease.connection()
            ready.set()
            try:
                conn.execute("SELECT pg_sleep(60)")
            except psycopg.errors.QueryCanceled:
                out["cancelled_at"] = time.monotonic()
                raise
    except LeaseLost as e:
        out["raised"] = e
    except BaseException as e:  # noqa: BLE001
        out["other"] = e
    finally:
        ready.set()


def test_a_stolen_lease_is_lost_within_one_heartbeat_and_its_query_cancelled(db: DB) -> None:
    """The holder's heartbeat connection is killed (it reconnects), another runner steals the
    plan: the next heartbeat says false, `lost` is set and the body's pg_sleep is cancelled;
    the holder never finishes."""
    client, job, stale = Client(DSN), unique("py_steal"), 3.0
    out: Dict[str, Any] = {}
    ready = threading.Event()
    t = threading.Thread(target=_held_until_lost, args=(client, job, stale, out, ready))
    t.start()
    assert ready.wait(10)
    lease = out["lease"]
    db.execute("SELECT pg_terminate_backend(%s)",
               (backend_pid(db, f"lease_sched lease {lease.execution_id}"),))
    time.sleep(0.3)
    outcome, _, thief_token = steal(db, job, plan(), lease.execution_id, "thief")
    stolen_at = time.monotonic()
    assert outcome == "stole"
    assert lease.lost.wait(stale / 3 + 1.0), "lost within one heartbeat interval"
    t.join(15)
    assert "other" not in out, out.get("other")
    assert isinstance(out.get("raised"), LeaseLost)
    assert out["cancelled_at"] - stolen_at < stale / 3 + 1.5
    # never finished by the old holder: the thief's RUNNING attempt is untouched
    status, runner, attempt, *_ = row_of(db, lease.execution_id)
    assert (status, runner, attempt) == ("RUNNING", "thief", 2) and lease.finished is None
    assert db.execute("SELECT lease_sched.lease_finish(%s, %s, 'SUCCESS')",
                      (lease.execution_id, thief_token)).fetchone() == (True,)


def test_a_holder_cut_off_from_the_database_knows_before_anyone_may_steal(db: DB, proxy: Proxy) -> None:
    """The network to the database goes away (the proxy stops): no heartbeat can be
    acknowledged, and the local deadline sets `lost` before the lease's stale_after; a thief
    steals after it; the old holder finishes nothing."""
    client, job, stale = Client(proxy.dsn()), unique("py_cut"), 3.0
    seen: Dict[str, Any] = {}
    with pytest.raises(LeaseLost):
        with client.lease(job, plan(), runner_id="holder",
                          stale_timeout=timedelta(seconds=stale)) as lease:
            time.sleep(1.2)  # a heartbeat or so
            proxy.stop()
            cut = time.monotonic()
            while not lease.lost.is_set():
                time.sleep(0.01)
            seen["lost_after"] = time.monotonic() - cut
            r = db.execute("SELECT extract(epoch FROM stale_after - clock_timestamp())::float8 "
                           "FROM lease_sched.sys_cron_executions WHERE id = %s",
                           (lease.execution_id,)).fetchone()
            assert r is not None
            seen["db_margin"] = r[0]
            with pytest.raises(LeaseLost):
                lease.check()
    assert seen["db_margin"] > 0, f"lost must be known before stale_after ({seen})"
    assert seen["lost_after"] <= stale, seen
    assert wait_for(lambda: steal(db, job, plan(), lease.execution_id, "thief",
                                  force_stale=False)[0] == "stole", stale + 2)
    status, runner, attempt, *_ = row_of(db, lease.execution_id)
    assert (status, runner, attempt) == ("RUNNING", "thief", 2)


def test_32_holders_over_8_plans_never_overlap(db: DB) -> None:
    job = unique("py_many")
    db.execute(f"CREATE TABLE {job}_work (plan timestamptz, holder int, started float8, ended float8)")
    pool = ConnectionPool(DSN, min_size=2, max_size=8, open=True)
    client = Client(pool=pool)
    barrier = threading.Barrier(32)
    won: List[int] = []

    def holder(i: int) -> None:
        barrier.wait()
        try:
            with client.lease(job, plan(i % 8), runner_id=f"h{i}",
                              stale_timeout=timedelta(seconds=2)) as lease:
                with pool.connection() as c:
                    start = time.monotonic()
                    time.sleep(0.3 + random.random() * 0.3)
                    lease.check()
                    c.execute(f"INSERT INTO {job}_work VALUES (%s, %s, %s, %s)",
                              (lease.claim and plan(i % 8), i, start, time.monotonic()))
                won.append(i)
        except Conflicted:
            pass

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    rows = db.execute(f"SELECT plan, count(*) FROM {job}_work GROUP BY plan").fetchall()
    assert len(rows) == 8 and all(n == 1 for _, n in rows), rows
    assert len(won) == 8
    done = db.execute("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = %s "
                      "AND status = 'SUCCESS' AND attempt = 1", (job,)).fetchone()
    assert done == (8,)
    db.execute(f"DROP TABLE {job}_work")


def test_two_leaders_never_both_hold(db: DB) -> None:
    client, name = Client(DSN), unique("py_leader")
    intervals: List[Tuple[float, float, int]] = []
    lock = threading.Lock()
    end = time.monotonic() + 4

    def candidate(i: int) -> None:
        while time.monotonic() < end:
            try:
                with client.leader(name, f"c{i}", ttl=timedelta(seconds=1)) as leader:
                    start = time.monotonic()
                    assert leader.fencing_token > 0
                    time.sleep(random.random() * 0.4)
                    # The term ends where the holder last knew it still led: check() after
                    # the timestamp, since the client promises to see a loss before the lock
                    # can expire and pass to the other candidate.
                    stop = time.monotonic()
                    leader.check()
                with lock:
                    intervals.append((start, stop, i))
            except NotLeader as e:
                assert e.row.holder is not None
                time.sleep(0.02)
            except LeaseLost:
                # A busy machine can starve the heartbeat: the holder then knows it lost,
                # which the lock allows; such a term is not counted.
                pass

    threads = [threading.Thread(target=candidate, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    intervals.sort()
    # What the lock promises is that terms never overlap, not that both candidates get
    # one (on a busy machine one candidate can win every term).
    assert intervals, "no candidate led in 4 s"
    for (_, a_end, _), (b_start, _, _) in zip(intervals, intervals[1:]):
        assert a_end <= b_start, intervals
    assert db.execute("SELECT count(*) FROM lease_sched.lock_info(%s)", (name,)).fetchone() == (0,)


def test_a_leader_cut_off_knows_before_its_successor_acquires(db: DB, proxy: Proxy) -> None:
    name, ttl = unique("py_leader_cut"), 1.5
    cut_client, other = Client(proxy.dsn()), Client(DSN)
    with pytest.raises(LeaseLost):
        with cut_client.leader(name, "old", ttl=timedelta(seconds=ttl)) as old:
            proxy.stop()
            assert old.lost.wait(ttl + 1)
            lost_at = time.monotonic()
            acquired_at = None
            while acquired_at is None:
                try:
                    with other.leader(name, "new", ttl=timedelta(seconds=ttl)) as new:
                        acquired_at = time.monotonic()
                        assert new.fencing_token > old.fencing_token
                except NotLeader:
                    time.sleep(0.02)
            assert lost_at < acquired_at


def test_fence_calls_lock_fence_or_says_clearly_that_it_is_missing(db: DB) -> None:
    client = Client(DSN)
    with client.leader(unique("py_fence"), "me", ttl=timedelta(seconds=10)) as leader:
        with psycopg.connect(DSN) as conn:
            if fence_exists(db, "lock_fence"):
                leader.fence(conn)
            else:
                with pytest.raises(FenceUnavailable, match="lock_fence does not exist"):
                    leader.fence(conn)


def test_runtime_registers_and_touches_in_the_background(db: DB) -> None:
    client = Client(DSN)
    with client.runtime(unique("py_rt"), every=timedelta(milliseconds=200)) as rt:
        assert wait_for(lambda: rt.touches >= 3, 5)
    n = rt.touches
    time.sleep(0.5)
    assert rt.touches == n, "stopped cleanly"
    r = db.execute("SELECT status FROM lease_sched.runtimes WHERE id = %s", (rt.id,)).fetchone()
    assert r == ("online",)


def test_run_due_runs_each_plan_once(db: DB) -> None:
    client, job = Client(DSN), unique("py_due")
    calls: List[Any] = []
    first = client.run_due(job, timedelta(days=1),
                           lambda lease: calls.append(lease.fencing_token) or {"ok": True})
    assert first.outcome == "success" and first.value == {"ok": True} and len(calls) == 1
    again = client.run_due(job, timedelta(days=1), lambda lease: calls.append(1))
    assert again.outcome == "nothing_due" and len(calls) == 1
    r = db.execute("SELECT status, result FROM lease_sched.sys_cron_executions WHERE job_name = %s",
                   (job,)).fetchall()
    assert r == [("SUCCESS", {"ok": True})]


def test_a_result_that_cannot_be_stored_still_finishes_the_run(db: DB) -> None:
    """Not JSON (a Decimal, as psycopg returns numeric; a datetime; NaN), over 16 KiB, or
    refused by jsonb (a \\u0000): the run still finishes SUCCESS, with
    {"result_not_stored": why} as its result; nothing is left RUNNING to run again."""
    from datetime import datetime, timezone
    from decimal import Decimal
    client, job = Client(DSN), unique("py_unstored")
    values = [Decimal("1.5"), datetime(2026, 1, 1, tzinfo=timezone.utc), float("nan"),
              "x" * (17 * 1024), "nul \u0000 inside"]
    for i, value in enumerate(values):
        with client.lease(job, plan(i), stale_timeout=timedelta(seconds=3)) as lease:
            lease.result = value
            lease.rows_affected = 7
        assert lease.finished == "SUCCESS" and lease.result_error, value
        status, _, _, code, _, result, rows = row_of(db, lease.execution_id)
        assert (status, code, rows) == ("SUCCESS", None, 7), value
        assert set(result) == {"result_not_stored"} and result["result_not_stored"], result
    # the last one passed the client's checks and was refused by the database (22P05)
    assert "lease_finish refused the result" in lease.result_error
    # a stored result is untouched
    with client.lease(job, plan(30)) as ok:
        ok.result = {"n": 1}
    assert ok.result_error is None and row_of(db, ok.execution_id)[5] == {"n": 1}


def test_an_unstorable_result_on_the_failed_path_keeps_the_bodys_exception(db: DB) -> None:
    from decimal import Decimal
    client, job = Client(DSN), unique("py_unstored_fail")
    with pytest.raises(ValueError, match="the body's own error") as e:
        with client.lease(job, plan()) as lease:
            lease.result = {"total": Decimal("12.50")}
            raise ValueError("the body's own error")
    status, _, _, code, msg, result, _ = row_of(db, lease.execution_id)
    assert (status, code, msg) == ("FAILED", "ValueError", "the body's own error")
    assert "result_not_stored" in result
    notes = getattr(e.value, "__notes__", None)
    if notes is not None:  # Python >= 3.11
        assert any("result was not stored" in n for n in notes), notes


def test_run_due_with_a_decimal_result_finishes_and_does_not_run_again(db: DB) -> None:
    from decimal import Decimal
    client, job = Client(DSN), unique("py_due_decimal")
    calls: List[int] = []

    def fn(lease: Any) -> Any:
        calls.append(1)
        return lease.connection().execute("SELECT 12.50::numeric").fetchone()[0]  # a Decimal

    # Daily buckets: the second call is in the same bucket unless it runs across midnight UTC.
    first = client.run_due(job, timedelta(days=1), fn, stale_timeout=timedelta(seconds=1))
    assert first.outcome == "success" and first.value == Decimal("12.50")
    time.sleep(1.5)  # past the stale_timeout: a RUNNING run would be offered again now
    again = client.run_due(job, timedelta(days=1), fn, stale_timeout=timedelta(seconds=1))
    assert again.outcome == "nothing_due" or again.plan_time != first.plan_time, again
    assert len(calls) == 1 + (again.outcome == "success")
    r = db.execute("SELECT status FROM lease_sched.sys_cron_executions WHERE job_name = %s "
                   "AND plan_time = %s", (job, first.plan_time)).fetchall()
    assert r == [("SUCCESS",)]
