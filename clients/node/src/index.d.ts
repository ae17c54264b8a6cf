// Type declarations of lease-sched (src/index.js). Durations are milliseconds.
import type { ClientConfig, Pool, Client as PgClient } from 'pg'

/** The channel the extension notifies on a steal (payload: execution id) or a lock takeover
 * (payload `lock:<name>`). */
export declare const LOST_CHANNEL: 'lease_sched_lost'
/** What lease_finish stores at most as a result (bytes of JSON as jsonb prints it). */
export declare const RESULT_MAX_BYTES: number

/** The row lease_try_claim returned (never its secret lease_token). */
export interface Claim {
  outcome: 'won' | 'stole' | 'conflicted' | string
  executionId: string | null
  attempt: number | null
  fencingToken: bigint | null
  staleAfter: Date | null
}

/** The row lock_acquire returned (never its secret lock_token). */
export interface LockState {
  acquired: boolean
  fencingToken: bigint | null
  holder: string | null
  expiresAt: Date | null
}

export declare class LeaseSchedError extends Error {}
/** Someone else holds the plan (or it is finished, backing off, out of attempts). */
export declare class Conflicted extends LeaseSchedError {
  readonly claim: Claim | LockState
}
/** The lock is held by a live holder. */
export declare class NotLeader extends Conflicted {
  readonly state: LockState
}
/** The lease (lock) is no longer ours; nothing was written after that. `cause`: the body's
 * own error, when it threw one. */
export declare class LeaseLost extends LeaseSchedError {
  readonly reason: string
  readonly cause?: unknown
}
/** lease_fence / lock_fence does not exist in this database (an older lease_sched). */
export declare class FenceUnavailable extends LeaseSchedError {}

export interface ClientOptions {
  /** Names this process in the runs it claims; default `<hostname>:<pid>`. */
  runnerId?: string
  /** Claims and finishes through this pool (else the client creates one from `config`). */
  pool?: Pool
  /** Size of the pool the client creates (default 4). */
  poolSize?: number
}

export interface LeaseOptions {
  runnerId?: string
  /** ms; default 5 minutes. */
  staleTimeout?: number
  scopeKind?: string
  scopeId?: string
  maxAttempts?: number
  allowStaleReentry?: boolean
  /** Cancel the query running on `lease.connection()` the moment the lease is lost (default true). */
  cancelOnLoss?: boolean
  /** ms the holder gives up before the database may call the lease stale; default min(staleTimeout/10, 1 s). */
  margin?: number
}

export interface LeaderOptions {
  holder?: string
  /** ms; default 60 s. */
  ttl?: number
  cancelOnLoss?: boolean
  margin?: number
}

export interface PlanOptions {
  /** ms; leave it out for a job with a definition (job_define). */
  every?: number
  scopeKind?: string
  scopeId?: string
  catchUp?: boolean
}

export interface JobDefinition {
  every: number
  misfire: string
  staleTimeout: number
  maxAttempts: number
  paused: boolean
}

export interface DueRun<T> {
  outcome: 'nothing_due' | 'conflicted' | 'success'
  planTime: Date | null
  claim: Claim | null
  value: T | undefined
}

declare abstract class Held {
  /** Aborted the moment it is lost (reason: a LeaseLost): pass it to fetch(), timers, your work. */
  readonly signal: AbortSignal
  /** Whether it is lost (final). */
  readonly lost: boolean
  /** How it was lost ('' while held). */
  readonly lostReason: string
  /** Heartbeats acknowledged so far. */
  readonly heartbeats: number
  /** Throws LeaseLost once lost. */
  check(): void
  /** A dedicated connection for the body's work, closed when the body ends; its running query
   * is cancelled on loss (cancelOnLoss, the default). */
  connection(): Promise<PgClient>
}

/** A held lease, handed to the body of `withLease` / `runDue`. */
export declare class Lease extends Held {
  readonly jobName: string
  readonly planTime: Date
  readonly claim: Claim
  readonly executionId: string
  readonly fencingToken: bigint
  readonly attempt: number
  readonly outcome: string
  /** Stored as the run's result (any JSON-able value; one that cannot be stored is replaced by
   * `{"result_not_stored": why}` and the run still finishes). */
  result: unknown
  rowsAffected: number | null
  /** ms before a FAILED run may be retried (default: the extension's backoff). */
  retryIn: number | null
  /** 'SUCCESS' or 'FAILED' once the finish was written. */
  readonly finished: 'SUCCESS' | 'FAILED' | null
  /** Why `result` was not stored, or null. */
  readonly resultError: string | null
  /** lease_sched.lease_fence(execution_id, fencing_token) in `conn`'s current transaction. */
  fence(conn: PgClient): Promise<void>
}

/** A held named lock (leader election), handed to the body of `leader`. */
export declare class Leader extends Held {
  readonly name: string
  readonly state: LockState
  readonly fencingToken: bigint
  readonly released: boolean
  /** lease_sched.lock_fence(lock_name, fencing_token) in `conn`'s current transaction. */
  fence(conn: PgClient): Promise<void>
}

/** A registered runtime, touched in the background until `stop()`. */
export declare class Runtime {
  readonly id: string
  readonly name: string
  readonly touches: number
  readonly lastError: unknown
  stop(): Promise<void>
}

export declare function defaultRunnerId(): string

export declare class Client {
  constructor(config?: string | ClientConfig, options?: ClientOptions)
  readonly runnerId: string
  readonly pool: Pool
  /** A new dedicated connection (never from the pool); `.end()` it when done. */
  connect(extra?: ClientConfig): Promise<PgClient>
  /** Closes the pool this client created. */
  end(): Promise<void>
  tryClaim(jobName: string, planTime: Date, opts?: LeaseOptions): Promise<Claim>
  /** Claims, runs `fn` while heartbeating, finishes exactly once; resolves to the lease. */
  withLease(jobName: string, planTime: Date, fn: (lease: Lease) => unknown): Promise<Lease>
  withLease(jobName: string, planTime: Date, opts: LeaseOptions, fn: (lease: Lease) => unknown): Promise<Lease>
  nextPlan(jobName: string, opts?: PlanOptions): Promise<Date | null>
  definition(jobName: string, opts?: { scopeKind?: string; scopeId?: string }): Promise<JobDefinition | null>
  runDue<T>(jobName: string, fn: (lease: Lease) => T | Promise<T>): Promise<DueRun<T>>
  runDue<T>(jobName: string, opts: PlanOptions & LeaseOptions, fn: (lease: Lease) => T | Promise<T>): Promise<DueRun<T>>
  leader<T>(name: string, fn: (leader: Leader) => T | Promise<T>): Promise<T>
  leader<T>(name: string, opts: LeaderOptions, fn: (leader: Leader) => T | Promise<T>): Promise<T>
  runtime(name: string, opts?: { metadata?: Record<string, unknown>; every?: number }): Promise<Runtime>
}

export default Client
