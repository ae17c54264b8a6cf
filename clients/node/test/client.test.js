// lease-sched against a real cluster (LEASE_SCHED_DSN), with real failures: a killed heartbeat
// backend, a network cut by stopping a TCP proxy, steals, 32 concurrent holders.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import net from 'node:net'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'

import { Client, Conflicted, LeaseLost, NotLeader, RESULT_MAX_BYTES } from 'lease-sched'

const DSN = process.env.LEASE_SCHED_DSN || 'host=127.0.0.1 port=55440 dbname=lease_sched user=postgres'

// pg takes URLs or libpq's key=value form? Only URLs and its own config: turn key=value into one.
function config(dsn = DSN) {
  if (/^postgres(ql)?:\/\//.test(dsn)) return { connectionString: dsn }
  const kv = Object.fromEntries(dsn.split(/\s+/).filter(Boolean).map((p) => p.split('=')))
  return { host: kv.host, port: Number(kv.port ?? 5432), database: kv.dbname, user: kv.user, password: kv.password }
}

const unique = (prefix) => `${prefix}_${randomUUID().replaceAll('-', '').slice(0, 12)}`
const plan = (minute = 0) => new Date(Date.UTC(2026, 0, 1, 3, minute))

async function withDb(fn) {
  const db = new pg.Client(config())
  await db.connect()
  try {
    return await fn(db)
  } finally {
    await db.end()
  }
}

async function rowOf(db, id) {
  const { rows } = await db.query(
    `SELECT status, runner_id, attempt, error_code, error_msg, result, rows_affected::int AS rows_affected
       FROM lease_sched.sys_cron_executions WHERE id = $1`, [id])
  return rows[0]
}

async function backendPid(db, app) {
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1 LIMIT 1', [app])
    if (rows.length) return rows[0].pid
    await sleep(50)
  }
  throw new Error(`no backend named ${app}`)
}

/** Another runner steals: stale now (same transaction, so no heartbeat slips in), then claim. */
async function steal(db, job, when, id, force = true) {
  await db.query('BEGIN')
  try {
    if (force) {
      await db.query(`UPDATE lease_sched.sys_cron_executions SET stale_after = clock_timestamp() - interval '1 second'
                       WHERE id = $1`, [id])
    }
    const { rows } = await db.query(`SELECT outcome, lease_token::text FROM lease_sched.lease_try_claim(
        job_name => $1, plan_time => $2, runner_id => 'thief', stale_timeout => '1 minute')`, [job, when])
    await db.query('COMMIT')
    return rows[0]
  } catch (e) {
    await db.query('ROLLBACK')
    throw e
  }
}

/** A TCP proxy to the server; stop() cuts every connection and refuses new ones. */
async function startProxy() {
  const target = config()
  const sockets = new Set()
  const server = net.createServer((a) => {
    const b = net.connect(target.port, target.host ?? '127.0.0.1')
    for (const s of [a, b]) {
      sockets.add(s)
      s.on('error', () => {})
      s.on('close', () => { a.destroy(); b.destroy() })
    }
    a.pipe(b)
    b.pipe(a)
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return {
    config: { ...target, host: '127.0.0.1', port: server.address().port },
    stop() {
      server.close()
      for (const s of sockets) s.destroy()
    },
  }
}

test('a lease survives 4 s of work at stale_timeout 1 s', async () => {
  const client = new Client(config())
  const job = unique('js_survive')
  const conflicts = []
  let stop = false
  let thief
  let lease
  try {
    lease = await client.withLease(job, plan(), { runnerId: 'holder', staleTimeout: 1000 }, async (lease) => {
      // Once the holder has its lease (a thief started earlier could claim first on a slow
      // machine), a thief keeps trying to take the plan while the body works.
      thief = (async () => {
        while (!stop) {
          await sleep(200)
          try {
            await client.withLease(job, plan(), { runnerId: 'thief', staleTimeout: 1000 }, () => {})
            conflicts.push('won')
          } catch (e) {
            conflicts.push(e instanceof Conflicted ? e.claim.outcome : String(e))
          }
        }
      })()
      const conn = await lease.connection()
      await conn.query('SELECT pg_sleep(4)') // 4 x stale_timeout
      lease.check()
      lease.result = { rows: 3 }
      lease.rowsAffected = 3
    })
  } finally {
    stop = true
    await thief
  }
  assert.ok(conflicts.length > 0 && conflicts.every((c) => c === 'conflicted'), String(conflicts))
  // Surviving 4 stale timeouts takes a beat in each; how many more is the machine's business.
  assert.ok(lease.heartbeats >= 4, `${lease.heartbeats} heartbeats`)
  assert.equal(lease.finished, 'SUCCESS')
  await withDb(async (db) => {
    const r = await rowOf(db, lease.executionId)
    assert.deepEqual([r.status, r.runner_id, r.attempt, r.result, r.rows_affected], ['SUCCESS', 'holder', 1, { rows: 3 }, 3])
  })
  await client.end()
})

test('an error finishes FAILED with its message and is thrown again', async () => {
  const client = new Client(config())
  const job = unique('js_fail')
  let id
  await assert.rejects(client.withLease(job, plan(), async (lease) => {
    id = lease.executionId
    throw new RangeError('boom 42')
  }), /boom 42/)
  let id2
  await assert.rejects(client.withLease(job, plan(1), async (lease) => {
    id2 = lease.executionId
    const conn = await lease.connection()
    await conn.query('SELECT 1 / 0')
  }), /division by zero/)
  await withDb(async (db) => {
    const r = await rowOf(db, id)
    assert.deepEqual([r.status, r.error_code, r.error_msg], ['FAILED', 'RangeError', 'boom 42'])
    const r2 = await rowOf(db, id2)
    assert.deepEqual([r2.status, r2.error_code], ['FAILED', '22012'])
  })
  await client.end()
})

test('heartbeat backend terminated and the plan stolen: lost within one interval, body cancelled, never finished', async () => {
  const client = new Client(config())
  const job = unique('js_steal')
  const stale = 3000
  let ready
  const started = new Promise((r) => { ready = r })
  let cancelledAt = null
  let aborted = false
  const held = client.withLease(job, plan(), { runnerId: 'holder', staleTimeout: stale }, async (lease) => {
    const conn = await lease.connection()
    lease.signal.addEventListener('abort', () => { aborted = true })
    ready(lease)
    try {
      await conn.query('SELECT pg_sleep(60)')
    } finally {
      cancelledAt = performance.now()
    }
  })
  const outcome = held.then(() => null, (e) => e)
  const lease = await started
  await withDb(async (db) => {
    const pid = await backendPid(db, `lease_sched lease ${lease.executionId}`)
    await db.query('SELECT pg_terminate_backend($1)', [pid])
    await sleep(300)
    const stolen = await steal(db, job, plan(), lease.executionId)
    const stolenAt = performance.now()
    assert.equal(stolen.outcome, 'stole')
    const err = await outcome
    assert.ok(err instanceof LeaseLost, String(err))
    assert.ok(aborted && lease.lost && lease.signal.aborted)
    assert.ok(cancelledAt - stolenAt < stale / 3 + 1500, `the body's query ran ${cancelledAt - stolenAt} ms after the steal`)
    assert.equal(err.cause?.code, '57014', 'the query was cancelled (query_canceled)')
    const r = await rowOf(db, lease.executionId)
    assert.deepEqual([r.status, r.runner_id, r.attempt, lease.finished], ['RUNNING', 'thief', 2, null])
    const { rows } = await db.query("SELECT lease_sched.lease_finish($1, $2::text::uuid, 'SUCCESS') AS ok",
      [lease.executionId, stolen.lease_token])
    assert.equal(rows[0].ok, true, "the thief's run is intact")
  })
  await client.end()
})

test('a steal is noticed through LISTEN before the next heartbeat', async () => {
  // staleTimeout 30 s: the next heartbeat is 10 s away, so a loss noticed sooner came from the
  // lease_sched_lost notification.
  const client = new Client(config())
  const job = unique('js_listen')
  let ready
  const started = new Promise((r) => { ready = r })
  const held = client.withLease(job, plan(), { staleTimeout: 30_000 }, async (lease) => {
    ready(lease)
    await new Promise((resolve) => lease.signal.addEventListener('abort', resolve))
  }).then(() => null, (e) => e)
  const lease = await started
  await withDb(async (db) => {
    await backendPid(db, `lease_sched lease ${lease.executionId}`)
    await sleep(300)
    assert.equal((await steal(db, job, plan(), lease.executionId)).outcome, 'stole')
    const ac = new AbortController()
    const timeout = sleep(8000, 'timeout', { signal: ac.signal }).catch(() => 'aborted')
    const err = await Promise.race([held, timeout])
    ac.abort()
    assert.ok(err instanceof LeaseLost, String(err))
    assert.equal(err.reason, 'notified on lease_sched_lost')
  })
  await client.end()
})

test('a holder cut off from the database (TCP cut) knows before stale_after', async () => {
  const proxy = await startProxy()
  const client = new Client(proxy.config)
  const job = unique('js_cut')
  const stale = 3000
  let id
  let lostAfter
  let dbMargin
  await withDb(async (db) => {
    const err = await client.withLease(job, plan(), { runnerId: 'holder', staleTimeout: stale }, async (lease) => {
      id = lease.executionId
      await sleep(1200) // a heartbeat or so
      proxy.stop()
      const cut = performance.now()
      if (!lease.signal.aborted) {
        await new Promise((resolve) => lease.signal.addEventListener('abort', resolve))
      }
      lostAfter = performance.now() - cut
      const { rows } = await db.query(`SELECT extract(epoch FROM stale_after - clock_timestamp())::float8 AS margin
                                         FROM lease_sched.sys_cron_executions WHERE id = $1`, [id])
      dbMargin = rows[0].margin
    }).then(() => null, (e) => e)
    assert.ok(err instanceof LeaseLost, String(err))
    assert.ok(dbMargin > 0, `lost must be known before stale_after (margin ${dbMargin} s)`)
    assert.ok(lostAfter <= stale, `lost ${lostAfter} ms after the cut`)
    const until = performance.now() + stale + 2000
    while ((await steal(db, job, plan(), id, false)).outcome !== 'stole') {
      assert.ok(performance.now() < until, 'the thief never got the abandoned lease')
      await sleep(100)
    }
    const r = await rowOf(db, id)
    assert.deepEqual([r.status, r.runner_id, r.attempt], ['RUNNING', 'thief', 2])
  })
  await client.end()
})

test('a body that ends while the heartbeat connection is still connecting finishes at once', async () => {
  // Heartbeats go to a server that accepts and never answers; claims and finishes through a
  // working pool. Ending the block must not wait for that connect (staleTimeout is 120 s).
  const hole = net.createServer(() => {})
  const held = new Set()
  hole.on('connection', (s) => held.add(s))
  await new Promise((r) => hole.listen(0, '127.0.0.1', r))
  const pool = new pg.Pool(config())
  const client = new Client({ ...config(), host: '127.0.0.1', port: hole.address().port }, { pool })
  const t0 = performance.now()
  const lease = await client.withLease(unique('js_hole'), plan(), { staleTimeout: 120_000 }, () => 'done')
  const took = performance.now() - t0
  assert.equal(lease.finished, 'SUCCESS')
  assert.ok(took < 20_000, `finished after ${took} ms`)
  for (const s of held) s.destroy()
  hole.close()
  await pool.end()
})

test('32 holders over 8 plans: each plan runs exactly once', async () => {
  const client = new Client(config(), { poolSize: 8 })
  const job = unique('js_many')
  await withDb(async (db) => {
    await db.query(`CREATE TABLE ${job}_work (plan timestamptz, holder int)`)
    const results = await Promise.allSettled(Array.from({ length: 32 }, (_, i) =>
      client.withLease(job, plan(i % 8), { runnerId: `h${i}`, staleTimeout: 2000 }, async (lease) => {
        await sleep(300 + Math.random() * 300)
        lease.check()
        await client.pool.query(`INSERT INTO ${job}_work VALUES ($1, $2)`, [plan(i % 8), i])
      })))
    const other = results.filter((r) => r.status === 'rejected' && !(r.reason instanceof Conflicted))
    assert.deepEqual(other, [])
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 8)
    const { rows } = await db.query(`SELECT count(DISTINCT plan)::int AS plans, count(*)::int AS n FROM ${job}_work`)
    assert.deepEqual(rows[0], { plans: 8, n: 8 })
    const done = await db.query(`SELECT count(*)::int AS n FROM lease_sched.sys_cron_executions
                                  WHERE job_name = $1 AND status = 'SUCCESS' AND attempt = 1`, [job])
    assert.equal(done.rows[0].n, 8)
    await db.query(`DROP TABLE ${job}_work`)
  })
  await client.end()
})

test('a result that cannot be stored still finishes the run', async () => {
  const client = new Client(config())
  const job = unique('js_unstored')
  const cyclic = {}
  cyclic.self = cyclic
  const values = [10n, cyclic, 'x'.repeat(RESULT_MAX_BYTES + 1024), 'nul \u0000 inside']
  await withDb(async (db) => {
    for (const [i, value] of values.entries()) {
      const lease = await client.withLease(job, plan(i), { staleTimeout: 3000 }, (lease) => {
        lease.result = value
        lease.rowsAffected = 7
      })
      assert.equal(lease.finished, 'SUCCESS')
      assert.ok(lease.resultError, `value ${i}`)
      const r = await rowOf(db, lease.executionId)
      assert.deepEqual([r.status, r.error_code, r.rows_affected], ['SUCCESS', null, 7])
      assert.deepEqual(Object.keys(r.result), ['result_not_stored'])
    }
    // FAILED path: the body's own error is thrown, the run finished FAILED with it.
    let id
    await assert.rejects(client.withLease(job, plan(30), (lease) => {
      id = lease.executionId
      lease.result = { total: 12n }
      throw new TypeError("the body's own error")
    }), (e) => e instanceof TypeError && e.message === "the body's own error")
    const r = await rowOf(db, id)
    assert.deepEqual([r.status, r.error_code, r.error_msg], ['FAILED', 'TypeError', "the body's own error"])
    assert.ok('result_not_stored' in r.result)
  })
  await client.end()
})

test('leader, runDue for a defined job, runtime', async () => {
  const client = new Client(config())
  const name = unique('js_leader')
  const value = await client.leader(name, { holder: 'a', ttl: 3000 }, async (leader) => {
    assert.ok(leader.fencingToken > 0n)
    await assert.rejects(client.leader(name, { holder: 'b' }, () => 'b led'),
      (e) => e instanceof NotLeader && e.state.holder === 'a')
    return 'a led'
  })
  assert.equal(value, 'a led')
  await withDb(async (db) => {
    const { rows } = await db.query('SELECT count(*)::int AS n FROM lease_sched.lock_info($1)', [name])
    assert.equal(rows[0].n, 0, 'released')

    const job = unique('js_due')
    await db.query("SELECT lease_sched.job_define($1, every => '1 day', stale_timeout => '20 seconds', max_attempts => 2)", [job])
    let calls = 0
    const fn = async (lease) => {
      calls += 1
      const conn = await lease.connection()
      const { rows } = await conn.query('SELECT 12.5::float8 AS total')
      return { total: rows[0].total }
    }
    const first = await client.runDue(job, fn)
    assert.equal(first.outcome, 'success')
    assert.deepEqual(first.value, { total: 12.5 })
    const settings = await db.query(`SELECT extract(epoch FROM stale_after - started_at)::float8 AS stale, max_attempts
                                       FROM lease_sched.sys_cron_executions WHERE id = $1`, [first.claim.executionId])
    assert.ok(Math.abs(settings.rows[0].stale - 20) < 1, 'claimed with the definition\'s stale_timeout')
    assert.equal(settings.rows[0].max_attempts, 2)
    // daily slots: the same slot unless the two calls straddle midnight UTC
    const again = await client.runDue(job, fn)
    assert.ok(again.outcome === 'nothing_due' || again.planTime.getTime() !== first.planTime.getTime(), again.outcome)
    assert.equal(calls, again.outcome === 'nothing_due' ? 1 : 2)
    const r = await rowOf(db, first.claim.executionId)
    assert.deepEqual([r.status, r.result], ['SUCCESS', { total: 12.5 }])
  })

  const rt = await client.runtime(unique('js_rt'), { every: 200 })
  const until = performance.now() + 5000
  while (rt.touches < 3 && performance.now() < until) await sleep(50)
  await rt.stop()
  const touched = rt.touches
  assert.ok(touched >= 3, `${touched} touches`)
  await sleep(500)
  assert.equal(rt.touches, touched, 'stopped cleanly')
  await client.end()
})
