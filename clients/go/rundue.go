package leasesched

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// DueOptions for RunDue; zero values mean: the job's definition (job_define) where it has
// one, else Every is required and StaleTimeout is 5 minutes, MaxAttempts 3.
type DueOptions struct {
	Every        time.Duration
	StaleTimeout time.Duration
	MaxAttempts  int
	ScopeKind    string
	ScopeID      string
	RunnerID     string
	// NoCatchUp: for a job without a definition, jump to the current bucket instead of
	// walking every missed one (lease_next_plan's catch_up => false).
	NoCatchUp bool
}

// DueRun is what RunDue did: Outcome is "nothing_due", "conflicted", "success", or "failed"
// (fn returned an error, which RunDue returns too, or the lease was lost); Value is what fn
// returned.
type DueRun struct {
	Outcome  string
	PlanTime time.Time
	Claim    Claim
	Value    any
}

// Definition is a job's definition (lease_sched.job_definition), if it has one.
func (c *Client) Definition(ctx context.Context, job, scopeKind, scopeID string) (every, staleTimeout time.Duration, maxAttempts int, ok bool, err error) {
	if scopeKind == "" {
		scopeKind = "global"
	}
	var e, st float64
	err = c.db.QueryRowContext(ctx, `SELECT extract(epoch FROM every)::float8, extract(epoch FROM stale_timeout)::float8, max_attempts
	    FROM lease_sched.job_definition(job_name => $1, scope_kind => $2, scope_id => $3)`, job, scopeKind, scopeID).Scan(&e, &st, &maxAttempts)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, 0, false, err
	}
	return time.Duration(e * float64(time.Second)), time.Duration(st * float64(time.Second)), maxAttempts, true, nil
}

// NextPlan is the plan a runner should claim now (lease_sched.lease_next_plan), or ok=false
// when nothing is due. every 0: the job's definition.
func (c *Client) NextPlan(ctx context.Context, job string, every time.Duration, scopeKind, scopeID string, catchUp bool) (plan time.Time, ok bool, err error) {
	if scopeKind == "" {
		scopeKind = "global"
	}
	var ev any
	if every > 0 {
		ev = interval(every)
	}
	var p sql.NullTime
	err = c.db.QueryRowContext(ctx, `SELECT lease_sched.lease_next_plan(job_name => $1, every => $2::text::interval,
	    scope_kind => $3, scope_id => $4, catch_up => $5)`, job, ev, scopeKind, scopeID, catchUp).Scan(&p)
	return p.Time, p.Valid, err
}

// RunDue is one turn of a runner loop: lease_next_plan, claim, fn, finish. fn's value becomes
// the run's result (unless fn set l.Result). For a defined job (job_define) Every,
// StaleTimeout and MaxAttempts default to the definition's. fn's error finishes the run FAILED
// and is returned; a lost lease returns a *LeaseLost.
func (c *Client) RunDue(ctx context.Context, job string, opts DueOptions,
	fn func(ctx context.Context, l *Lease) (any, error)) (DueRun, error) {
	if opts.StaleTimeout == 0 || opts.MaxAttempts == 0 {
		_, st, attempts, ok, err := c.Definition(ctx, job, opts.ScopeKind, opts.ScopeID)
		if err != nil {
			return DueRun{}, err
		}
		if ok && opts.StaleTimeout == 0 {
			opts.StaleTimeout = st
		}
		if ok && opts.MaxAttempts == 0 {
			opts.MaxAttempts = attempts
		}
	}
	plan, ok, err := c.NextPlan(ctx, job, opts.Every, opts.ScopeKind, opts.ScopeID, !opts.NoCatchUp)
	if err != nil || !ok {
		return DueRun{Outcome: "nothing_due"}, err
	}
	var value any
	var claim Claim
	err = c.WithLease(ctx, job, plan, LeaseOptions{RunnerID: opts.RunnerID, StaleTimeout: opts.StaleTimeout,
		ScopeKind: opts.ScopeKind, ScopeID: opts.ScopeID, MaxAttempts: opts.MaxAttempts},
		func(ctx context.Context, l *Lease) error {
			claim = l.Claim
			v, err := fn(ctx, l)
			value = v
			if l.Result == nil {
				l.Result = v
			}
			return err
		})
	var conflicted *Conflicted
	if errors.As(err, &conflicted) {
		return DueRun{Outcome: "conflicted", PlanTime: plan, Claim: conflicted.Claim}, nil
	}
	if err != nil {
		return DueRun{Outcome: "failed", PlanTime: plan, Claim: claim, Value: value}, err
	}
	return DueRun{Outcome: "success", PlanTime: plan, Claim: claim, Value: value}, nil
}
