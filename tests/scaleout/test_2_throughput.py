"""Throughput of claim + finish: one partition directly, through the proxy with 1 partition,
through the proxy with 2. On one 2-core machine every server shares the same cores, so this
measures the proxy's routing overhead, not scaling (docs/scaling.md models N machines)."""
import os
import re
import subprocess

import pytest

from conftest import MODE, PARTITIONS, PROXY_DSN, pgbin

pytestmark = [pytest.mark.throughput,
              pytest.mark.skipif(MODE != "full", reason="full mode only (scripts/scaleout.sh)")]
SECONDS = int(os.environ.get("SCALEOUT_BENCH_SECONDS", "10"))
CLIENTS = int(os.environ.get("SCALEOUT_BENCH_CLIENTS", "4"))
SCRIPT = r"""
\set r random(1, 9000000000000000)
\set k random(0, 63)
SELECT execution_id AS id, lease_token AS tok FROM lease_sched.lease_try_claim('bench-' || :k, timestamptz '2000-01-01' + :r * interval '1 microsecond', 'pgbench') \gset
SELECT lease_sched.lease_finish(:id::uuid, :tok::uuid, 'SUCCESS');
"""


def pgbench(dsn: str) -> float:
    path = "/tmp/lease_sched_scaleout_bench.sql"
    with open(path, "w") as f:
        f.write(SCRIPT)
    out = subprocess.run([f"{pgbin()}/pgbench", "-n", "-M", "prepared", "-f", path, "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS), dsn],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"tps = ([0-9.]+)", out.stdout)
    assert m, out.stdout
    failed = re.search(r"number of failed transactions: ([0-9]+)", out.stdout)
    assert failed is None or failed.group(1) == "0", out.stdout
    return float(m.group(1))


def test_throughput_direct_vs_proxy_1_vs_2_partitions():
    direct = pgbench(PARTITIONS[0])
    one = pgbench(os.environ["SCALEOUT_PROXY_1P_DSN"])
    two = pgbench(PROXY_DSN)
    line = (f"throughput (claim + finish per transaction, {CLIENTS} clients, {SECONDS} s each, synchronous pairs): "
            f"direct to p0 {direct:.0f}/s, proxy over 1 partition {one:.0f}/s, proxy over 2 partitions {two:.0f}/s")
    print("\n" + line)
    with open(os.environ.get("SCALEOUT_REPORT", "/tmp/lease_sched_scaleout_report.txt"), "a") as f:
        f.write(line + "\n")
    assert one > 0 and two > 0
