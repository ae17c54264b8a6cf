"""Fixtures: the test cluster (LEASE_SCHED_DSN), unique names, a TCP proxy that can cut the
network between the client and the server."""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, List, Tuple

import psycopg
import pytest

DSN = os.environ.get("LEASE_SCHED_DSN", "host=127.0.0.1 port=55440 dbname=lease_sched user=postgres")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def plan(minute: int = 0) -> datetime:
    return datetime(2026, 1, 1, 3, minute, tzinfo=timezone.utc)


@pytest.fixture
def db() -> Iterator[psycopg.Connection[Tuple[Any, ...]]]:
    with psycopg.connect(DSN, autocommit=True) as c:
        yield c


def row_of(db: psycopg.Connection[Tuple[Any, ...]], execution_id: Any) -> Tuple[Any, ...]:
    r = db.execute("SELECT status, runner_id, attempt, error_code, error_msg, result, rows_affected "
                   "FROM lease_sched.sys_cron_executions WHERE id = %s", (execution_id,)).fetchone()
    assert r is not None
    return r


def backend_pid(db: psycopg.Connection[Tuple[Any, ...]], app: str, timeout: float = 10) -> int:
    """The pid of the (first) backend with that application_name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = db.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()
        if r:
            return int(r[0])
        time.sleep(0.05)
    raise AssertionError(f"no backend with application_name {app!r}")


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class Proxy:
    """A TCP proxy to the server; stop() closes the listener and every connection through it,
    so clients using it see the database as unreachable (new connections are refused)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.socks: List[socket.socket] = []
        self.stopped = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def dsn(self) -> str:
        parts = [kv for kv in DSN.split() if not kv.startswith(("host=", "port="))]
        return " ".join(["host=127.0.0.1", f"port={self.port}"] + parts)

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:
                a.close()
                continue
            with self.lock:
                if self.stopped:
                    a.close(); b.close()
                    return
                self.socks += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x: socket.socket, y: socket.socket) -> None:
        try:
            while True:
                data = x.recv(65536)
                if not data:
                    break
                y.sendall(data)
        except OSError:
            pass
        finally:
            for s in (x, y):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            socks, self.socks = self.socks, []
        self.listener.close()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def server() -> Tuple[str, int]:
    kv = dict(p.split("=", 1) for p in DSN.split())
    return kv.get("host", "127.0.0.1"), int(kv.get("port", "5432"))


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy(*server())
    yield p
    p.stop()


def fence_exists(db: psycopg.Connection[Tuple[Any, ...]], name: str) -> bool:
    r = db.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                   "WHERE n.nspname = 'lease_sched' AND p.proname = %s", (name,)).fetchone()
    return bool(r and r[0])


def steal(db: psycopg.Connection[Tuple[Any, ...]], job: str, when: datetime, execution_id: Any,
          thief: str, *, force_stale: bool = True) -> Tuple[Any, ...]:
    """Another runner steals: make the lease stale now (in the same transaction, so the
    holder's heartbeat cannot slip in between) and claim it."""
    with db.transaction():
        if force_stale:
            db.execute("UPDATE lease_sched.sys_cron_executions SET stale_after = clock_timestamp() - "
                       "interval '1 second' WHERE id = %s", (execution_id,))
        r = db.execute("SELECT outcome, execution_id, lease_token FROM lease_sched.lease_try_claim("
                       "job_name => %s, plan_time => %s, runner_id => %s, stale_timeout => '1 minute')",
                       (job, when, thief)).fetchone()
    assert r is not None
    return r


__all__: List[str] = ["DSN", "unique", "plan", "row_of", "backend_pid", "wait_for", "Proxy",
                      "steal", "fence_exists", "server"]
