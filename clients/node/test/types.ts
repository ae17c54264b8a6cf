// Compiled by `npm run typecheck` (tsc --strict, no output): the declarations describe the
// API the way a TypeScript user calls it.
import { Client, Conflicted, LeaseLost, NotLeader, type Lease, type DueRun } from 'lease-sched'

export async function example(dsn: string): Promise<void> {
  const client = new Client(dsn, { runnerId: 'host-a' })
  try {
    const lease: Lease = await client.withLease('nightly-report', new Date(), { staleTimeout: 30_000 }, async (lease) => {
      const conn = await lease.connection()
      await conn.query('SELECT $1::bigint', [String(lease.fencingToken)])
      const res = await fetch('http://127.0.0.1:1/', { signal: lease.signal }).catch(() => null)
      lease.check()
      lease.result = { pages: 12, fetched: res?.status ?? null }
      lease.rowsAffected = 12
    })
    const finished: 'SUCCESS' | 'FAILED' | null = lease.finished
    void finished
  } catch (e) {
    if (e instanceof Conflicted) console.log(e.claim)
    else if (e instanceof LeaseLost) console.log(e.reason, e.cause)
    else throw e
  }
  const due: DueRun<number> = await client.runDue('purge', { every: 60_000 }, async (l) => Number(l.fencingToken))
  void due
  try {
    const n: string = await client.leader('singleton', { ttl: 10_000 }, async (leader) => leader.name)
    void n
  } catch (e) {
    if (e instanceof NotLeader) console.log(e.state.holder, e.state.expiresAt)
  }
  const rt = await client.runtime('worker', { every: 15_000, metadata: { v: 1 } })
  await rt.stop()
  await client.end()
}
