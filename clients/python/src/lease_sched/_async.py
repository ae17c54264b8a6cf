"""The asyncio client: heartbeats in background tasks; loss cancels the body's task."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import (TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Dict, Optional, Tuple,
                    Type)

import psycopg

from ._common import (
    CLAIM_SQL, FINISH_SQL, HEARTBEAT_SQL, LEASE_FENCE_SQL, LOCK_ACQUIRE_SQL, LOCK_FENCE_SQL,
    LOCK_HEARTBEAT_SQL, LOCK_RELEASE_SQL, LOST_CHANNEL, NEXT_PLAN_SQL, RUNTIME_REGISTER_SQL,
    RUNTIME_TOUCH_SQL, UNDEFINED_FUNCTION, Claim, Conflicted, LeaseLost, LockState, NotLeader,
    app_name, check_timing, pool_settings, encode_result, error_code_of, error_msg_of, fence_unavailable,
    refused_result, unstored_result,
)
from ._sync import DueRun, _add_note, default_runner_id

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("lease_sched")

AConn = psycopg.AsyncConnection[Tuple[Any, ...]]


class AsyncClient:
    """The asyncio twin of :class:`lease_sched.Client`: ``AsyncClient(conninfo)`` or
    ``AsyncClient(pool=psycopg_pool.AsyncConnectionPool(...))``."""

    def __init__(self, conninfo: str = "", *, pool: Optional["AsyncConnectionPool[Any]"] = None,
                 runner_id: Optional[str] = None, **connect_kwargs: Any) -> None:
        self._pool = pool
        self._conninfo, self._kwargs = pool_settings(conninfo, pool)
        self._kwargs.update(connect_kwargs)
        self._kwargs.pop("autocommit", None)
        self.runner_id = runner_id or default_runner_id()

    async def connect(self, *, application_name: Optional[str] = None, autocommit: bool = True,
                      **extra: Any) -> AConn:
        kw = dict(self._kwargs)
        kw.update(extra)
        if application_name is not None:
            kw["application_name"] = application_name
        return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=autocommit, **kw)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[AConn]:
        if self._pool is not None:
            async with self._pool.connection() as c:
                yield c
        else:
            async with await self.connect() as c:
                yield c

    def lease(self, job_name: str, plan_time: datetime, *, runner_id: Optional[str] = None,
              stale_timeout: timedelta = timedelta(minutes=5), scope_kind: str = "global",
              scope_id: str = "", max_attempts: int = 3, allow_stale_reentry: bool = True,
              cancel_on_loss: bool = False, margin: Optional[timedelta] = None) -> "AsyncLease":
        """``async with client.lease(...) as lease:``; on loss the task that entered the block
        is cancelled (and, with ``cancel_on_loss``, the query on ``lease.connection()``)."""
        return AsyncLease(self, job_name, plan_time, runner_id or self.runner_id, stale_timeout,
                          scope_kind, scope_id, max_attempts, allow_stale_reentry, cancel_on_loss,
                          margin)

    async def try_claim(self, job_name: str, plan_time: datetime, runner_id: str, *,
                        stale_timeout: timedelta = timedelta(minutes=5), scope_kind: str = "global",
                        scope_id: str = "", max_attempts: int = 3,
                        allow_stale_reentry: bool = True) -> Claim:
        async with self._conn() as c:
            cur = await c.execute(CLAIM_SQL, (job_name, plan_time, runner_id, scope_kind, scope_id,
                                              stale_timeout, max_attempts, allow_stale_reentry))
            row = await cur.fetchone()
        assert row is not None
        return Claim(*row)

    async def next_plan(self, job_name: str, every: timedelta, *, scope_kind: str = "global",
                        scope_id: str = "", catch_up: bool = True) -> Optional[datetime]:
        async with self._conn() as c:
            cur = await c.execute(NEXT_PLAN_SQL, (job_name, every, scope_kind, scope_id, catch_up))
            row = await cur.fetchone()
        return row[0] if row else None

    async def run_due(self, job_name: str, every: timedelta,
                      fn: Callable[["AsyncLease"], Awaitable[Any]], *,
                      runner_id: Optional[str] = None,
                      stale_timeout: timedelta = timedelta(minutes=5), scope_kind: str = "global",
                      scope_id: str = "", catch_up: bool = True, max_attempts: int = 3,
                      cancel_on_loss: bool = False) -> DueRun:
        """One turn of the runner loop (see :meth:`lease_sched.Client.run_due`)."""
        plan = await self.next_plan(job_name, every, scope_kind=scope_kind, scope_id=scope_id,
                                    catch_up=catch_up)
        if plan is None:
            return DueRun("nothing_due", None, None, None)
        try:
            async with self.lease(job_name, plan, runner_id=runner_id, stale_timeout=stale_timeout,
                                  scope_kind=scope_kind, scope_id=scope_id,
                                  max_attempts=max_attempts, cancel_on_loss=cancel_on_loss) as lease:
                value = await fn(lease)
                if lease.result is None:
                    lease.result = value
        except Conflicted as e:
            return DueRun("conflicted", plan, e.claim, None)
        return DueRun("success", plan, lease.claim, value)

    def leader(self, lock_name: str, holder: Optional[str] = None, *,
               ttl: timedelta = timedelta(seconds=60), cancel_on_loss: bool = False,
               margin: Optional[timedelta] = None) -> "AsyncLeader":
        return AsyncLeader(self, lock_name, holder or self.runner_id, ttl, cancel_on_loss, margin)

    def runtime(self, name: str, *, metadata: Optional[Dict[str, Any]] = None,
                every: timedelta = timedelta(seconds=15)) -> "AsyncRuntime":
        return AsyncRuntime(self, name, metadata or {}, every)


class _AsyncKeeper:
    """Heartbeat task + deadline task for one lease or lock (see the sync ``_Keeper``).

    The deadline task runs on the event loop: a body that blocks the loop (sync code in a
    coroutine) delays it, and then the lease is declared lost as soon as the loop runs again."""

    def __init__(self, client: AsyncClient, app: str, beat_sql: str, beat_args: Tuple[Any, ...],
                 payload: str, ttl: timedelta, margin: timedelta, started: float,
                 on_lost: Callable[[str], None]) -> None:
        self._client, self._app, self._sql, self._args = client, app, beat_sql, beat_args
        self._payload = payload
        self._ttl, self._margin = ttl.total_seconds(), margin.total_seconds()
        self._interval = self._ttl / 3
        self._deadline = started + self._ttl - self._margin
        self._on_lost = on_lost
        self.lost = asyncio.Event()
        self.reason = ""
        self.beats = 0
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._beat_loop()), asyncio.create_task(self._watchdog())]

    async def stop(self) -> None:
        self._stopped = True
        me = asyncio.current_task()
        for t in self._tasks:
            if t is not me:
                t.cancel()
        for t in self._tasks:
            if t is not me:
                try:
                    await t
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass

    def _lose(self, reason: str) -> None:
        if self._stopped or self.lost.is_set():
            return
        self.reason = reason
        self._stopped = True
        self.lost.set()
        log.warning("%s: lost (%s)", self._app, reason)
        self._on_lost(reason)

    async def _watchdog(self) -> None:
        while not self._stopped:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self._lose("local deadline passed without an acknowledged heartbeat")
                return
            await asyncio.sleep(remaining)

    def _notified(self, n: psycopg.Notify) -> None:
        if n.channel == LOST_CHANNEL and n.payload == self._payload:
            self._lose("notified on lease_sched_lost")

    async def _connect(self) -> AConn:
        ms = max(1000, int(self._interval * 1000))
        conn = await self._client.connect(
            application_name=self._app, connect_timeout=max(2, int(self._interval) + 1),
            tcp_user_timeout=ms, keepalives=1, keepalives_idle=max(1, int(self._interval)),
            keepalives_interval=1, keepalives_count=3)
        await conn.execute(f"LISTEN {LOST_CHANNEL}")
        return conn

    async def _beat_loop(self) -> None:
        conn: Optional[AConn] = None
        next_beat = time.monotonic() + self._interval
        try:
            while not self._stopped:
                try:
                    if conn is None:
                        conn = await self._connect()
                    wait = next_beat - time.monotonic()
                    if wait > 0:
                        async for n in conn.notifies(timeout=wait):
                            self._notified(n)
                        continue
                    sent = time.monotonic()
                    cur = await conn.execute(self._sql, self._args)
                    row = await cur.fetchone()
                    if not (row and row[0]):
                        self._lose("heartbeat returned false: someone else holds it now")
                        return
                    self.beats += 1
                    self._deadline = max(self._deadline, sent + self._ttl - self._margin)
                    next_beat = sent + self._interval
                except psycopg.Error as e:
                    log.info("%s: heartbeat connection failed (%s); reconnecting", self._app, e)
                    if conn is not None:
                        await _aclose(conn)
                    conn = None
                    await asyncio.sleep(min(self._interval, 0.5))
                    next_beat = time.monotonic()
        finally:
            if conn is not None:
                await _aclose(conn)


async def _aclose(conn: AConn) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001
        pass


class _AsyncHeld:
    _keeper: Optional[_AsyncKeeper]
    _what: str

    def __init__(self, client: AsyncClient, cancel_on_loss: bool) -> None:
        self._client = client
        self._cancel_on_loss = cancel_on_loss
        self.lost = asyncio.Event()
        self._body_conn: Optional[AConn] = None
        self._body_conn_pooled = False
        self._keeper = None
        self._task: Optional[asyncio.Task[Any]] = None
        self._in_body = False
        self._cancelled_by_us = False
        self._bg: set[asyncio.Task[Any]] = set()

    @property
    def lost_reason(self) -> str:
        return self._keeper.reason if self._keeper else ""

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"{self._what} was lost ({self.lost_reason})", self.lost_reason)

    async def connection(self) -> AConn:
        """A connection for the body's work, closed (or returned to the pool) at the end of
        the block; with ``cancel_on_loss=True`` its running query is cancelled on loss."""
        if self._body_conn is None:
            if self._client._pool is not None:
                self._body_conn = await self._client._pool.getconn()
                self._body_conn_pooled = True
            else:
                self._body_conn = await self._client.connect()
        return self._body_conn

    def _on_lost(self, reason: str) -> None:
        self.lost.set()
        if self._cancel_on_loss and self._body_conn is not None and not self._body_conn.closed:
            t = asyncio.create_task(self._body_conn.cancel_safe(timeout=5.0))
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)
        if self._in_body and self._task is not None and not self._task.done():
            self._cancelled_by_us = True
            self._task.cancel()

    async def _leave_body(self) -> None:
        self._in_body = False
        assert self._keeper is not None
        await self._keeper.stop()
        if self._bg:
            await asyncio.gather(*self._bg, return_exceptions=True)
        c, self._body_conn = self._body_conn, None
        if c is not None:
            try:
                if self._body_conn_pooled and self._client._pool is not None:
                    await self._client._pool.putconn(c)
                else:
                    await c.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the body's connection")

    def _lost_exit(self, exc: Optional[BaseException]) -> None:
        reason = self.lost_reason
        if self._cancelled_by_us and self._task is not None:
            uncancel = getattr(self._task, "uncancel", None)
            if uncancel is not None:
                uncancel()
        if exc is None:
            raise LeaseLost(f"{self._what} was lost ({reason}); nothing was finished", reason)
        if (isinstance(exc, asyncio.CancelledError) and self._cancelled_by_us) or (
                isinstance(exc, psycopg.errors.QueryCanceled) and self._cancel_on_loss):
            raise LeaseLost(f"{self._what} was lost ({reason}); the body was cancelled",
                            reason) from exc

    def _enter_body(self) -> None:
        self._task = asyncio.current_task()
        self._in_body = True


class AsyncLease(_AsyncHeld):
    def __init__(self, client: AsyncClient, job_name: str, plan_time: datetime, runner_id: str,
                 stale_timeout: timedelta, scope_kind: str, scope_id: str, max_attempts: int,
                 allow_stale_reentry: bool, cancel_on_loss: bool,
                 margin: Optional[timedelta]) -> None:
        super().__init__(client, cancel_on_loss)
        self.job_name, self.plan_time, self.runner_id = job_name, plan_time, runner_id
        self.stale_timeout = stale_timeout
        self.margin = check_timing(stale_timeout, margin)
        self._opts = (scope_kind, scope_id, max_attempts, allow_stale_reentry)
        self._claim: Optional[Claim] = None
        self.result: Any = None
        self.rows_affected: Optional[int] = None
        self.retry_in: Optional[timedelta] = None
        self.finished: Optional[str] = None
        #: Why ``result`` was not stored (``{"result_not_stored": ...}`` was, instead).
        self.result_error: Optional[str] = None
        self._what = f"lease on {job_name} @ {plan_time}"

    @property
    def claim(self) -> Claim:
        assert self._claim is not None, "the lease is claimed by entering the async with block"
        return self._claim

    @property
    def execution_id(self) -> Any:
        return self.claim.execution_id

    @property
    def fencing_token(self) -> int:
        t = self.claim.fencing_token
        assert t is not None
        return t

    @property
    def attempt(self) -> int:
        a = self.claim.attempt
        assert a is not None
        return a

    async def fence(self, conn: AConn) -> None:
        try:
            await conn.execute(LEASE_FENCE_SQL, (self.execution_id, self.fencing_token, self.claim.lease_token))
        except psycopg.Error as e:
            if e.sqlstate == UNDEFINED_FUNCTION:
                raise fence_unavailable("lease_fence") from e
            raise

    async def __aenter__(self) -> "AsyncLease":
        started = time.monotonic()
        kind, sid, attempts, reentry = self._opts
        claim = await self._client.try_claim(self.job_name, self.plan_time, self.runner_id,
                                             stale_timeout=self.stale_timeout, scope_kind=kind,
                                             scope_id=sid, max_attempts=attempts,
                                             allow_stale_reentry=reentry)
        if claim.outcome not in ("won", "stole"):
            raise Conflicted(claim, f"{self.job_name} @ {self.plan_time}: conflicted "
                             f"(execution {claim.execution_id}, attempt {claim.attempt})")
        self._claim = claim
        self._keeper = _AsyncKeeper(self._client, app_name("lease", str(claim.execution_id)),
                                    HEARTBEAT_SQL, (claim.execution_id, claim.lease_token),
                                    str(claim.execution_id), self.stale_timeout, self.margin,
                                    started, self._on_lost)
        self._keeper.start()
        self._enter_body()
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        # Encode while the heartbeat still runs: a result that cannot be stored is replaced,
        # never a reason to leave the run unfinished (it would run again after stale_timeout).
        result, self.result_error = encode_result(self.result)
        await self._leave_body()
        if self.lost.is_set():
            self._lost_exit(exc)
            return None
        claim = self.claim
        status = "SUCCESS" if exc is None else "FAILED"

        async def finish(result: Optional[str]) -> Any:
            if exc is None:
                args: Tuple[Any, ...] = (claim.execution_id, claim.lease_token, status, result,
                                         self.rows_affected, None, None, None)
            else:
                args = (claim.execution_id, claim.lease_token, status, result, self.rows_affected,
                        error_code_of(exc), error_msg_of(exc), self.retry_in)
            async with self._client._conn() as c:
                cur = await c.execute(FINISH_SQL, args)
                return await cur.fetchone()

        try:
            try:
                row = await finish(result)
            except psycopg.Error as e:
                if result is None or not refused_result(e):
                    raise
                # Refused by the database (over 16 KiB as jsonb prints it, or not valid jsonb):
                # the lease is still RUNNING; finish it with the substitute.
                self.result_error = f"lease_finish refused the result: {e.sqlstate}: {e}"
                row = await finish(unstored_result(self.result_error))
        except Exception as e:
            if exc is None:
                raise
            _add_note(exc, f"lease_sched: finishing the lease FAILED failed too: {e!r}")
            return None
        if self.result_error is not None:
            log.warning("%s: the result could not be stored (%s); finished %s with "
                        '{"result_not_stored": ...} instead', self._what, self.result_error, status)
            if exc is not None:
                _add_note(exc, f"lease_sched: the result was not stored: {self.result_error}")
        if row and row[0]:
            self.finished = status
            return None
        self.lost.set()
        if exc is None:
            raise LeaseLost(f"{self._what} was lost before its finish (finish returned false)",
                            "finish returned false")
        return None


class AsyncLeader(_AsyncHeld):
    def __init__(self, client: AsyncClient, lock_name: str, holder: str, ttl: timedelta,
                 cancel_on_loss: bool, margin: Optional[timedelta]) -> None:
        super().__init__(client, cancel_on_loss)
        self.lock_name, self.holder, self.ttl = lock_name, holder, ttl
        self.margin = check_timing(ttl, margin)
        self._state: Optional[LockState] = None
        self.released = False
        self._what = f"lock {lock_name}"

    @property
    def state(self) -> LockState:
        assert self._state is not None
        return self._state

    @property
    def fencing_token(self) -> int:
        t = self.state.fencing_token
        assert t is not None
        return t

    async def fence(self, conn: AConn) -> None:
        try:
            await conn.execute(LOCK_FENCE_SQL, (self.lock_name, self.fencing_token, self.state.lock_token))
        except psycopg.Error as e:
            if e.sqlstate == UNDEFINED_FUNCTION:
                raise fence_unavailable("lock_fence") from e
            raise

    async def __aenter__(self) -> "AsyncLeader":
        started = time.monotonic()
        async with self._client._conn() as c:
            cur = await c.execute(LOCK_ACQUIRE_SQL, (self.lock_name, self.holder, self.ttl))
            row = await cur.fetchone()
        assert row is not None
        state = LockState(*row)
        if not state.acquired:
            raise NotLeader(state, f"lock {self.lock_name} is held by {state.holder} "
                                   f"until {state.expires_at}")
        self._state = state
        self._keeper = _AsyncKeeper(self._client, app_name("lock", self.lock_name),
                                    LOCK_HEARTBEAT_SQL, (self.lock_name, state.lock_token),
                                    f"lock:{self.lock_name}", self.ttl, self.margin, started,
                                    self._on_lost)
        self._keeper.start()
        self._enter_body()
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self._leave_body()
        if self.lost.is_set():
            self._lost_exit(exc)
            return None
        try:
            async with self._client._conn() as c:
                cur = await c.execute(LOCK_RELEASE_SQL, (self.lock_name, self.state.lock_token))
                row = await cur.fetchone()
        except Exception as e:
            if exc is None:
                raise
            _add_note(exc, f"lease_sched: releasing the lock failed too: {e!r}")
            return None
        if row and row[0]:
            self.released = True
            return None
        self.lost.set()
        if exc is None:
            raise LeaseLost(f"{self._what} was lost before its release", "release returned false")
        return None


class AsyncRuntime:
    def __init__(self, client: AsyncClient, name: str, metadata: Dict[str, Any],
                 every: timedelta) -> None:
        self._client, self.name, self.metadata, self.every = client, name, metadata, every
        self.id: Any = None
        self.touches = 0
        self.last_error: Optional[BaseException] = None
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> "AsyncRuntime":
        async with self._client._conn() as c:
            cur = await c.execute(RUNTIME_REGISTER_SQL, (self.name, json.dumps(self.metadata)))
            row = await cur.fetchone()
        assert row is not None
        self.id = row[0]
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        conn: Optional[AConn] = None
        try:
            while True:
                await asyncio.sleep(self.every.total_seconds())
                try:
                    if conn is None:
                        conn = await self._client.connect(
                            application_name=f"lease_sched runtime {self.name}"[:63])
                    await conn.execute(RUNTIME_TOUCH_SQL, (self.id,))
                    self.touches += 1
                except psycopg.Error as e:
                    self.last_error = e
                    if conn is not None:
                        await _aclose(conn)
                    conn = None
        finally:
            if conn is not None:
                await _aclose(conn)

    async def __aenter__(self) -> "AsyncRuntime":
        return await self.start()

    async def __aexit__(self, exc_type: Optional[Type[BaseException]],
                        exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self.stop()
