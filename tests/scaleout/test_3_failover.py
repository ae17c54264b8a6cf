"""pg_auto_failover under load, through the proxy: the primary of partition 0 is killed -9
(its pg_autoctl service with it, as when its machine dies), then partition 1 is switched
over. Runners claim, heartbeat and finish all along. Checked: no plan is held twice, every
acknowledged finish is on the partition afterwards, fencing tokens per job rise in real-time
order across the failover, writes resume (the gap is measured), the lease_sched worker is
absent on the standby and runs on the promoted node."""
import datetime as dt
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict

import psycopg
import pytest

from conftest import PARTITIONS, PROXY_DSN, claim, connect, finish, heartbeat, partition_of, unique

pytestmark = [pytest.mark.failover,
              pytest.mark.skipif(os.environ.get("SCALEOUT_MODE") != "full", reason="full mode only")]
DIR = os.environ.get("SCALEOUT_DIR", "/tmp/lease_sched_scaleout")
MONITOR = f"host=127.0.0.1 port={os.environ.get('SCALEOUT_MONITOR_PORT', '55501')} dbname=pg_auto_failover user=postgres"
PORTS = {"p0a": 55510, "p0b": 55511, "p1a": 55520, "p1b": 55521}
REPORT = os.environ.get("SCALEOUT_REPORT", "/tmp/lease_sched_scaleout_report.txt")
BASE = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def report(line):
    print("\n" + line)
    with open(REPORT, "a") as f:
        f.write(line + "\n")


def nodes(formation):
    with connect(MONITOR) as m:
        return m.execute("SELECT nodename, reportedstate, goalstate FROM pgautofailover.node WHERE formationid = %s"
                         " ORDER BY nodename", (formation,)).fetchall()


def primary_of(formation):
    return next(n for n, rep, goal in nodes(formation) if rep == goal == "primary")


def lease_workers(node):
    with connect(f"host=127.0.0.1 port={PORTS[node]} dbname=lease_sched user=postgres", retry_for=30) as c:
        return sorted(r[0] for r in c.execute(
            "SELECT backend_type FROM pg_stat_activity WHERE backend_type LIKE 'lease_sched%'").fetchall())


def in_recovery(node):
    with connect(f"host=127.0.0.1 port={PORTS[node]} dbname=lease_sched user=postgres", retry_for=30) as c:
        return c.execute("SELECT pg_is_in_recovery()").fetchone()[0]


def wait_for(what, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except psycopg.Error:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class Load:
    """Runners in pairs: both runners of a pair try the same plans, so every plan is
    contested; each winner heartbeats once and finishes SUCCESS."""

    def __init__(self, jobs, pairs=2):
        self.jobs, self.pairs = jobs, pairs
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.grants = []      # (t_send, t_recv, job, plan, execution_id, fencing_token)
        self.acked = []       # (execution_id, job, t)
        self.ok_at = defaultdict(list)   # partition -> times of successful claims (any outcome)
        self.errors = defaultdict(int)   # partition -> failed calls
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(2 * pairs)]

    def run(self, i):
        c = connect(PROXY_DSN, retry_for=30)
        pair, k = i // 2, 0
        while not self.stop.is_set():
            k += 1
            job = self.jobs[k % len(self.jobs)]
            part = partition_of(job)
            plan = BASE + dt.timedelta(seconds=pair * 10_000_000 + k)
            try:
                t0 = time.monotonic()
                r = claim(c, job, plan, runner=f"r{i}", stale_timeout="10 minutes")
                t1 = time.monotonic()
                with self.lock:
                    self.ok_at[part].append((t0, t1))
                if r["outcome"] not in ("won", "stole"):
                    continue
                with self.lock:
                    self.grants.append((t0, t1, job, plan, r["execution_id"], r["fencing_token"]))
                assert heartbeat(c, r["execution_id"], r["lease_token"]) is True
                if finish(c, r["execution_id"], r["lease_token"]):
                    with self.lock:
                        self.acked.append((r["execution_id"], job, time.monotonic()))
            except psycopg.Error:
                with self.lock:
                    self.errors[part] += 1
                if c.closed or c.broken:
                    c = connect(PROXY_DSN, retry_for=60)
                time.sleep(0.05)
        c.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def gap(self, part, since):
        """Longest time without a successful claim on `part` around `since`."""
        times = sorted(t1 for _, t1 in self.ok_at[part] if t1 >= since - 5)
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))

    def resumed(self, part, since):
        """Seconds from `since` to the first successful claim on `part` sent after it."""
        return min(t1 for t0, t1 in self.ok_at[part] if t0 > since) - since

    def check(self):
        # No plan held twice.
        per_plan = defaultdict(int)
        for _, _, job, plan, _, _ in self.grants:
            per_plan[(job, plan)] += 1
        assert max(per_plan.values()) == 1, "a plan was granted twice"
        # Tokens per job rise in real-time order: a grant that was sent after another grant
        # of the same job had returned carries a higher token.
        by_job = defaultdict(list)
        for g in self.grants:
            by_job[g[2]].append(g)
        for job, gs in by_job.items():
            by_recv = sorted(gs, key=lambda g: g[1])
            j, highest = 0, None
            for g in sorted(gs, key=lambda g: g[0]):
                while j < len(by_recv) and by_recv[j][1] < g[0]:
                    highest = max(highest or by_recv[j][5], by_recv[j][5])
                    j += 1
                assert highest is None or g[5] > highest, f"{job}: token {g[5]} after {highest}"
        # Every acknowledged finish is there.
        for p, dsn in enumerate(PARTITIONS):
            ids = [a[0] for a in self.acked if partition_of(a[1]) == p]
            with connect(dsn, retry_for=60) as c:
                n = c.execute("SELECT count(*) FROM lease_sched.executions WHERE id = ANY(%s) AND status = 'SUCCESS'",
                              (ids,)).fetchone()[0]
            assert n == len(ids), f"partition {p}: {len(ids) - n} acknowledged finishes lost"
        return len(self.grants), len(self.acked)


def jobs_for_both():
    js = [unique("fo") for _ in range(64)]
    p0 = [j for j in js if partition_of(j) == 0][:4]
    p1 = [j for j in js if partition_of(j) == 1][:4]
    return p0 + p1


def kill_node(node):
    """kill -9 the node's pg_autoctl service and its postgres, as when the machine dies."""
    data = f"{DIR}/{node}/data"
    with open(f"{data}/postmaster.pid") as f:
        postmaster = int(f.readline())
    keeper = subprocess.run(["pgrep", "-u", "postgres", "-f", f"^pg_autoctl run --pgdata {data}$"],
                            capture_output=True, text=True).stdout.split()
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    for pid in keeper:
        os.killpg(int(pid), signal.SIGKILL)   # the service runs in its own session (setsid)
    # The postmaster and every process it started (backends, walsender): nothing of the
    # node may answer afterwards, as when its machine is gone.
    for pid in [postmaster] + [int(p) for p in children]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_of_a_partition_primary_under_load():
    old = primary_of("p0")
    standby = next(n for n, _, _ in nodes("p0") if n != old)
    assert in_recovery(standby) and lease_workers(standby) == [], "no lease_sched worker on a standby"
    assert lease_workers(old) == ["lease_sched launcher", "lease_sched sweeper"]
    with Load(jobs_for_both()) as load:
        time.sleep(4)
        kill_node(old)
        killed_at = time.monotonic()
        wait_for("writes on partition 0 again", lambda: any(t0 > killed_at for t0, _ in load.ok_at[0]), 120)
        resumed = load.resumed(0, killed_at)
        time.sleep(4)
    grants, acked = load.check()
    wait_for(f"{standby} primary", lambda: not in_recovery(standby), 30)
    wait_for("the worker on the promoted node",
             lambda: lease_workers(standby) == ["lease_sched launcher", "lease_sched sweeper"], 30)
    report(f"kill -9 of p0's primary ({old}) under load: partition 0 wrote again {resumed:.1f} s after the kill "
           f"(longest gap {load.gap(0, killed_at):.1f} s), partition 1's longest gap {load.gap(1, killed_at):.1f} s; "
           f"{grants} grants, {acked} acknowledged finishes all present, failed calls {dict(load.errors)}; "
           f"worker absent on the standby, running on {standby} after promotion")


def test_switchover_under_load():
    old = primary_of("p1")
    standby = next(n for n, _, _ in nodes("p1") if n != old)
    assert lease_workers(standby) == []
    env = dict(os.environ)
    with Load(jobs_for_both()) as load:
        time.sleep(4)
        started = time.monotonic()
        out = subprocess.run(["runuser", "-u", "postgres", "--", "env",
                              *(f"{k}={env[k]}" for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR") if k in env),
                              "pg_autoctl", "perform", "switchover", "--formation", "p1",
                              "--pgdata", f"{DIR}/monitor/data"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        done = time.monotonic() - started
        time.sleep(4)
    grants, acked = load.check()
    assert primary_of("p1") == standby
    assert lease_workers(standby) == ["lease_sched launcher", "lease_sched sweeper"]
    wait_for(f"{old} back as a secondary", lambda: dict((n, r) for n, r, _ in nodes("p1"))[old] == "secondary", 120)
    assert in_recovery(old) and lease_workers(old) == [], "the demoted primary runs no worker"
    report(f"switchover of p1 ({old} -> {standby}) under load: pg_autoctl took {done:.1f} s, "
           f"partition 1's longest write gap {load.gap(1, started):.1f} s, partition 0's {load.gap(0, started):.1f} s; "
           f"{grants} grants, {acked} acknowledged finishes all present, failed calls {dict(load.errors)}; "
           f"worker moved from {old} to {standby}")
