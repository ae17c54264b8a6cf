"""The asyncio client against a real cluster: loss cancels the body's task."""
from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from typing import Any, List, Tuple

import psycopg
import pytest

from conftest import DSN, backend_pid, plan, row_of, steal, unique
from lease_sched import AsyncClient, Conflicted, LeaseLost, NotLeader

DB = psycopg.Connection[Tuple[Any, ...]]


def test_async_lease_survives_and_finishes_success(db: DB) -> None:
    async def main() -> Any:
        client = AsyncClient(DSN)
        async with client.lease(unique("apy_survive"), plan(), runner_id="holder",
                                stale_timeout=timedelta(seconds=1)) as lease:
            conn = await lease.connection()
            await conn.execute("SELECT pg_sleep(3.5)")
            lease.check()
            lease.result = [1, 2]
        return lease

    lease = asyncio.run(main())
    status, runner, attempt, _, _, result, _ = row_of(db, lease.execution_id)
    assert (status, runner, attempt, result) == ("SUCCESS", "holder", 1, [1, 2])


def test_async_exception_finishes_failed(db: DB) -> None:
    holder: List[Any] = []

    async def main() -> None:
        async with AsyncClient(DSN).lease(unique("apy_fail"), plan()) as lease:
            holder.append(lease)
            raise RuntimeError("async boom")

    with pytest.raises(RuntimeError, match="async boom"):
        asyncio.run(main())
    status, _, _, code, msg, _, _ = row_of(db, holder[0].execution_id)
    assert (status, code, msg) == ("FAILED", "RuntimeError", "async boom")


def test_async_stolen_lease_cancels_the_body_task(db: DB) -> None:
    job, stale = unique("apy_steal"), 3.0
    info: dict[str, Any] = {}

    async def main() -> None:
        client = AsyncClient(DSN)
        with pytest.raises(LeaseLost) as e:
            async with client.lease(job, plan(), runner_id="holder",
                                    stale_timeout=timedelta(seconds=stale)) as lease:
                info["lease"] = lease

                async def thief() -> None:
                    await asyncio.to_thread(time.sleep, 0.5)
                    pid = await asyncio.to_thread(backend_pid, db,
                                                  f"lease_sched lease {lease.execution_id}")
                    await asyncio.to_thread(db.execute, "SELECT pg_terminate_backend(%s)", (pid,))
                    await asyncio.sleep(0.3)
                    r = await asyncio.to_thread(steal, db, job, plan(), lease.execution_id, "thief")
                    info["stolen_at"], info["outcome"] = time.monotonic(), r[0]

                t = asyncio.create_task(thief())
                try:
                    await asyncio.sleep(60)
                finally:
                    info["cancelled_at"] = time.monotonic()
                    await t
        assert isinstance(e.value.__cause__, asyncio.CancelledError)

    asyncio.run(main())
    assert info["outcome"] == "stole"
    assert info["cancelled_at"] - info["stolen_at"] < stale / 3 + 1.0
    lease = info["lease"]
    status, runner, attempt, *_ = row_of(db, lease.execution_id)
    assert (status, runner, attempt) == ("RUNNING", "thief", 2) and lease.finished is None


def test_async_32_holders_over_8_plans(db: DB) -> None:
    job = unique("apy_many")
    done: List[int] = []

    async def holder(client: AsyncClient, i: int) -> None:
        try:
            async with client.lease(job, plan(i % 8), runner_id=f"h{i}",
                                    stale_timeout=timedelta(seconds=2)) as lease:
                await asyncio.sleep(0.2 + random.random() * 0.2)
                lease.check()
                done.append(i % 8)
        except Conflicted:
            pass

    async def main() -> None:
        client = AsyncClient(DSN)
        await asyncio.gather(*(holder(client, i) for i in range(32)))

    asyncio.run(main())
    assert sorted(done) == list(range(8))
    assert db.execute("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = %s "
                      "AND status = 'SUCCESS'", (job,)).fetchone() == (8,)


def test_async_leaders_and_runtime_and_run_due(db: DB) -> None:
    name, job = unique("apy_leader"), unique("apy_due")

    async def main() -> None:
        client = AsyncClient(DSN)
        async with client.leader(name, "a", ttl=timedelta(seconds=2)) as a:
            with pytest.raises(NotLeader):
                async with client.leader(name, "b", ttl=timedelta(seconds=2)):
                    pass
            await asyncio.sleep(1.5)
            a.check()
        async with client.leader(name, "b", ttl=timedelta(seconds=2)) as b:
            assert b.fencing_token > a.fencing_token
        async with client.runtime(unique("apy_rt"), every=timedelta(milliseconds=200)) as rt:
            await asyncio.sleep(1)
        assert rt.touches >= 3

        async def fn(lease: Any) -> Any:
            return {"token": lease.fencing_token}

        r = await client.run_due(job, timedelta(days=1), fn)
        assert r.outcome == "success"
        assert (await client.run_due(job, timedelta(days=1), fn)).outcome == "nothing_due"

    asyncio.run(main())


def test_async_unstorable_result_still_finishes(db: DB) -> None:
    from decimal import Decimal
    holder: List[Any] = []

    async def main() -> None:
        client, job = AsyncClient(DSN), unique("apy_unstored")
        async with client.lease(job, plan()) as lease:
            lease.result = Decimal("1.5")
        holder.append(lease)
        with pytest.raises(KeyError):
            async with client.lease(job, plan(1)) as failing:
                holder.append(failing)
                failing.result = "x" * 20000
                raise KeyError("own")

    asyncio.run(main())
    ok, failed = holder
    assert ok.finished == "SUCCESS" and ok.result_error
    status, _, _, _, _, result, _ = row_of(db, ok.execution_id)
    assert status == "SUCCESS" and "result_not_stored" in result
    status, _, _, code, _, result, _ = row_of(db, failed.execution_id)
    assert (status, code) == ("FAILED", "KeyError") and "result_not_stored" in result
