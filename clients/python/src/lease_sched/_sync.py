"""The synchronous client: heartbeats in background threads."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Tuple, Type

import psycopg

from ._common import (
    CLAIM_SQL, FINISH_SQL, HEARTBEAT_SQL, LEASE_FENCE_SQL, LOCK_ACQUIRE_SQL, LOCK_FENCE_SQL,
    LOCK_HEARTBEAT_SQL, LOCK_RELEASE_SQL, LOST_CHANNEL, NEXT_PLAN_SQL, RUNTIME_REGISTER_SQL,
    RUNTIME_TOUCH_SQL, UNDEFINED_FUNCTION, Claim, Conflicted, LeaseLost, LockState, NotLeader,
    app_name, check_timing, pool_settings, encode_result, error_code_of, error_msg_of, fence_unavailable,
    refused_result, unstored_result,
)

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

log = logging.getLogger("lease_sched")

Conn = psycopg.Connection[Tuple[Any, ...]]


def default_runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _add_note(exc: BaseException, note: str) -> None:
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)


class Client:
    """Entry point. ``Client(conninfo)`` opens short connections as it needs them;
    ``Client(pool=psycopg_pool.ConnectionPool(...))`` takes them from the pool. Heartbeats
    always run on a dedicated connection of their own (built from the pool's conninfo), with
    ``application_name`` ``lease_sched lease <execution_id>`` / ``lease_sched lock <name>``."""

    def __init__(self, conninfo: str = "", *, pool: Optional["ConnectionPool[Any]"] = None,
                 runner_id: Optional[str] = None, **connect_kwargs: Any) -> None:
        self._pool = pool
        self._conninfo, self._kwargs = pool_settings(conninfo, pool)
        self._kwargs.update(connect_kwargs)
        self._kwargs.pop("autocommit", None)
        self.runner_id = runner_id or default_runner_id()

    # -- connections ---------------------------------------------------------------------
    def connect(self, *, application_name: Optional[str] = None, autocommit: bool = True,
                **extra: Any) -> Conn:
        """A new dedicated connection (never from the pool)."""
        kw = dict(self._kwargs)
        kw.update(extra)
        if application_name is not None:
            kw["application_name"] = application_name
        return psycopg.connect(self._conninfo, autocommit=autocommit, **kw)

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        if self._pool is not None:
            with self._pool.connection() as c:
                yield c
        else:
            with self.connect() as c:
                yield c

    # -- leases --------------------------------------------------------------------------
    def lease(self, job_name: str, plan_time: datetime, *, runner_id: Optional[str] = None,
              stale_timeout: timedelta = timedelta(minutes=5), scope_kind: str = "global",
              scope_id: str = "", max_attempts: int = 3, allow_stale_reentry: bool = True,
              cancel_on_loss: bool = False, margin: Optional[timedelta] = None) -> "Lease":
        """``with client.lease(...) as lease:`` claims the plan (raising :class:`Conflicted`),
        heartbeats every ``stale_timeout / 3`` in the background and finishes on exit."""
        return Lease(self, job_name, plan_time, runner_id or self.runner_id, stale_timeout,
                     scope_kind, scope_id, max_attempts, allow_stale_reentry, cancel_on_loss, margin)

    def try_claim(self, job_name: str, plan_time: datetime, runner_id: str, *,
                  stale_timeout: timedelta = timedelta(minutes=5), scope_kind: str = "global",
                  scope_id: str = "", max_attempts: int = 3,
                  allow_stale_reentry: bool = True) -> Claim:
        """The bare claim row, for callers that manage the lease themselves."""
        with self._conn() as c:
            row = c.execute(CLAIM_SQL, (job_name, plan_time, runner_id, scope_kind, scope_id,
                                        stale_timeout, max_attempts, allow_stale_reentry)).fetchone()
        assert row is not None
        return Claim(*row)

    def next_plan(self, job_name: str, every: timedelta, *, scope_kind: str = "global",
                  scope_id: str = "", catch_up: bool = True) -> Optional[datetime]:
        with self._conn() as c:
            row = c.execute(NEXT_PLAN_SQL, (job_name, every, scope_kind, scope_id, catch_up)).fetchone()
        return row[0] if row else None

    def run_due(self, job_name: str, every: timedelta, fn: Callable[["Lease"], Any], *,
                runner_id: Optional[str] = None, stale_timeout: timedelta = timedelta(minutes=5),
                scope_kind: str = "global", scope_id: str = "", catch_up: bool = True,
                max_attempts: int = 3, cancel_on_loss: bool = False) -> "DueRun":
        """One turn of the runner loop: ``lease_next_plan`` → claim → ``fn(lease)`` → finish.
        ``fn``'s return value is stored as the run's ``result`` (unless it set ``lease.result``).
        An exception from ``fn`` finishes the run FAILED and is raised again; a lost lease
        raises :class:`LeaseLost`."""
        plan = self.next_plan(job_name, every, scope_kind=scope_kind, scope_id=scope_id,
                              catch_up=catch_up)
        if plan is None:
            return DueRun("nothing_due", None, None, None)
        try:
            with self.lease(job_name, plan, runner_id=runner_id, stale_timeout=stale_timeout,
                            scope_kind=scope_kind, scope_id=scope_id, max_attempts=max_attempts,
                            cancel_on_loss=cancel_on_loss) as lease:
                value = fn(lease)
                if lease.result is None:
                    lease.result = value
        except Conflicted as e:
            return DueRun("conflicted", plan, e.claim, None)
        return DueRun("success", plan, lease.claim, value)

    # -- locks and runtimes ----------------------------------------------------------------
    def leader(self, lock_name: str, holder: Optional[str] = None, *,
               ttl: timedelta = timedelta(seconds=60), cancel_on_loss: bool = False,
               margin: Optional[timedelta] = None) -> "Leader":
        """``with client.leader(name, holder, ttl=...) as leader:`` acquires the lock (raising
        :class:`NotLeader` while someone else holds it), heartbeats it every ``ttl / 3`` with
        its secret ``lock_token`` and releases it on exit."""
        return Leader(self, lock_name, holder or self.runner_id, ttl, cancel_on_loss, margin)

    def runtime(self, name: str, *, metadata: Optional[Dict[str, Any]] = None,
                every: timedelta = timedelta(seconds=15)) -> "Runtime":
        """``with client.runtime(name) as rt:`` registers a runtime and touches it every
        ``every`` in the background until the block ends."""
        return Runtime(self, name, metadata or {}, every)


@dataclass(frozen=True)
class DueRun:
    """What :meth:`Client.run_due` did: ``outcome`` is ``nothing_due``, ``conflicted`` or
    ``success``; ``value`` is what ``fn`` returned."""

    outcome: str
    plan_time: Optional[datetime]
    claim: Optional[Claim]
    value: Any


class _Keeper:
    """Heartbeats one lease or lock on its own connection and keeps the local deadline.

    Two daemon threads: the heartbeat thread (beats every ``interval``, LISTENs on
    ``lease_sched_lost`` in between, reconnects after errors) and the watchdog (declares the
    lease lost once ``deadline`` passes, whatever the network does)."""

    def __init__(self, client: Client, app: str, beat_sql: str, beat_args: Tuple[Any, ...],
                 payload: str, ttl: timedelta, margin: timedelta, started: float,
                 on_lost: Callable[[str], None]) -> None:
        self._client, self._app, self._sql, self._args = client, app, beat_sql, beat_args
        self._payload = payload
        self._ttl = ttl.total_seconds()
        self._margin = margin.total_seconds()
        self._interval = self._ttl / 3
        self._deadline = started + self._ttl - self._margin
        self._on_lost = on_lost
        self._cond = threading.Condition()
        self._stopped = False
        self.lost = threading.Event()
        self.reason = ""
        self.beats = 0
        self._conn: Optional[Conn] = None
        self._threads = [threading.Thread(target=self._beat_loop, name=f"{app} heartbeat", daemon=True),
                         threading.Thread(target=self._watchdog, name=f"{app} deadline", daemon=True)]

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` past which the holder counts the lease as lost."""
        return self._deadline

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=self._interval + 5)

    def _lose(self, reason: str) -> None:
        with self._cond:
            if self._stopped or self.lost.is_set():
                return
            self.reason = reason
            self.lost.set()
            self._stopped = True
            self._cond.notify_all()
        log.warning("%s: lost (%s)", self._app, reason)
        try:
            self._on_lost(reason)
        except Exception:  # noqa: BLE001 - a failing cancel must not kill the keeper
            log.exception("%s: on-loss callback failed", self._app)

    def _watchdog(self) -> None:
        with self._cond:
            while not self._stopped:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            else:
                return
        self._lose("local deadline passed without an acknowledged heartbeat")

    def _notified(self, n: psycopg.Notify) -> None:
        if n.channel == LOST_CHANNEL and n.payload == self._payload:
            self._lose("notified on lease_sched_lost")

    def _connect(self) -> Conn:
        ms = max(1000, int(self._interval * 1000))
        conn = self._client.connect(
            application_name=self._app, connect_timeout=max(2, int(self._interval) + 1),
            tcp_user_timeout=ms, keepalives=1, keepalives_idle=max(1, int(self._interval)),
            keepalives_interval=1, keepalives_count=3)
        conn.execute(f"LISTEN {LOST_CHANNEL}")
        return conn

    def _beat_loop(self) -> None:
        next_beat = time.monotonic() + self._interval
        try:
            while not self._stopped:
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    wait = next_beat - time.monotonic()
                    if wait > 0:
                        # Block on the socket for notifications; short slices so stop() is prompt.
                        for n in self._conn.notifies(timeout=min(wait, 0.2)):
                            self._notified(n)
                        continue
                    sent = time.monotonic()
                    row = self._conn.execute(self._sql, self._args).fetchone()
                    if not (row and row[0]):
                        self._lose("heartbeat returned false: someone else holds it now")
                        return
                    self.beats += 1
                    with self._cond:
                        self._deadline = max(self._deadline, sent + self._ttl - self._margin)
                    next_beat = sent + self._interval
                except psycopg.Error as e:
                    log.info("%s: heartbeat connection failed (%s); reconnecting", self._app, e)
                    self._close()
                    with self._cond:
                        if not self._stopped:
                            self._cond.wait(min(self._interval, 0.5))
                    next_beat = time.monotonic()
        finally:
            self._close()

    def _close(self) -> None:
        c, self._conn = self._conn, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass


def _cancel(conn: Optional[Conn]) -> None:
    if conn is None or conn.closed:
        return
    cancel_safe = getattr(conn, "cancel_safe", None)
    if cancel_safe is not None:
        cancel_safe(timeout=5.0)
    else:
        conn.cancel()


class _Held:
    """What a lease and a leader share: the keeper, lost/check, the body's connection."""

    _keeper: Optional[_Keeper]
    _what: str

    def __init__(self, client: Client, cancel_on_loss: bool) -> None:
        self._client = client
        self._cancel_on_loss = cancel_on_loss
        self.lost = threading.Event()
        self._body_conn: Optional[Conn] = None
        self._body_conn_pooled = False
        self._keeper = None

    @property
    def lost_reason(self) -> str:
        return self._keeper.reason if self._keeper else ""

    def check(self) -> None:
        """Raise :class:`LeaseLost` once the lease (lock) is lost."""
        if self.lost.is_set():
            raise LeaseLost(f"{self._what} was lost ({self.lost_reason})", self.lost_reason)

    def connection(self) -> Conn:
        """A connection for the body's own work (autocommit unless it came from a pool),
        closed (or returned to the pool) when the block ends. With ``cancel_on_loss=True``
        the query running on it is cancelled the moment the lease is lost."""
        if self._body_conn is None:
            if self._client._pool is not None:
                self._body_conn = self._client._pool.getconn()
                self._body_conn_pooled = True
            else:
                self._body_conn = self._client.connect()
            if self.lost.is_set() and self._cancel_on_loss:
                raise LeaseLost(f"{self._what} was lost ({self.lost_reason})", self.lost_reason)
        return self._body_conn

    def _on_lost(self, reason: str) -> None:
        self.lost.set()
        if self._cancel_on_loss:
            _cancel(self._body_conn)

    def _release_body_conn(self) -> None:
        c, self._body_conn = self._body_conn, None
        if c is None:
            return
        if self._body_conn_pooled and self._client._pool is not None:
            self._client._pool.putconn(c)
        else:
            c.close()

    def _lost_exit(self, exc: Optional[BaseException]) -> None:
        """After loss: nothing is written; LeaseLost unless the body raised on its own."""
        reason = self.lost_reason
        if exc is None:
            raise LeaseLost(f"{self._what} was lost ({reason}); nothing was finished", reason)
        if isinstance(exc, psycopg.errors.QueryCanceled) and self._cancel_on_loss:
            raise LeaseLost(f"{self._what} was lost ({reason}); the body's query was cancelled",
                            reason) from exc


class Lease(_Held):
    """A held lease. Attributes set during the block and written by the finish:
    ``result`` (any JSON-able value), ``rows_affected``, ``retry_in`` (for a FAILED finish)."""

    def __init__(self, client: Client, job_name: str, plan_time: datetime, runner_id: str,
                 stale_timeout: timedelta, scope_kind: str, scope_id: str, max_attempts: int,
                 allow_stale_reentry: bool, cancel_on_loss: bool,
                 margin: Optional[timedelta]) -> None:
        super().__init__(client, cancel_on_loss)
        self.job_name, self.plan_time, self.runner_id = job_name, plan_time, runner_id
        self.stale_timeout = stale_timeout
        self.margin = check_timing(stale_timeout, margin)
        self._claim_args = (job_name, plan_time, runner_id, scope_kind, scope_id, stale_timeout,
                            max_attempts, allow_stale_reentry)
        self._claim: Optional[Claim] = None
        self.result: Any = None
        self.rows_affected: Optional[int] = None
        self.retry_in: Optional[timedelta] = None
        self.finished: Optional[str] = None
        #: Why ``result`` was not stored (``{"result_not_stored": ...}`` was, instead); None
        #: when it was stored as given.
        self.result_error: Optional[str] = None
        self._what = f"lease on {job_name} @ {plan_time}"

    @property
    def claim(self) -> Claim:
        assert self._claim is not None, "the lease is claimed by entering the with block"
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

    @property
    def outcome(self) -> str:
        return self.claim.outcome

    def fence(self, conn: Conn) -> None:
        """``lease_sched.lease_fence(execution_id, fencing_token, lease_token)`` inside ``conn``'s current
        transaction: the writes that follow it there commit only while this lease is held."""
        try:
            conn.execute(LEASE_FENCE_SQL, (self.execution_id, self.fencing_token, self.claim.lease_token))
        except psycopg.Error as e:
            if e.sqlstate == UNDEFINED_FUNCTION:
                raise fence_unavailable("lease_fence") from e
            raise

    def __enter__(self) -> "Lease":
        started = time.monotonic()
        claim = self._client.try_claim(*self._claim_args[:3], stale_timeout=self._claim_args[5],
                                       scope_kind=self._claim_args[3], scope_id=self._claim_args[4],
                                       max_attempts=self._claim_args[6],
                                       allow_stale_reentry=self._claim_args[7])
        if claim.outcome not in ("won", "stole"):
            raise Conflicted(claim, f"{self.job_name} @ {self.plan_time}: conflicted "
                             f"(execution {claim.execution_id}, attempt {claim.attempt})")
        self._claim = claim
        self._keeper = _Keeper(self._client, app_name("lease", str(claim.execution_id)),
                               HEARTBEAT_SQL, (claim.execution_id, claim.lease_token),
                               str(claim.execution_id), self.stale_timeout, self.margin, started,
                               self._on_lost)
        self._keeper.start()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        keeper = self._keeper
        assert keeper is not None
        # Encode while the heartbeat still runs: a result that cannot be stored is replaced,
        # never a reason to leave the run unfinished (it would run again after stale_timeout).
        result, self.result_error = encode_result(self.result)
        keeper.stop()
        try:
            self._release_body_conn()
        except Exception:  # noqa: BLE001
            log.exception("closing the body's connection")
        if self.lost.is_set():
            self._lost_exit(exc)
            return None
        claim = self.claim
        status = "SUCCESS" if exc is None else "FAILED"

        def finish(result: Optional[str]) -> Any:
            if exc is None:
                args: Tuple[Any, ...] = (claim.execution_id, claim.lease_token, status, result,
                                         self.rows_affected, None, None, None)
            else:
                args = (claim.execution_id, claim.lease_token, status, result, self.rows_affected,
                        error_code_of(exc), error_msg_of(exc), self.retry_in)
            with self._client._conn() as c:
                return c.execute(FINISH_SQL, args).fetchone()

        try:
            try:
                row = finish(result)
            except psycopg.Error as e:
                if result is None or not refused_result(e):
                    raise
                # Refused by the database (over 16 KiB as jsonb prints it, or not valid jsonb):
                # the lease is still RUNNING; finish it with the substitute.
                self.result_error = f"lease_finish refused the result: {e.sqlstate}: {e}"
                row = finish(unstored_result(self.result_error))
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
        _add_note(exc, "lease_sched: the lease was lost before the FAILED finish")
        return None


class Leader(_Held):
    """A held named lock (leader election)."""

    def __init__(self, client: Client, lock_name: str, holder: str, ttl: timedelta,
                 cancel_on_loss: bool, margin: Optional[timedelta]) -> None:
        super().__init__(client, cancel_on_loss)
        self.lock_name, self.holder, self.ttl = lock_name, holder, ttl
        self.margin = check_timing(ttl, margin)
        self._state: Optional[LockState] = None
        self.released = False
        self._what = f"lock {lock_name}"

    @property
    def state(self) -> LockState:
        assert self._state is not None, "the lock is acquired by entering the with block"
        return self._state

    @property
    def fencing_token(self) -> int:
        t = self.state.fencing_token
        assert t is not None
        return t

    def fence(self, conn: Conn) -> None:
        """``lease_sched.lock_fence(lock_name, fencing_token, lock_token)`` inside ``conn``'s current
        transaction: the writes that follow it there commit only while this leader holds."""
        try:
            conn.execute(LOCK_FENCE_SQL, (self.lock_name, self.fencing_token, self.state.lock_token))
        except psycopg.Error as e:
            if e.sqlstate == UNDEFINED_FUNCTION:
                raise fence_unavailable("lock_fence") from e
            raise

    def __enter__(self) -> "Leader":
        started = time.monotonic()
        with self._client._conn() as c:
            row = c.execute(LOCK_ACQUIRE_SQL, (self.lock_name, self.holder, self.ttl)).fetchone()
        assert row is not None
        state = LockState(*row)
        if not state.acquired:
            raise NotLeader(state, f"lock {self.lock_name} is held by {state.holder} "
                                   f"until {state.expires_at}")
        self._state = state
        self._keeper = _Keeper(self._client, app_name("lock", self.lock_name), LOCK_HEARTBEAT_SQL,
                               (self.lock_name, state.lock_token), f"lock:{self.lock_name}",
                               self.ttl, self.margin, started, self._on_lost)
        self._keeper.start()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        keeper = self._keeper
        assert keeper is not None
        keeper.stop()
        try:
            self._release_body_conn()
        except Exception:  # noqa: BLE001
            log.exception("closing the body's connection")
        if self.lost.is_set():
            self._lost_exit(exc)
            return None
        try:
            with self._client._conn() as c:
                row = c.execute(LOCK_RELEASE_SQL, (self.lock_name, self.state.lock_token)).fetchone()
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


class Runtime:
    """A registered runtime, touched every ``every`` by a background thread."""

    def __init__(self, client: Client, name: str, metadata: Dict[str, Any], every: timedelta) -> None:
        self._client, self.name, self.metadata, self.every = client, name, metadata, every
        self.id: Any = None
        self.touches = 0
        self.last_error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Runtime":
        import json
        with self._client._conn() as c:
            row = c.execute(RUNTIME_REGISTER_SQL, (self.name, json.dumps(self.metadata))).fetchone()
        assert row is not None
        self.id = row[0]
        self._thread = threading.Thread(target=self._loop, name=f"lease_sched runtime {self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every.total_seconds() + 10)

    def _loop(self) -> None:
        conn: Optional[Conn] = None
        try:
            while not self._stop.wait(self.every.total_seconds()):
                try:
                    if conn is None:
                        conn = self._client.connect(application_name=f"lease_sched runtime {self.name}"[:63])
                    conn.execute(RUNTIME_TOUCH_SQL, (self.id,))
                    self.touches += 1
                except psycopg.Error as e:
                    self.last_error = e
                    log.info("runtime %s: touch failed (%s); retrying", self.name, e)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> "Runtime":
        return self.start()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()
