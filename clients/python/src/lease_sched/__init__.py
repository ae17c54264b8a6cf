"""Client library for the lease_sched PostgreSQL extension (psycopg 3, sync and asyncio).

    from lease_sched import Client, Conflicted, LeaseLost
    client = Client("postgresql://...")
    with client.lease("nightly", plan_time, runner_id="host-a", stale_timeout=timedelta(seconds=30)) as lease:
        do_work(fencing_token=lease.fencing_token)   # heartbeats run in the background
        lease.check()                                # raises LeaseLost once the lease is lost

See docs/clients.md for the loss rules.
"""
from ._async import AsyncClient, AsyncLeader, AsyncLease, AsyncRuntime
from ._common import (LOST_CHANNEL, Claim, Conflicted, FenceUnavailable, LeaseLost, LeaseSchedError,
                      LockState, NotLeader)
from ._sync import Client, DueRun, Leader, Lease, Runtime

__all__ = [
    "AsyncClient", "AsyncLeader", "AsyncLease", "AsyncRuntime", "Claim", "Client", "Conflicted",
    "DueRun", "FenceUnavailable", "LOST_CHANNEL", "Leader", "Lease", "LeaseLost", "LeaseSchedError",
    "LockState", "NotLeader", "Runtime",
]
__version__ = "0.2.0"
