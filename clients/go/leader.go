package leasesched

import (
	"context"
	"database/sql"
	"time"
)

// Leader is a held named lock (leader election), handed to the body of Client.Leader.
type Leader struct {
	LockState
	Name     string
	Released bool

	lockToken string
	k         *keeper
}

// Lost is closed once the lock is lost.
func (l *Leader) Lost() <-chan struct{} { return l.k.lost }

// Check returns a *LeaseLost once the lock is lost.
func (l *Leader) Check() error {
	if l.k.isLost() {
		return l.k.lostErr(nil)
	}
	return nil
}

// Fence calls lease_sched.lock_fence(lock_name, fencing_token) in tx: the writes that follow
// it there commit only while this leader holds the lock.
func (l *Leader) Fence(ctx context.Context, tx *sql.Tx) error {
	return fence(ctx, tx, "SELECT lease_sched.lock_fence($1, $2)", l.Name, l.FencingToken)
}

// LeaderOptions: zero values mean the defaults.
type LeaderOptions struct {
	Holder string        // default: the client's runner id
	TTL    time.Duration // default 60 s
	Margin time.Duration
}

// Leader acquires the lock name, runs fn while heartbeating it with its secret lock_token,
// and releases it when fn returns. While someone else holds it: a *NotLeader
// (errors.Is(err, ErrConflicted)). fn's ctx is cancelled the moment the lock is lost; then
// nothing is released and Leader returns a *LeaseLost. fn's own error is returned after the
// release.
func (c *Client) Leader(ctx context.Context, name string, opts LeaderOptions,
	fn func(ctx context.Context, l *Leader) error) error {
	if opts.Holder == "" {
		opts.Holder = c.opts.RunnerID
	}
	if opts.TTL == 0 {
		opts.TTL = time.Minute
	}
	margin, err := checkTiming(opts.TTL, opts.Margin)
	if err != nil {
		return err
	}
	started := time.Now()
	var st LockState
	var token, holder sql.NullString
	var fencing sql.NullInt64
	var expires sql.NullTime
	err = c.db.QueryRowContext(ctx, `SELECT acquired, lock_token::text, fencing_token, holder, expires_at
	    FROM lease_sched.lock_acquire(lock_name => $1, holder => $2, ttl => $3::text::interval)`,
		name, opts.Holder, interval(opts.TTL)).Scan(&st.Acquired, &token, &fencing, &holder, &expires)
	if err != nil {
		return err
	}
	st.FencingToken, st.Holder, st.ExpiresAt = fencing.Int64, holder.String, expires.Time
	if !st.Acquired {
		return &NotLeader{State: st}
	}
	workCtx, cancelWork := context.WithCancel(ctx)
	defer cancelWork()
	l := &Leader{LockState: st, Name: name, lockToken: token.String}
	l.k = startKeeper(c, appName("lock", name),
		"SELECT lease_sched.lock_heartbeat(lock_name => $1, lock_token => $2::text::uuid)",
		[]any{name, token.String}, "lock:"+name, opts.TTL, margin, started, cancelWork)
	bodyErr := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = &panicError{value: p}
			}
		}()
		return fn(workCtx, l)
	}()
	p, isPanic := bodyErr.(*panicError)
	if l.k.halt() {
		if isPanic {
			panic(p.value)
		}
		return l.k.lostErr(bodyErr)
	}
	rctx, cancel := context.WithTimeout(detached{ctx}, 30*time.Second)
	defer cancel()
	var ok bool
	err = c.db.QueryRowContext(rctx, "SELECT lease_sched.lock_release(lock_name => $1, lock_token => $2::text::uuid)",
		name, token.String).Scan(&ok)
	if isPanic {
		panic(p.value)
	}
	switch {
	case err != nil && bodyErr != nil:
		return bodyErr
	case err != nil:
		return err
	case !ok:
		return &LeaseLost{Reason: "release returned false: taken over since the last heartbeat", Err: bodyErr}
	}
	l.Released = true
	return bodyErr
}
