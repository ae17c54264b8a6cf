"""Shared by the sync and asyncio clients: rows, errors, SQL, timing rules."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Dict, Optional, Tuple, Union
from uuid import UUID

import psycopg

#: The channel the extension notifies when a lease is stolen / failed by the sweeper
#: (payload: the execution id) or a lock is taken over (payload: ``lock:<name>``).
LOST_CHANNEL = "lease_sched_lost"

#: The SQLSTATE of "undefined function": lock_fence / lease_fence not in this database yet.
UNDEFINED_FUNCTION = "42883"


@dataclass(frozen=True)
class Claim:
    """The row ``lease_sched.lease_try_claim`` returned."""

    outcome: str
    execution_id: Optional[UUID]
    lease_token: Optional[UUID]
    attempt: Optional[int]
    fencing_token: Optional[int]
    stale_after: Optional[datetime]

    def __repr__(self) -> str:  # never print the secret lease_token
        return (f"Claim(outcome={self.outcome!r}, execution_id={self.execution_id!r}, "
                f"attempt={self.attempt!r}, fencing_token={self.fencing_token!r}, "
                f"stale_after={self.stale_after!r})")


@dataclass(frozen=True)
class LockState:
    """The row ``lease_sched.lock_acquire`` returned."""

    acquired: bool
    lock_token: Optional[UUID]
    fencing_token: Optional[int]
    holder: Optional[str]
    expires_at: Optional[datetime]

    def __repr__(self) -> str:  # never print the secret lock_token
        return (f"LockState(acquired={self.acquired!r}, fencing_token={self.fencing_token!r}, "
                f"holder={self.holder!r}, expires_at={self.expires_at!r})")


class LeaseSchedError(Exception):
    """Base class of this library's own errors."""


class Conflicted(LeaseSchedError):
    """Someone else holds the plan (or it is finished, backing off, out of attempts).

    ``row`` is the claim row (:class:`Claim`) or, for a lock, the :class:`LockState`.
    """

    def __init__(self, row: Union[Claim, LockState], message: str) -> None:
        super().__init__(message)
        self.row = row

    @property
    def claim(self) -> Claim:
        assert isinstance(self.row, Claim)
        return self.row


class NotLeader(Conflicted):
    """The lock is held by a live holder (``row.holder``, until ``row.expires_at``)."""


class LeaseLost(LeaseSchedError):
    """The lease (or lock) is no longer ours: stop working and do not write anything else."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class FenceUnavailable(LeaseSchedError):
    """``lease_sched.lock_fence`` / ``lease_fence`` does not exist in this database."""


def interval_secs(d: timedelta) -> float:
    return d.total_seconds()


def default_margin(ttl: timedelta) -> timedelta:
    """How long before the database may declare the lease stale the holder gives up:
    ``min(ttl / 10, 1 s)``, the rule ``lease_sched.run`` uses for its own deadline."""
    return min(ttl / 10, timedelta(seconds=1))


def check_timing(ttl: timedelta, margin: Optional[timedelta]) -> timedelta:
    if ttl <= timedelta(0):
        raise ValueError("stale_timeout / ttl must be positive")
    m = default_margin(ttl) if margin is None else margin
    if m < timedelta(0) or m >= ttl * 2 / 3:
        raise ValueError("margin must be >= 0 and below two thirds of stale_timeout / ttl")
    return m


def error_code_of(exc: BaseException) -> str:
    """SQLSTATE for a database error, else the exception's class name."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        return exc.sqlstate
    return type(exc).__name__


def error_msg_of(exc: BaseException) -> str:
    msg = str(exc)
    return msg if msg else type(exc).__name__


#: What ``lease_finish`` stores at most as ``result`` (as jsonb prints it); larger is refused
#: with SQLSTATE 22001.
RESULT_MAX_BYTES = 16 * 1024


def unstored_result(reason: str) -> str:
    """The result stored instead of one that cannot be stored (not JSON, too large): the run
    still finishes, with ``{"result_not_stored": "<why>"}`` as its result."""
    return json.dumps({"result_not_stored": reason[:1000]})


def encode_result(result: Any) -> Tuple[Optional[str], Optional[str]]:
    """``(json_text, None)``, or ``(substitute, why)`` when ``result`` is not JSON (a
    ``Decimal``, a ``datetime``, NaN, a set...) or over :data:`RESULT_MAX_BYTES`. Called while
    the heartbeat still runs, so that a result that cannot be stored never costs the finish."""
    if result is None:
        return None, None
    try:
        text = json.dumps(result, allow_nan=False)
    except Exception as e:  # noqa: BLE001 - whatever the value does, the run must finish
        why = f"{type(e).__name__}: {e}"
        return unstored_result(why), why
    size = len(text.encode())
    if size > RESULT_MAX_BYTES:
        why = f"result is {size} bytes of JSON, over the {RESULT_MAX_BYTES} bytes lease_finish stores"
        return unstored_result(why), why
    return text, None


def refused_result(e: BaseException) -> bool:
    """Whether a failed finish refused the result (22001 too large, or another data
    exception of the JSON input): the lease is still RUNNING and the finish can be repeated
    with :func:`unstored_result`."""
    return isinstance(e, psycopg.Error) and (e.sqlstate or "").startswith("22")


CLAIM_SQL = """SELECT outcome, execution_id, lease_token, attempt, fencing_token, stale_after
  FROM lease_sched.lease_try_claim(job_name => %s, plan_time => %s, runner_id => %s,
       scope_kind => %s, scope_id => %s, stale_timeout => %s, max_attempts => %s,
       allow_stale_reentry => %s)"""

HEARTBEAT_SQL = "SELECT lease_sched.lease_heartbeat(execution_id => %s, lease_token => %s)"

FINISH_SQL = """SELECT lease_sched.lease_finish(execution_id => %s, lease_token => %s, status => %s,
       result => %s::jsonb, rows_affected => %s, error_code => %s, error_msg => %s, retry_in => %s)"""

# With the holder's secret: only then does the fence hold until the transaction ends.
LEASE_FENCE_SQL = "SELECT lease_sched.lease_fence(%s, %s, %s)"

LOCK_ACQUIRE_SQL = """SELECT acquired, lock_token, fencing_token, holder, expires_at
  FROM lease_sched.lock_acquire(lock_name => %s, holder => %s, ttl => %s)"""

LOCK_HEARTBEAT_SQL = "SELECT lease_sched.lock_heartbeat(lock_name => %s, lock_token => %s)"

LOCK_RELEASE_SQL = "SELECT lease_sched.lock_release(lock_name => %s, lock_token => %s)"

LOCK_FENCE_SQL = "SELECT lease_sched.lock_fence(%s, %s, %s)"

NEXT_PLAN_SQL = """SELECT lease_sched.lease_next_plan(job_name => %s, every => %s, scope_kind => %s,
       scope_id => %s, catch_up => %s)"""

RUNTIME_REGISTER_SQL = "SELECT lease_sched.runtime_register(%s, %s::jsonb)"

RUNTIME_TOUCH_SQL = "SELECT lease_sched.runtime_touch(%s)"


def pool_settings(conninfo: str, pool: Any) -> Tuple[str, Dict[str, Any]]:
    """The conninfo and connect arguments for dedicated (heartbeat) connections."""
    if pool is None:
        return conninfo, {}
    kwargs = pool.kwargs
    if conninfo:
        return conninfo, dict(kwargs) if isinstance(kwargs, dict) else {}
    if not isinstance(pool.conninfo, str) or not (kwargs is None or isinstance(kwargs, dict)):
        raise ValueError("the pool's conninfo/kwargs are callables: pass conninfo= too, for the "
                         "dedicated heartbeat connections")
    return pool.conninfo, dict(kwargs or {})


def app_name(kind: str, key: str) -> str:
    """application_name of a heartbeat connection (at most 63 bytes, PostgreSQL's limit)."""
    return f"lease_sched {kind} {key}".encode()[:63].decode(errors="ignore")


def fence_unavailable(what: str) -> FenceUnavailable:
    return FenceUnavailable(
        f"lease_sched.{what} does not exist in this database: the installed lease_sched is older "
        f"than the fencing API (ALTER EXTENSION lease_sched UPDATE after installing a newer version)")
