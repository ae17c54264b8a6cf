// lease-sched: the Node client of the lease_sched PostgreSQL extension, a lease you can't hold
// wrong (docs/clients.md). Built on node-postgres (pg); ESM; types in index.d.ts.
//
// Every held lease or lock heartbeats in the background on a connection of its own
// (application_name "lease_sched lease <execution_id>" / "lease_sched lock <name>"), every
// TTL/3, LISTENing on lease_sched_lost. It is lost at the first of: a heartbeat returns false;
// a notification names it; the local deadline passes (the monotonic instant the last
// acknowledged heartbeat, or the claim, was sent + TTL - margin, margin = min(TTL/10, 1 s)),
// whether or not the database can be reached. On loss `lease.signal` aborts and the query on
// `lease.connection()` is cancelled; after loss nothing is written. Without loss the end of
// the body finishes exactly once.
import net from 'node:net'
import os from 'node:os'
import { performance } from 'node:perf_hooks'
import pg from 'pg'

/** The channel the extension notifies on a steal (payload: execution id) or a lock takeover
 * (payload `lock:<name>`). */
export const LOST_CHANNEL = 'lease_sched_lost'

/** What lease_finish stores at most as a result (bytes of JSON as jsonb prints it). */
export const RESULT_MAX_BYTES = 16 * 1024

const UNDEFINED_FUNCTION = '42883'

export class LeaseSchedError extends Error {
  constructor(message, options) {
    super(message, options)
    this.name = new.target.name
  }
}

/** Someone else holds the plan (or it is finished, backing off, out of attempts). */
export class Conflicted extends LeaseSchedError {
  constructor(claim, message) {
    super(message)
    this.claim = claim
  }
}

/** The lock is held by a live holder (`state.holder`, until `state.expiresAt`). */
export class NotLeader extends Conflicted {
  constructor(state, message) {
    super(state, message)
    this.state = state
  }
}

/** The lease (or lock) is no longer ours: nothing was written after that. `cause` is the
 * body's own error, when it threw one. */
export class LeaseLost extends LeaseSchedError {
  constructor(message, reason, cause) {
    super(message, cause === undefined ? undefined : { cause })
    this.reason = reason
  }
}

/** lease_fence / lock_fence does not exist in this database (an older lease_sched). */
export class FenceUnavailable extends LeaseSchedError {}

function fenceUnavailable(what) {
  return new FenceUnavailable(
    `lease_sched.${what} does not exist in this database: the installed lease_sched is older than ` +
      'the fencing API (ALTER EXTENSION lease_sched UPDATE after installing a newer version)')
}

const interval = (ms) => `${Math.round(ms * 1000)} microseconds`

function checkTiming(ttl, margin) {
  if (!(typeof ttl === 'number' && Number.isFinite(ttl) && ttl > 0)) {
    throw new RangeError('staleTimeout / ttl must be a positive number of milliseconds')
  }
  const m = margin ?? Math.min(ttl / 10, 1000)
  if (!(m >= 0 && m < (ttl * 2) / 3)) {
    throw new RangeError('margin must be >= 0 and below two thirds of staleTimeout / ttl')
  }
  return m
}

/** application_name of a heartbeat connection (at most 63 bytes, PostgreSQL's limit). */
function appName(kind, key) {
  let s = `lease_sched ${kind} ${key}`
  while (Buffer.byteLength(s) > 63) s = s.slice(0, -1)
  return s
}

/** The result stored instead of one that cannot be stored: `{"result_not_stored": why}`. */
function unstoredResult(why) {
  return JSON.stringify({ result_not_stored: String(why).slice(0, 1000) })
}

/** [jsonText, null], or [substitute, why] when the value is not JSON (a BigInt, a cycle) or
 * over RESULT_MAX_BYTES. Called while the heartbeat still runs. */
function encodeResult(value) {
  if (value === undefined || value === null) return [null, null]
  let text
  try {
    text = JSON.stringify(value)
  } catch (e) {
    const why = `result is not JSON: ${e?.name ?? 'Error'}: ${e?.message ?? e}`
    return [unstoredResult(why), why]
  }
  if (text === undefined) {
    const why = `result is not JSON: ${typeof value}`
    return [unstoredResult(why), why]
  }
  const size = Buffer.byteLength(text)
  if (size > RESULT_MAX_BYTES) {
    const why = `result is ${size} bytes of JSON, over the ${RESULT_MAX_BYTES} bytes lease_finish stores`
    return [unstoredResult(why), why]
  }
  return [text, null]
}

/** A refused result (22001 too large, or another data exception of the JSON input). */
const refusedResult = (e) => typeof e?.code === 'string' && e.code.startsWith('22')

function errorCodeOf(e) {
  if (typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code) && e.severity) return e.code
  return e?.name || e?.constructor?.name || 'Error'
}

function errorMsgOf(e) {
  const m = e?.message ?? String(e)
  return m || errorCodeOf(e)
}

/** Sends PostgreSQL's CancelRequest for the query running on `client` (what libpq's
 * PQcancel does): the running statement ends with 57014, the connection stays usable. */
function cancelQuery(client) {
  return new Promise((resolve) => {
    if (!client || client.processID == null || client.secretKey == null) return resolve()
    const p = client.connectionParameters
    const sock = p.host && p.host.startsWith('/')
      ? net.connect(`${p.host}/.s.PGSQL.${p.port}`)
      : net.connect(p.port, p.host || 'localhost')
    const done = () => { sock.destroy(); resolve() }
    sock.setTimeout(5000, done)
    sock.on('error', done)
    sock.on('close', done)
    sock.on('connect', () => {
      const buf = Buffer.alloc(16)
      buf.writeInt32BE(16, 0)
      buf.writeInt32BE(80877102, 4)
      buf.writeInt32BE(client.processID, 8)
      buf.writeInt32BE(client.secretKey, 12)
      sock.end(buf)
    })
  })
}

export function defaultRunnerId() {
  return `${os.hostname()}:${process.pid}`
}

const CLAIM_SQL = `SELECT outcome, execution_id::text, lease_token::text, attempt, fencing_token::text, stale_after
  FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3,
       scope_kind => $4, scope_id => $5, stale_timeout => $6::text::interval, max_attempts => $7,
       allow_stale_reentry => $8)`
const HEARTBEAT_SQL = 'SELECT lease_sched.lease_heartbeat(execution_id => $1::text::uuid, lease_token => $2::text::uuid) AS ok'
const FINISH_SQL = `SELECT lease_sched.lease_finish(execution_id => $1::text::uuid, lease_token => $2::text::uuid,
       status => $3, result => $4::text::jsonb, rows_affected => $5, error_code => $6, error_msg => $7,
       retry_in => $8::text::interval) AS ok`
const LOCK_ACQUIRE_SQL = `SELECT acquired, lock_token::text, fencing_token::text, holder, expires_at
  FROM lease_sched.lock_acquire(lock_name => $1, holder => $2, ttl => $3::text::interval)`
const LOCK_HEARTBEAT_SQL = 'SELECT lease_sched.lock_heartbeat(lock_name => $1, lock_token => $2::text::uuid) AS ok'
const LOCK_RELEASE_SQL = 'SELECT lease_sched.lock_release(lock_name => $1, lock_token => $2::text::uuid) AS ok'

function claimOf(r) {
  return {
    outcome: r.outcome,
    executionId: r.execution_id,
    attempt: r.attempt,
    fencingToken: r.fencing_token == null ? null : BigInt(r.fencing_token),
    staleAfter: r.stale_after,
  }
}

/**
 * Entry point. `new Client(config)` (a connection string or a pg.ClientConfig) keeps a
 * pg.Pool for claims and finishes; `new Client(config, { pool })` uses yours. Heartbeats
 * always run on dedicated connections built from `config`.
 */
export class Client {
  constructor(config = {}, options = {}) {
    this._config = typeof config === 'string' ? { connectionString: config } : { ...config }
    this.runnerId = options.runnerId ?? defaultRunnerId()
    if (options.pool) {
      this.pool = options.pool
      this._ownPool = false
    } else {
      this.pool = new pg.Pool({ ...this._config, max: options.poolSize ?? 4 })
      // An idle pooled connection that breaks must not crash the process.
      this.pool.on('error', () => {})
      this._ownPool = true
    }
  }

  /** A new dedicated connection (never from the pool); `.end()` it when done. */
  async connect(extra = {}) {
    const c = new pg.Client({ ...this._config, ...extra })
    c.on('error', () => {})
    await c.connect()
    return c
  }

  /** Opens a heartbeat connection (named and LISTENing once a keeper adopts it). */
  _openBeat(interval) {
    const conn = new pg.Client({
      ...this._config,
      application_name: 'lease_sched heartbeat',
      connectionTimeoutMillis: Math.max(1000, Math.round(interval)),
      keepAlive: true,
      keepAliveInitialDelayMillis: Math.max(1000, Math.round(interval)),
    })
    const broken = () => { conn._leaseBroken = true; conn._onBroken?.() }
    conn.on('error', broken)
    conn.on('end', broken)
    const pending = conn.connect().then(() => conn, (e) => {
      conn.end().catch(() => {})
      throw e
    })
    pending.client = conn
    pending.catch(() => {}) // whoever adopts it sees the error; nobody else must crash on it
    return pending
  }

  /** Closes the pool this client created. */
  async end() {
    if (this._ownPool) await this.pool.end()
  }

  /** The bare claim row, for callers that manage the lease themselves (no lease_token). */
  async tryClaim(jobName, planTime, opts = {}) {
    const { claim } = await this._claim(jobName, planTime, this._leaseOpts(opts))
    return claim
  }

  _leaseOpts(opts) {
    return {
      runnerId: opts.runnerId ?? this.runnerId,
      staleTimeout: opts.staleTimeout ?? 5 * 60_000,
      scopeKind: opts.scopeKind ?? 'global',
      scopeId: opts.scopeId ?? '',
      maxAttempts: opts.maxAttempts ?? 3,
      allowStaleReentry: opts.allowStaleReentry ?? true,
      margin: opts.margin,
    }
  }

  async _claim(jobName, planTime, o) {
    const { rows } = await this.pool.query(CLAIM_SQL, [jobName, planTime, o.runnerId, o.scopeKind,
      o.scopeId, interval(o.staleTimeout), o.maxAttempts, o.allowStaleReentry])
    return { claim: claimOf(rows[0]), leaseToken: rows[0].lease_token }
  }

  /**
   * Claims (jobName, planTime), runs `fn(lease)` while heartbeating in the background and
   * finishes exactly once: SUCCESS with `lease.result`, or FAILED when fn throws (the error is
   * thrown again). Throws Conflicted when the plan is not ours, LeaseLost after a loss.
   */
  async withLease(jobName, planTime, opts, fn) {
    if (typeof opts === 'function') [opts, fn] = [{}, opts]
    const o = this._leaseOpts(opts ?? {})
    const margin = checkTiming(o.staleTimeout, o.margin)
    const started = performance.now()
    const beat = this._openBeat(o.staleTimeout / 3)
    const drop = () => beat.client.end().catch(() => {})
    let claim, leaseToken
    try {
      ({ claim, leaseToken } = await this._claim(jobName, planTime, o))
    } catch (e) {
      drop()
      throw e
    }
    if (claim.outcome !== 'won' && claim.outcome !== 'stole') {
      drop()
      throw new Conflicted(claim, `${jobName} @ ${planTime}: ${claim.outcome} ` +
        `(execution ${claim.executionId}, attempt ${claim.attempt})`)
    }
    const lease = new Lease(this, jobName, planTime, claim, leaseToken, opts?.cancelOnLoss ?? true)
    lease._keeper = new Keeper(this, appName('lease', claim.executionId), HEARTBEAT_SQL,
      [claim.executionId, leaseToken], claim.executionId, o.staleTimeout, margin, started,
      (reason) => lease._onLost(reason), beat)
    lease._keeper.start()
    let failed = false
    let bodyError
    try {
      const value = await fn(lease)
      if (lease.result === undefined) lease.result = value
    } catch (e) {
      failed = true
      bodyError = e
    }
    await lease._exit(failed, bodyError)
    if (failed) throw bodyError
    return lease
  }

  /** The plan a runner should claim now (lease_next_plan), or null. `every` in ms; leave it
   * out for a defined job (its definition's). */
  async nextPlan(jobName, opts = {}) {
    const { rows } = await this.pool.query(
      `SELECT lease_sched.lease_next_plan(job_name => $1, every => $2::text::interval, scope_kind => $3,
              scope_id => $4, catch_up => $5) AS plan`,
      [jobName, opts.every == null ? null : interval(opts.every), opts.scopeKind ?? 'global',
        opts.scopeId ?? '', opts.catchUp ?? true])
    return rows[0].plan
  }

  /** A job's definition (job_define), or null. Durations in ms. */
  async definition(jobName, opts = {}) {
    const { rows } = await this.pool.query(
      `SELECT extract(epoch FROM every)::float8 * 1000 AS every, misfire,
              extract(epoch FROM stale_timeout)::float8 * 1000 AS stale_timeout, max_attempts, paused
         FROM lease_sched.job_definition(job_name => $1, scope_kind => $2, scope_id => $3)`,
      [jobName, opts.scopeKind ?? 'global', opts.scopeId ?? ''])
    if (rows.length === 0) return null
    const r = rows[0]
    return { every: r.every, misfire: r.misfire, staleTimeout: r.stale_timeout, maxAttempts: r.max_attempts, paused: r.paused }
  }

  /**
   * One turn of a runner loop: lease_next_plan, claim, `fn(lease)`, finish. fn's return value
   * becomes the run's result (unless it set `lease.result`). For a defined job, `every`,
   * `staleTimeout` and `maxAttempts` default to the definition's.
   */
  async runDue(jobName, opts, fn) {
    if (typeof opts === 'function') [opts, fn] = [{}, opts]
    opts = { ...(opts ?? {}) }
    if (opts.staleTimeout == null || opts.maxAttempts == null) {
      const def = await this.definition(jobName, opts)
      if (def) {
        opts.staleTimeout ??= def.staleTimeout
        opts.maxAttempts ??= def.maxAttempts
      }
    }
    const plan = await this.nextPlan(jobName, opts)
    if (plan == null) return { outcome: 'nothing_due', planTime: null, claim: null, value: undefined }
    let value
    try {
      const lease = await this.withLease(jobName, plan, opts, async (l) => {
        value = await fn(l)
        return value
      })
      return { outcome: 'success', planTime: plan, claim: lease.claim, value }
    } catch (e) {
      if (e instanceof Conflicted) return { outcome: 'conflicted', planTime: plan, claim: e.claim, value: undefined }
      throw e
    }
  }

  /**
   * Acquires the lock `name` (NotLeader while someone else holds it), runs `fn(leader)` while
   * heartbeating it with its secret lock_token, and releases it at the end (not after a loss).
   */
  async leader(name, opts, fn) {
    if (typeof opts === 'function') [opts, fn] = [{}, opts]
    opts = opts ?? {}
    const holder = opts.holder ?? this.runnerId
    const ttl = opts.ttl ?? 60_000
    const margin = checkTiming(ttl, opts.margin)
    const started = performance.now()
    const beat = this._openBeat(ttl / 3)
    const drop = () => beat.client.end().catch(() => {})
    let rows
    try {
      ({ rows } = await this.pool.query(LOCK_ACQUIRE_SQL, [name, holder, interval(ttl)]))
    } catch (e) {
      drop()
      throw e
    }
    const r = rows[0]
    const state = {
      acquired: r.acquired,
      fencingToken: r.fencing_token == null ? null : BigInt(r.fencing_token),
      holder: r.holder,
      expiresAt: r.expires_at,
    }
    if (!state.acquired) drop()
    if (!state.acquired) throw new NotLeader(state, `lock ${name} is held by ${state.holder} until ${state.expiresAt?.toISOString?.()}`)
    const leader = new Leader(this, name, state, r.lock_token, opts.cancelOnLoss ?? true)
    leader._keeper = new Keeper(this, appName('lock', name), LOCK_HEARTBEAT_SQL, [name, r.lock_token],
      `lock:${name}`, ttl, margin, started, (reason) => leader._onLost(reason), beat)
    leader._keeper.start()
    let failed = false
    let bodyError
    let value
    try {
      value = await fn(leader)
    } catch (e) {
      failed = true
      bodyError = e
    }
    await leader._exit(failed, bodyError)
    if (failed) throw bodyError
    return value
  }

  /** Registers a runtime and touches it every `every` ms (default 15 s) until `stop()`. */
  async runtime(name, opts = {}) {
    const rt = new Runtime(this, name, opts.metadata ?? {}, opts.every ?? 15_000)
    await rt._start()
    return rt
  }
}

/** Heartbeats one lease or lock on its own connection, LISTENs, keeps the local deadline. */
class Keeper {
  constructor(client, app, sql, args, payload, ttl, margin, started, onLost, pre) {
    Object.assign(this, { client, app, sql, args, payload, ttl, margin, onLost })
    // The heartbeat connection, opened while the claim ran: a connect must not eat into the
    // first deadline (stale_timeout - margin after the claim was sent).
    this._pre = pre ?? null
    this.interval = ttl / 3
    this.deadline = started + ttl - margin
    this.lost = false
    this.reason = ''
    this.beats = 0
    this.stopped = false
    this._conn = null
    this._wake = null
    this._loop = null
    // What stop() and a loss call to end every wait of the loop (_bounded) at once, so that
    // stopping never waits for a connect or a query that does not settle (pg's connect()
    // does not, once end() was called while it was connecting).
    this._onHalt = new Set()
  }

  _halt() {
    for (const f of [...this._onHalt]) f()
  }

  start() {
    this._armWatchdog()
    this._loop = this._beatLoop()
  }

  _armWatchdog() {
    clearTimeout(this._watchdog)
    if (this.stopped) return
    const wait = this.deadline - performance.now()
    if (wait <= 0) return this._lose('local deadline passed without an acknowledged heartbeat')
    this._watchdog = setTimeout(() => this._armWatchdog(), wait)
  }

  _lose(reason) {
    if (this.stopped || this.lost) return
    this.lost = true
    this.reason = reason
    this.stopped = true
    clearTimeout(this._watchdog)
    this._wake?.()
    this._halt()
    try {
      this.onLost(reason)
    } catch {
      // a failing cancel must not kill the keeper
    }
  }

  /** Stops the keeper and waits for its loop; resolves to whether the lease was lost. */
  async stop() {
    this.stopped = true
    clearTimeout(this._watchdog)
    this._wake?.()
    this._halt()
    // Closing the connection ends a heartbeat or a reconnect in flight at once (the loop must
    // not hold the finish up until the deadline during a network partition).
    this._close()
    await this._loop
    return this.lost
  }

  /** Sleeps until `ms` passed, the connection broke, or the keeper is stopped / lost. */
  _sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t)
        this._wake = null
        resolve()
      }
      const t = setTimeout(done, Math.max(0, ms))
      this._wake = done
    })
  }

  /** Adopts the connection opened while claiming (or opens one), names it and LISTENs. */
  async _connect() {
    const pending = this._pre ?? this.client._openBeat(this.interval)
    this._pre = null
    let conn
    try {
      conn = await this._bounded(pending)
    } catch (e) {
      pending.client?.end().catch(() => {}) // ends a connect in flight (its socket)
      pending.then((c) => c.end().catch(() => {}), () => {})
      throw e
    }
    conn._onBroken = () => this._wake?.()
    conn.on('notification', (n) => {
      if (n.channel === LOST_CHANNEL && n.payload === this.payload) this._lose('notified on lease_sched_lost')
    })
    this._conn = conn
    if (this.stopped) throw new Error('keeper stopped')
    await this._bounded(conn.query(`SET application_name = ${conn.escapeLiteral(this.app)}; LISTEN ${LOST_CHANNEL}`))
    return conn
  }

  /** A call bounded by the local deadline (the watchdog declares the loss; this only frees
   * the loop from a call that never returns) and by stop(). */
  _bounded(promise) {
    return new Promise((resolve, reject) => {
      const finish = (settle, value) => {
        clearTimeout(t)
        this._onHalt.delete(onHalt)
        settle(value)
      }
      const onHalt = () => finish(reject, new Error('keeper stopped'))
      const t = setTimeout(() => finish(reject, new Error('heartbeat timed out')),
        Math.max(0, this.deadline - performance.now()))
      if (this.stopped) return onHalt()
      this._onHalt.add(onHalt)
      promise.then((v) => finish(resolve, v), (e) => finish(reject, e))
    })
  }

  _close() {
    const c = this._conn
    this._conn = null
    if (c) c.end().catch(() => {})
  }

  async _beatLoop() {
    let next = performance.now() + this.interval
    try {
      while (!this.stopped) {
        try {
          if (!this._conn || this._conn._leaseBroken) {
            const reconnect = this._conn !== null
            this._close()
            await this._connect()
            // A heartbeat connection that broke is reopened and the heartbeat sent at once.
            if (reconnect) next = performance.now()
            continue
          }
          const wait = next - performance.now()
          if (wait > 0) {
            // Notifications arrive through the 'notification' event meanwhile.
            await this._sleep(wait)
            continue
          }
          const sent = performance.now()
          const { rows } = await this._bounded(this._conn.query(this.sql, this.args))
          if (this.stopped) return
          if (!rows[0]?.ok) return this._lose('heartbeat returned false: someone else holds it now')
          this.beats += 1
          this.deadline = Math.max(this.deadline, sent + this.ttl - this.margin)
          this._armWatchdog()
          next = sent + this.interval
        } catch {
          // The connection failed: reconnect (after a short pause) and send the heartbeat.
          this._close()
          if (!this.stopped) await this._sleep(Math.min(this.interval, 300))
          next = performance.now()
        }
      }
    } finally {
      this._close()
    }
  }
}

class Held {
  constructor(client, cancelOnLoss) {
    this._client = client
    this._cancelOnLoss = cancelOnLoss
    this._abort = new AbortController()
    this._bodyConns = []
    this._keeper = null
  }

  /** Aborted the moment the lease (lock) is lost: pass it to fetch(), timers, your own work. */
  get signal() { return this._abort.signal }
  /** Whether it is lost (final). */
  get lost() { return this._keeper?.lost ?? false }
  /** How it was lost ('' while held). */
  get lostReason() { return this._keeper?.reason ?? '' }
  /** Heartbeats acknowledged so far. */
  get heartbeats() { return this._keeper?.beats ?? 0 }

  /** Throws LeaseLost once lost. */
  check() {
    if (this.lost) throw new LeaseLost(`${this._what} was lost (${this.lostReason})`, this.lostReason)
  }

  /** A dedicated connection for the body's work, closed when the block ends; with
   * cancelOnLoss (the default) its running query is cancelled the moment the lease is lost. */
  async connection() {
    this.check()
    const c = await this._client.connect()
    this._bodyConns.push(c)
    return c
  }

  _onLost(reason) {
    this._abort.abort(new LeaseLost(`${this._what} was lost (${reason})`, reason))
    if (this._cancelOnLoss) for (const c of this._bodyConns) cancelQuery(c)
  }

  async _closeBodyConns() {
    const conns = this._bodyConns
    this._bodyConns = []
    await Promise.all(conns.map((c) => c.end().catch(() => {})))
  }

  _lostError(failed, bodyError) {
    const reason = this.lostReason
    return new LeaseLost(`${this._what} was lost (${reason}); nothing was finished`, reason,
      failed ? bodyError : undefined)
  }
}

/** A held lease, handed to the body of `withLease`. Set `result`, `rowsAffected` and, for a
 * FAILED finish, `retryIn` (ms). */
export class Lease extends Held {
  constructor(client, jobName, planTime, claim, leaseToken, cancelOnLoss) {
    super(client, cancelOnLoss)
    this.jobName = jobName
    this.planTime = planTime
    this.claim = claim
    Object.defineProperty(this, '_leaseToken', { value: leaseToken, enumerable: false })
    this.result = undefined
    this.rowsAffected = null
    this.retryIn = null
    this.finished = null
    this.resultError = null
    this._what = `lease on ${jobName} @ ${planTime instanceof Date ? planTime.toISOString() : planTime}`
  }

  get executionId() { return this.claim.executionId }
  get fencingToken() { return this.claim.fencingToken }
  get attempt() { return this.claim.attempt }
  get outcome() { return this.claim.outcome }

  /** lease_sched.lease_fence(execution_id, fencing_token) in `conn`'s current transaction. */
  async fence(conn) {
    try {
      await conn.query('SELECT lease_sched.lease_fence($1::text::uuid, $2::text::bigint)',
        [this.executionId, String(this.fencingToken)])
    } catch (e) {
      if (e?.code === UNDEFINED_FUNCTION) throw fenceUnavailable('lease_fence')
      throw e
    }
  }

  async _exit(failed, bodyError) {
    // Encode while the heartbeat still runs: a result that cannot be stored is replaced,
    // never a reason to leave the run unfinished (it would run again after stale_timeout).
    const [result, why] = encodeResult(this.result)
    this.resultError = why
    const lost = await this._keeper.stop()
    await this._closeBodyConns()
    if (lost) throw this._lostError(failed, bodyError)
    const status = failed ? 'FAILED' : 'SUCCESS'
    const finish = async (res) => {
      const { rows } = await this._client.pool.query(FINISH_SQL, [this.executionId, this._leaseToken, status,
        res, this.rowsAffected, failed ? errorCodeOf(bodyError) : null, failed ? errorMsgOf(bodyError) : null,
        failed && this.retryIn != null ? interval(this.retryIn) : null])
      return rows[0].ok
    }
    let ok
    try {
      try {
        ok = await finish(result)
      } catch (e) {
        if (result == null || !refusedResult(e)) throw e
        // Refused by the database (over 16 KiB as jsonb prints it, or not valid jsonb): the
        // lease is still RUNNING; finish it with the substitute.
        this.resultError = `lease_finish refused the result: ${e.code}: ${e.message}`
        ok = await finish(unstoredResult(this.resultError))
      }
    } catch (e) {
      if (!failed) throw e
      return // the body's own error is thrown by the caller
    }
    if (!ok) {
      if (failed) return
      throw new LeaseLost(`${this._what} was lost before its finish (finish returned false)`, 'finish returned false')
    }
    this.finished = status
  }
}

/** A held named lock (leader election), handed to the body of `leader`. */
export class Leader extends Held {
  constructor(client, name, state, lockToken, cancelOnLoss) {
    super(client, cancelOnLoss)
    this.name = name
    this.state = state
    Object.defineProperty(this, '_lockToken', { value: lockToken, enumerable: false })
    this.released = false
    this._what = `lock ${name}`
  }

  get fencingToken() { return this.state.fencingToken }

  /** lease_sched.lock_fence(lock_name, fencing_token) in `conn`'s current transaction. */
  async fence(conn) {
    try {
      await conn.query('SELECT lease_sched.lock_fence($1, $2::text::bigint)', [this.name, String(this.fencingToken)])
    } catch (e) {
      if (e?.code === UNDEFINED_FUNCTION) throw fenceUnavailable('lock_fence')
      throw e
    }
  }

  async _exit(failed, bodyError) {
    const lost = await this._keeper.stop()
    await this._closeBodyConns()
    if (lost) throw this._lostError(failed, bodyError)
    let ok
    try {
      const { rows } = await this._client.pool.query(LOCK_RELEASE_SQL, [this.name, this._lockToken])
      ok = rows[0].ok
    } catch (e) {
      if (!failed) throw e
      return
    }
    if (ok) this.released = true
    else if (!failed) throw new LeaseLost(`${this._what} was lost before its release`, 'release returned false')
  }
}

/** A registered runtime, touched every `every` ms in the background until `stop()`. */
export class Runtime {
  constructor(client, name, metadata, every) {
    Object.assign(this, { _client: client, name, metadata, every })
    this.id = null
    this.touches = 0
    this.lastError = null
    this._timer = null
    this._inflight = null
  }

  async _start() {
    const { rows } = await this._client.pool.query('SELECT lease_sched.runtime_register($1, $2::text::jsonb)::text AS id',
      [this.name, JSON.stringify(this.metadata)])
    this.id = rows[0].id
    const tick = () => {
      this._inflight = this._client.pool.query('SELECT lease_sched.runtime_touch($1::text::uuid)', [this.id])
        .then(() => { this.touches += 1 }, (e) => { this.lastError = e })
        .finally(() => {
          this._inflight = null
          if (this._timer) this._timer = setTimeout(tick, this.every)
        })
    }
    this._timer = setTimeout(tick, this.every)
  }

  /** Stops touching (and waits for a touch in flight). */
  async stop() {
    clearTimeout(this._timer)
    this._timer = null
    await this._inflight
  }
}

export default Client
