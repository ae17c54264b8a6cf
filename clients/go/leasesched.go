// Package leasesched is the Go client of the lease_sched PostgreSQL extension: a lease you
// can't hold wrong.
//
// It is written against database/sql, so it works with any PostgreSQL driver (pgx v4's and
// v5's stdlib adapters, lib/pq). Every held lease or lock heartbeats in the background on a
// connection of its own (application_name "lease_sched lease <execution_id>" /
// "lease_sched lock <name>"), every TTL/3, and the work's context.Context is cancelled the
// moment the lease is lost:
//   - a heartbeat returns false (the plan was stolen, or the sweeper failed it);
//   - a notification on channel lease_sched_lost names it (LISTEN, where the driver allows:
//     pgx v4 and v5 out of the box, others through Options.WaitForNotification);
//   - the local deadline passes: the monotonic instant the last acknowledged heartbeat (or the
//     claim) was sent + TTL - margin (min(TTL/10, 1 s)), whether or not the database can be
//     reached.
//
// After loss nothing is written. Without loss the end of WithLease finishes the run exactly
// once: SUCCESS with Lease.Result, or FAILED with the body's error. A result that cannot be
// stored (not JSON, over 16 KiB) does not leave the run RUNNING: it is replaced by
// {"result_not_stored": "<why>"} and the run finishes all the same.
package leasesched

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"
	"time"
	"unicode/utf8"
)

// LostChannel is the channel the extension notifies when a lease is stolen or failed by the
// sweeper (payload: the execution id) or a lock is taken over (payload "lock:<name>").
const LostChannel = "lease_sched_lost"

// ResultMaxBytes is the most lease_finish stores as a result (bytes of JSON as jsonb prints
// it); a larger result is refused with SQLSTATE 22001.
const ResultMaxBytes = 16 * 1024

// WaitFunc waits on conn (which has run LISTEN) for the next notification until ctx ends.
type WaitFunc func(ctx context.Context, conn *sql.Conn) (channel, payload string, err error)

// Options configure a Client.
type Options struct {
	// RunnerID names this process in the runs it claims; default "<hostname>:<pid>".
	RunnerID string
	// WaitForNotification lets heartbeat connections LISTEN on lease_sched_lost with a driver
	// the client does not know. Nil: pgx v4 / v5 stdlib connections are recognised; with any
	// other driver loss is noticed by the heartbeat (at most TTL/3 later) and the deadline.
	WaitForNotification WaitFunc
	// NoListen turns LISTEN off.
	NoListen bool
}

// Client claims and finishes through one *sql.DB and heartbeats on dedicated connections
// taken from a second one, so a busy or exhausted work pool never delays a heartbeat.
type Client struct {
	db    *sql.DB
	beats *sql.DB
	opts  Options
}

// Open opens both pools with database/sql's sql.Open(driverName, dsn).
func Open(driverName, dsn string, opts ...Options) (*Client, error) {
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		return nil, err
	}
	beats, err := sql.Open(driverName, dsn)
	if err != nil {
		db.Close()
		return nil, err
	}
	return New(db, beats, opts...), nil
}

// New uses db for claims, finishes and plans, and beats (open it with the same driver and
// DSN; the client owns it from now on) for heartbeat connections, one per held lease or lock.
func New(db, beats *sql.DB, opts ...Options) *Client {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.RunnerID == "" {
		host, _ := os.Hostname()
		o.RunnerID = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	// Heartbeat connections are dedicated and closed after use, never kept idle.
	beats.SetMaxIdleConns(0)
	return &Client{db: db, beats: beats, opts: o}
}

// DB is the pool claims and finishes go through (use it, or your own, for the work).
func (c *Client) DB() *sql.DB { return c.db }

// RunnerID is the default runner id of this client.
func (c *Client) RunnerID() string { return c.opts.RunnerID }

// Close closes both pools.
func (c *Client) Close() error {
	err := c.db.Close()
	if e := c.beats.Close(); err == nil {
		err = e
	}
	return err
}

// LeaseLost is returned once the lease (lock) is lost: nothing was written after that. Err is
// the body's own error, if it returned one (often context.Canceled, from the cancelled work).
type LeaseLost struct {
	Reason string
	Err    error
}

func (e *LeaseLost) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("lease_sched: lost (%s); nothing was finished: %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("lease_sched: lost (%s); nothing was finished", e.Reason)
}

func (e *LeaseLost) Unwrap() error { return e.Err }

// ErrConflicted is what Conflicted and NotLeader errors match with errors.Is.
var ErrConflicted = errors.New("lease_sched: conflicted")

// Conflicted: someone else holds the plan (or it is finished, backing off, out of attempts);
// Claim is the claim row.
type Conflicted struct{ Claim Claim }

func (e *Conflicted) Error() string {
	return fmt.Sprintf("lease_sched: %s (execution %s, attempt %d)", e.Claim.Outcome, e.Claim.ExecutionID, e.Claim.Attempt)
}
func (e *Conflicted) Is(target error) bool { return target == ErrConflicted }

// NotLeader: the lock is held by a live holder.
type NotLeader struct{ State LockState }

func (e *NotLeader) Error() string {
	return fmt.Sprintf("lease_sched: lock held by %s until %s", e.State.Holder, e.State.ExpiresAt.Format(time.RFC3339Nano))
}
func (e *NotLeader) Is(target error) bool { return target == ErrConflicted }

// ErrFenceUnavailable: lease_fence / lock_fence does not exist in this database (an older
// lease_sched); nothing was written.
var ErrFenceUnavailable = errors.New("lease_sched: lease_fence / lock_fence does not exist in this database: " +
	"the installed lease_sched is older than the fencing API (ALTER EXTENSION lease_sched UPDATE)")

// Claim is the row lease_try_claim returned (never its secret lease_token).
type Claim struct {
	Outcome      string // won, stole, conflicted, ...
	ExecutionID  string
	Attempt      int64
	FencingToken int64
	StaleAfter   time.Time
}

// LockState is the row lock_acquire returned (never its secret lock_token).
type LockState struct {
	Acquired     bool
	FencingToken int64
	Holder       string
	ExpiresAt    time.Time
}

func interval(d time.Duration) string { return fmt.Sprintf("%d microseconds", d.Microseconds()) }

func defaultMargin(ttl time.Duration) time.Duration {
	if m := ttl / 10; m < time.Second {
		return m
	}
	return time.Second
}

func checkTiming(ttl, margin time.Duration) (time.Duration, error) {
	if ttl <= 0 {
		return 0, errors.New("lease_sched: stale_timeout / ttl must be positive")
	}
	if margin == 0 {
		margin = defaultMargin(ttl)
	}
	if margin < 0 || margin >= ttl*2/3 {
		return 0, errors.New("lease_sched: margin must be >= 0 and below two thirds of stale_timeout / ttl")
	}
	return margin, nil
}

// sqlState is the SQLSTATE of a database error of any driver that exposes one.
func sqlState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

// ---------------------------------------------------------------------------------------
// The keeper: heartbeats, LISTEN, local deadline.

type keeper struct {
	c        *Client
	app      string
	sql      string
	args     []any
	payload  string
	ttl      time.Duration
	margin   time.Duration
	interval time.Duration

	mu       sync.Mutex
	deadline time.Time
	stopped  bool
	reason   string

	lost     chan struct{}
	stop     chan struct{}
	done     sync.WaitGroup
	loseOnce sync.Once
	onLost   func()
	beats    int64
}

func startKeeper(c *Client, app, beatSQL string, args []any, payload string, ttl, margin time.Duration,
	started time.Time, onLost func()) *keeper {
	k := &keeper{c: c, app: app, sql: beatSQL, args: args, payload: payload, ttl: ttl, margin: margin,
		interval: ttl / 3, deadline: started.Add(ttl - margin), lost: make(chan struct{}),
		stop: make(chan struct{}), onLost: onLost}
	k.done.Add(2)
	go k.beatLoop()
	go k.watchdog()
	return k
}

func (k *keeper) lose(reason string) {
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	k.stopped = true
	k.mu.Unlock()
	k.loseOnce.Do(func() {
		k.reason = reason
		close(k.lost)
		close(k.stop)
		if k.onLost != nil {
			k.onLost()
		}
	})
}

// halt stops the keeper and waits for it; it reports whether the lease was lost.
func (k *keeper) halt() bool {
	k.mu.Lock()
	if !k.stopped {
		k.stopped = true
		close(k.stop)
	}
	k.mu.Unlock()
	k.done.Wait()
	select {
	case <-k.lost:
		return true
	default:
		return false
	}
}

func (k *keeper) isLost() bool {
	select {
	case <-k.lost:
		return true
	default:
		return false
	}
}

func (k *keeper) lostErr(body error) error {
	return &LeaseLost{Reason: k.reason, Err: body}
}

func (k *keeper) getDeadline() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.deadline
}

func (k *keeper) watchdog() {
	defer k.done.Done()
	for {
		wait := time.Until(k.getDeadline())
		if wait <= 0 {
			k.lose("local deadline passed without an acknowledged heartbeat")
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-k.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// waiter is how this connection's driver waits for notifications, or nil.
func (k *keeper) waiter(conn *sql.Conn) WaitFunc {
	if k.c.opts.NoListen {
		return nil
	}
	if k.c.opts.WaitForNotification != nil {
		return k.c.opts.WaitForNotification
	}
	ok := false
	_ = conn.Raw(func(dc any) error { ok = pgxWaitMethod(dc).IsValid(); return nil })
	if ok {
		return pgxWait
	}
	return nil
}

// pgxWaitMethod finds (*pgx.Conn).WaitForNotification behind a pgx v4 / v5 stdlib driver
// connection (its Conn() method) without importing pgx, so the module has no dependency.
func pgxWaitMethod(dc any) reflect.Value {
	m := reflect.ValueOf(dc).MethodByName("Conn")
	if !m.IsValid() || m.Type().NumIn() != 0 || m.Type().NumOut() != 1 {
		return reflect.Value{}
	}
	pc := m.Call(nil)[0]
	if pc.Kind() == reflect.Ptr && pc.IsNil() {
		return reflect.Value{}
	}
	w := pc.MethodByName("WaitForNotification")
	ctxType := reflect.TypeOf((*context.Context)(nil)).Elem()
	errType := reflect.TypeOf((*error)(nil)).Elem()
	if !w.IsValid() || w.Type().NumIn() != 1 || w.Type().In(0) != ctxType || w.Type().NumOut() != 2 ||
		w.Type().Out(1) != errType {
		return reflect.Value{}
	}
	return w
}

func pgxWait(ctx context.Context, conn *sql.Conn) (channel, payload string, err error) {
	err = conn.Raw(func(dc any) error {
		w := pgxWaitMethod(dc)
		if !w.IsValid() {
			return errors.New("lease_sched: the driver connection has no WaitForNotification")
		}
		out := w.Call([]reflect.Value{reflect.ValueOf(ctx)})
		if e, _ := out[1].Interface().(error); e != nil {
			return e
		}
		n := out[0]
		if n.Kind() == reflect.Ptr {
			n = n.Elem()
		}
		if n.Kind() == reflect.Struct {
			if f := n.FieldByName("Channel"); f.IsValid() && f.Kind() == reflect.String {
				channel = f.String()
			}
			if f := n.FieldByName("Payload"); f.IsValid() && f.Kind() == reflect.String {
				payload = f.String()
			}
		}
		return nil
	})
	return
}

func (k *keeper) beatLoop() {
	defer k.done.Done()
	var conn *sql.Conn
	var wait WaitFunc
	closeConn := func() {
		if conn != nil {
			// Never back to the pool: it carries our application_name and LISTEN.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			conn.Close()
			conn = nil
		}
	}
	defer closeConn()
	stopCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-k.stop
		cancel()
	}()
	next := time.Now().Add(k.interval)
	for stopCtx.Err() == nil {
		// Every call below is bounded by the local deadline.
		step, cancelStep := context.WithDeadline(stopCtx, k.getDeadline())
		err := func() error {
			if conn == nil {
				c, err := k.c.beats.Conn(step)
				if err != nil {
					return err
				}
				conn = c
				if _, err := conn.ExecContext(step, "SELECT pg_catalog.set_config('application_name', $1, false)", k.app); err != nil {
					return err
				}
				wait = k.waiter(conn)
				if wait != nil {
					if _, err := conn.ExecContext(step, "LISTEN "+LostChannel); err != nil {
						return err
					}
				}
			}
			if d := time.Until(next); d > 0 {
				w, cancelW := context.WithTimeout(step, d)
				defer cancelW()
				if wait == nil {
					<-w.Done()
					return nil
				}
				ch, payload, err := wait(w, conn)
				if err == nil {
					if ch == LostChannel && payload == k.payload {
						k.lose("notified on lease_sched_lost")
					}
					return nil
				}
				if w.Err() != nil && step.Err() == nil {
					return nil // the wait ended at the next beat
				}
				return err
			}
			sent := time.Now()
			var ok bool
			if err := conn.QueryRowContext(step, k.sql, k.args...).Scan(&ok); err != nil {
				return err
			}
			if !ok {
				k.lose("heartbeat returned false: someone else holds it now")
				return nil
			}
			k.mu.Lock()
			k.beats++
			if d := sent.Add(k.ttl - k.margin); d.After(k.deadline) {
				k.deadline = d
			}
			k.mu.Unlock()
			next = sent.Add(k.interval)
			return nil
		}()
		cancelStep()
		if err != nil && stopCtx.Err() == nil {
			// Reconnect (a cancelled or failed call leaves the connection unusable).
			closeConn()
			t := time.NewTimer(minDuration(300*time.Millisecond, k.interval))
			select {
			case <-stopCtx.Done():
			case <-t.C:
			}
			t.Stop()
			next = time.Now()
		}
	}
}

func minDuration(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// ---------------------------------------------------------------------------------------
// Leases.

// LeaseOptions are the claim's settings; zero values mean the defaults.
type LeaseOptions struct {
	RunnerID          string        // default: the client's
	StaleTimeout      time.Duration // default 5 minutes
	ScopeKind         string        // default "global"
	ScopeID           string
	MaxAttempts       int  // default 3
	NoStaleReentry    bool // allow_stale_reentry => false
	Margin            time.Duration
	allowStaleReentry bool
}

func (o LeaseOptions) withDefaults(c *Client) LeaseOptions {
	if o.RunnerID == "" {
		o.RunnerID = c.opts.RunnerID
	}
	if o.StaleTimeout == 0 {
		o.StaleTimeout = 5 * time.Minute
	}
	if o.ScopeKind == "" {
		o.ScopeKind = "global"
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 3
	}
	o.allowStaleReentry = !o.NoStaleReentry
	return o
}

// Lease is a held lease, handed to the body of WithLease. Set Result (any JSON-able value),
// RowsAffected and, for a FAILED finish, RetryIn during the body.
type Lease struct {
	Claim
	JobName  string
	PlanTime time.Time

	Result       any
	RowsAffected *int64
	RetryIn      time.Duration
	// Finished is "SUCCESS" or "FAILED" once the finish was written.
	Finished string
	// ResultError says why Result was not stored ({"result_not_stored": ...} was instead).
	ResultError string

	leaseToken string
	k          *keeper
}

// Lost is closed once the lease is lost.
func (l *Lease) Lost() <-chan struct{} { return l.k.lost }

// Check returns a *LeaseLost once the lease is lost.
func (l *Lease) Check() error {
	if l.k.isLost() {
		return l.k.lostErr(nil)
	}
	return nil
}

// Heartbeats is the number of heartbeats acknowledged so far.
func (l *Lease) Heartbeats() int64 {
	l.k.mu.Lock()
	defer l.k.mu.Unlock()
	return l.k.beats
}

// Fence calls lease_sched.lease_fence(execution_id, fencing_token) in tx: the writes that
// follow it there commit only while this lease is held.
func (l *Lease) Fence(ctx context.Context, tx *sql.Tx) error {
	return fence(ctx, tx, "SELECT lease_sched.lease_fence($1::text::uuid, $2)", l.ExecutionID, l.FencingToken)
}

func fence(ctx context.Context, tx *sql.Tx, q string, key any, token int64) error {
	_, err := tx.ExecContext(ctx, q, key, token)
	if err != nil && sqlState(err) == "42883" {
		return ErrFenceUnavailable
	}
	return err
}

const claimSQL = `SELECT outcome, execution_id::text, lease_token::text, attempt, fencing_token, stale_after
  FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3,
       scope_kind => $4, scope_id => $5, stale_timeout => $6::text::interval, max_attempts => $7,
       allow_stale_reentry => $8)`

const finishSQL = `SELECT lease_sched.lease_finish(execution_id => $1::text::uuid, lease_token => $2::text::uuid,
       status => $3, result => $4::text::jsonb, rows_affected => $5, error_code => $6, error_msg => $7,
       retry_in => $8::text::interval)`

// tryClaim runs lease_try_claim: the claim row and, separately, the secret lease_token.
func (c *Client) tryClaim(ctx context.Context, job string, plan time.Time, o LeaseOptions) (Claim, string, error) {
	var cl Claim
	var id, token sql.NullString
	var attempt, fencing sql.NullInt64
	var stale sql.NullTime
	err := c.db.QueryRowContext(ctx, claimSQL, job, plan, o.RunnerID, o.ScopeKind, o.ScopeID,
		interval(o.StaleTimeout), o.MaxAttempts, o.allowStaleReentry).Scan(&cl.Outcome, &id, &token, &attempt, &fencing, &stale)
	cl.ExecutionID, cl.Attempt, cl.FencingToken, cl.StaleAfter = id.String, attempt.Int64, fencing.Int64, stale.Time
	return cl, token.String, err
}

// WithLease claims (job, plan), runs fn while heartbeating in the background, and finishes
// exactly once: SUCCESS when fn returns nil, FAILED (error_code = the SQLSTATE of a database
// error, else "handler_error"; error_msg = its message) when it returns an error, which
// WithLease then returns. fn's ctx is cancelled the moment the lease is lost; then nothing is
// written and WithLease returns a *LeaseLost (wrapping fn's error). A claim that is not ours
// returns a *Conflicted (errors.Is(err, ErrConflicted)).
func (c *Client) WithLease(ctx context.Context, job string, plan time.Time, opts LeaseOptions,
	fn func(ctx context.Context, l *Lease) error) error {
	o := opts.withDefaults(c)
	margin, err := checkTiming(o.StaleTimeout, o.Margin)
	if err != nil {
		return err
	}
	started := time.Now()
	claim, token, err := c.tryClaim(ctx, job, plan, o)
	if err != nil {
		return err
	}
	if claim.Outcome != "won" && claim.Outcome != "stole" {
		return &Conflicted{Claim: claim}
	}
	workCtx, cancelWork := context.WithCancel(ctx)
	defer cancelWork()
	l := &Lease{Claim: claim, JobName: job, PlanTime: plan, leaseToken: token}
	l.k = startKeeper(c, appName("lease", claim.ExecutionID),
		"SELECT lease_sched.lease_heartbeat(execution_id => $1::text::uuid, lease_token => $2::text::uuid)",
		[]any{claim.ExecutionID, token}, claim.ExecutionID, o.StaleTimeout, margin, started, cancelWork)
	bodyErr := runBody(workCtx, l, fn)
	return l.finish(ctx, c, bodyErr)
}

// runBody runs fn, turning a panic into an error: the lease is finished FAILED, then the
// panic goes on.
func runBody(ctx context.Context, l *Lease, fn func(ctx context.Context, l *Lease) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p}
		}
	}()
	return fn(ctx, l)
}

type panicError struct{ value any }

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v", p.value) }

func unstoredResult(why string) string {
	if len(why) > 1000 {
		why = why[:1000]
	}
	b, _ := json.Marshal(map[string]string{"result_not_stored": why})
	return string(b)
}

// encodeResult is the JSON text to store, or a substitute and why. Called while the
// heartbeat still runs: a result that cannot be stored never costs the finish.
func encodeResult(v any) (*string, string) {
	if v == nil {
		return nil, ""
	}
	b, err := json.Marshal(v)
	if err != nil {
		why := "result is not JSON: " + err.Error()
		s := unstoredResult(why)
		return &s, why
	}
	if len(b) > ResultMaxBytes {
		why := fmt.Sprintf("result is %d bytes of JSON, over the %d bytes lease_finish stores", len(b), ResultMaxBytes)
		s := unstoredResult(why)
		return &s, why
	}
	s := string(b)
	return &s, ""
}

func errorCode(err error) string {
	if s := sqlState(err); s != "" {
		return s
	}
	return "handler_error"
}

func (l *Lease) finish(ctx context.Context, c *Client, bodyErr error) error {
	result, why := encodeResult(l.Result)
	l.ResultError = why
	if l.k.halt() {
		if p, ok := bodyErr.(*panicError); ok {
			panic(p.value)
		}
		return l.k.lostErr(bodyErr)
	}
	status := "SUCCESS"
	var code, msg, retry any
	if bodyErr != nil {
		status = "FAILED"
		code, msg = errorCode(bodyErr), bodyErr.Error()
		if l.RetryIn > 0 {
			retry = interval(l.RetryIn)
		}
	}
	var rows any
	if l.RowsAffected != nil {
		rows = *l.RowsAffected
	}
	// The finish must not be cancelled with the caller's context half-way: it is one short
	// statement, bounded by its own timeout.
	fctx, cancel := context.WithTimeout(detached{ctx}, 30*time.Second)
	defer cancel()
	do := func(result *string) (bool, error) {
		var res any
		if result != nil {
			res = *result
		}
		var ok bool
		err := c.db.QueryRowContext(fctx, finishSQL, l.ExecutionID, l.leaseToken, status, res, rows, code, msg, retry).Scan(&ok)
		return ok, err
	}
	ok, err := do(result)
	if err != nil && result != nil && len(sqlState(err)) == 5 && sqlState(err)[:2] == "22" {
		// Refused by the database (over 16 KiB as jsonb prints it, or not valid jsonb): the
		// lease is still RUNNING; finish it with the substitute.
		l.ResultError = "lease_finish refused the result: " + err.Error()
		s := unstoredResult(l.ResultError)
		ok, err = do(&s)
	}
	if p, isPanic := bodyErr.(*panicError); isPanic {
		if ok && err == nil {
			l.Finished = status
		}
		panic(p.value)
	}
	if err != nil {
		if bodyErr != nil {
			return fmt.Errorf("%w (and finishing the lease FAILED failed too: %v)", bodyErr, err)
		}
		return err
	}
	if !ok {
		return &LeaseLost{Reason: "finish returned false: taken over since the last heartbeat", Err: bodyErr}
	}
	l.Finished = status
	return bodyErr
}

func appName(kind, key string) string {
	s := "lease_sched " + kind + " " + key
	if len(s) > 63 {
		s = s[:63]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

// detached keeps ctx's values but not its cancellation: the finish must not be cut half-way
// because the caller's context ended with the body.
type detached struct{ context.Context }

func (detached) Deadline() (time.Time, bool) { return time.Time{}, false }
func (detached) Done() <-chan struct{}       { return nil }
func (detached) Err() error                  { return nil }
