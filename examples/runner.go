// A lease_sched runner in Go, on the Go client (clients/go, package leasesched) and pgx v4's
// database/sql driver: claim the due plan of a job, heartbeat in the background on a
// connection of its own, cancel the work's context the moment the lease is lost (heartbeat
// false, a lease_sched_lost notification, or the local deadline), finish exactly once, and
// pass the fencing token on.
//
//	mkdir -p /tmp/gopath/src/lease_sched/clients && ln -sfn "$PWD/clients/go" /tmp/gopath/src/lease_sched/clients/go
//	GOPATH=/tmp/gopath:/usr/share/gocode GO111MODULE=off go run examples/runner.go \
//	    "host=127.0.0.1 port=55450 dbname=lease_sched user=postgres" example-report
//
// Built with Debian's golang-go and golang-github-jackc-pgx-v4-dev; no module download.
// Prints "won success" (or "stole success"), "nothing due", "conflicted", or "lost: <why>".
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	_ "github.com/jackc/pgx/v4/stdlib"

	leasesched "lease_sched/clients/go"
)

// stale_timeout of the claim (LEASE_EXAMPLE_STALE_TIMEOUT=1s to try it out) and how long the
// example's work takes (LEASE_EXAMPLE_WORK=3s).
var staleTimeout = envDuration("LEASE_EXAMPLE_STALE_TIMEOUT", 30*time.Second)
var workTime = envDuration("LEASE_EXAMPLE_WORK", 500*time.Millisecond)

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

func runOnce(ctx context.Context, dsn, job string) (string, error) {
	client, err := leasesched.Open("pgx", dsn)
	if err != nil {
		return "", err
	}
	defer client.Close()

	run, err := client.RunDue(ctx, job, leasesched.DueOptions{Every: time.Minute, StaleTimeout: staleTimeout},
		func(ctx context.Context, l *leasesched.Lease) (any, error) {
			// The work: it gets the fencing token to hand to anything downstream that must
			// refuse writes from an older holder, and stops when ctx is cancelled (the query is
			// cancelled with it).
			if _, err := client.DB().ExecContext(ctx, "SELECT pg_sleep($1), $2::bigint", workTime.Seconds(), l.FencingToken); err != nil {
				return nil, err
			}
			rows := int64(1)
			l.RowsAffected = &rows
			return map[string]int64{"rows": rows}, nil
		})
	var lost *leasesched.LeaseLost
	switch {
	case errors.As(err, &lost):
		return "lost: " + lost.Reason, nil // nothing was finished
	case err != nil && run.Outcome == "failed":
		return run.Claim.Outcome + " failed", nil // finished FAILED with the error
	case err != nil:
		return "", err
	case run.Outcome == "nothing_due":
		return "nothing due", nil
	case run.Outcome == "conflicted":
		return "conflicted", nil
	}
	return run.Claim.Outcome + " success", nil
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
