// A lease_sched runner in Go (pgx v4): claim the due plan of a job, heartbeat from a
// goroutine on its own connection, cancel the work's context the moment the lease is lost
// (heartbeat false, a lease_sched_lost notification, or the local deadline), finish with the
// token, and pass the fencing token on.
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go run examples/runner.go \
//	    "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres" example-report
//
// Built with Debian's golang-go and golang-github-jackc-pgx-v4-dev; no module download.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v4"
)

// stale_timeout of the claim (LEASE_EXAMPLE_STALE_TIMEOUT=1s to try it out) and how long the
// example's work takes (LEASE_EXAMPLE_WORK=3s).
var staleTimeout = envDuration("LEASE_EXAMPLE_STALE_TIMEOUT", 30*time.Second)
var workTime = envDuration("LEASE_EXAMPLE_WORK", 500*time.Millisecond)

// The holder gives up this long before the database may call the lease stale:
// min(staleTimeout/10, 1s), the rule the libraries in clients/ use.
var margin = minDuration(staleTimeout/10, time.Second)

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

func minDuration(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// lostSignal cancels the work's context once, remembering why (Go 1.19 has no
// context.WithCancelCause).
type lostSignal struct {
	once   sync.Once
	cancel context.CancelFunc
	cause  error
}

func (s *lostSignal) lose(cause error) {
	s.once.Do(func() { s.cause = cause; s.cancel() })
}

type lease struct {
	executionID  string
	token        string
	fencingToken int64
}

// keepAlive heartbeats every staleTimeout/3 on its own connection and LISTENs on
// lease_sched_lost. It calls lose() (cancelling the work's context) when a heartbeat returns
// false, a notification names this lease, or no heartbeat has been acknowledged for
// staleTimeout - margin, whether or not the database can be reached. It returns when ctx ends.
func keepAlive(ctx context.Context, dsn string, l lease, started time.Time, lose func(error)) {
	deadline := started.Add(staleTimeout - margin)
	next := started.Add(staleTimeout / 3)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if time.Now().After(deadline) {
			lose(errors.New("local deadline passed without an acknowledged heartbeat"))
			return
		}
		// Every wait and call below is bounded by the local deadline.
		step, cancel := context.WithDeadline(ctx, deadline)
		err := func() error {
			if conn == nil {
				cfg, err := pgx.ParseConfig(dsn)
				if err != nil {
					return err
				}
				cfg.RuntimeParams["application_name"] = "lease_sched lease " + l.executionID
				if conn, err = pgx.ConnectConfig(step, cfg); err != nil {
					conn = nil
					return err
				}
				if _, err = conn.Exec(step, "LISTEN lease_sched_lost"); err != nil {
					return err
				}
			}
			// Wait for a notification until the next beat.
			wait, cancelWait := context.WithDeadline(step, next)
			n, err := conn.WaitForNotification(wait)
			cancelWait()
			if err == nil {
				if n.Channel == "lease_sched_lost" && n.Payload == l.executionID {
					lose(errors.New("notified on lease_sched_lost"))
				}
				return nil
			}
			if step.Err() != nil || !errors.Is(err, context.DeadlineExceeded) && wait.Err() == nil {
				return err
			}
			sent := time.Now()
			var ok bool
			if err := conn.QueryRow(step, "SELECT lease_sched.lease_heartbeat($1, $2)", l.executionID, l.token).Scan(&ok); err != nil {
				return err
			}
			if !ok {
				lose(errors.New("heartbeat returned false: someone else holds it now"))
				return nil
			}
			deadline = sent.Add(staleTimeout - margin)
			next = sent.Add(staleTimeout / 3)
			return nil
		}()
		cancel()
		if err != nil && ctx.Err() == nil {
			// The connection is unusable (pgx closes it on a cancelled call): reconnect.
			if conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	}
}

// work is the job's real work. It gets the fencing token to hand to anything downstream that
// must refuse writes from an older holder, and must stop when ctx is cancelled.
func work(ctx context.Context, conn *pgx.Conn, fencingToken int64) (int64, error) {
	_, err := conn.Exec(ctx, "SELECT pg_sleep($1)", workTime.Seconds())
	return 1, err
}

func runOnce(ctx context.Context, dsn, job string) (string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())

	var plan *time.Time
	if err := conn.QueryRow(ctx, "SELECT lease_sched.lease_next_plan(job_name => $1, every => '1 minute')", job).Scan(&plan); err != nil {
		return "", err
	}
	if plan == nil {
		return "nothing due", nil
	}
	started := time.Now()
	var outcome string
	var id, token *string
	var fencing *int64
	err = conn.QueryRow(ctx, `SELECT outcome, execution_id::text, lease_token::text, fencing_token
	        FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3,
	                                         stale_timeout => make_interval(secs => $4))`,
		job, *plan, fmt.Sprintf("go-%d", os.Getpid()), staleTimeout.Seconds()).Scan(&outcome, &id, &token, &fencing)
	if err != nil {
		return "", err
	}
	if outcome == "conflicted" {
		return "conflicted", nil
	}
	l := lease{executionID: *id, token: *token, fencingToken: *fencing}

	// The work's context is cancelled with a cause the moment the lease is lost.
	workCtx, cancelWork := context.WithCancel(ctx)
	defer cancelWork()
	lost := &lostSignal{cancel: cancelWork}
	beatCtx, stopBeat := context.WithCancel(ctx)
	beatDone := make(chan struct{})
	go func() { defer close(beatDone); keepAlive(beatCtx, dsn, l, started, lost.lose) }()

	workConn, err := pgx.Connect(ctx, dsn) // the work holds its own connection busy
	if err != nil {
		stopBeat()
		<-beatDone
		return "", err
	}
	rows, workErr := work(workCtx, workConn, l.fencingToken)
	workConn.Close(context.Background())
	stopBeat()
	<-beatDone
	if workCtx.Err() != nil {
		return "lost: " + lost.cause.Error(), nil // never finish a lost lease
	}

	var finished bool
	if workErr == nil {
		err = conn.QueryRow(ctx, "SELECT lease_sched.lease_finish($1, $2, 'SUCCESS', result => $3, rows_affected => $4)",
			l.executionID, l.token, fmt.Sprintf(`{"rows": %d}`, rows), rows).Scan(&finished)
	} else {
		err = conn.QueryRow(ctx, "SELECT lease_sched.lease_finish($1, $2, 'FAILED', error_code => 'handler_error', error_msg => $3)",
			l.executionID, l.token, workErr.Error()).Scan(&finished)
	}
	if err != nil {
		return "", err
	}
	if !finished {
		return "lost", nil
	}
	if workErr != nil {
		return outcome + " failed", nil
	}
	return outcome + " success", nil
}

func main() {
	dsn := "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres"
	job := "example-report"
	if len(os.Args) > 1 {
		dsn = os.Args[1]
	}
	if len(os.Args) > 2 {
		job = os.Args[2]
	}
	out, err := runOnce(context.Background(), dsn, job)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(out)
}
