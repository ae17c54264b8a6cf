package leasesched_test

// Against a real cluster (LEASE_SCHED_DSN), with real failures: a killed heartbeat backend, a
// network cut by stopping a TCP proxy, steals, 32 concurrent holders. The driver is pgx v4's
// stdlib adapter (Debian's golang-github-jackc-pgx-v4-dev).

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v4/stdlib"

	leasesched "lease_sched/clients/go"
)

func dsn() string {
	if d := os.Getenv("LEASE_SCHED_DSN"); d != "" {
		return d
	}
	return "host=127.0.0.1 port=55440 dbname=lease_sched user=postgres"
}

// unique names differ across runs against the same cluster (math/rand is not seeded in Go 1.19).
func unique(prefix string) string {
	b := make([]byte, 6)
	if _, err := crand.Read(b); err != nil {
		panic(err)
	}
	return fmt.Sprintf("%s_%x", prefix, b)
}

func plan(minute int) time.Time { return time.Date(2026, 1, 1, 3, minute, 0, 0, time.UTC) }

func open(t *testing.T, d string) *leasesched.Client {
	t.Helper()
	c, err := leasesched.Open("pgx", d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func db(t *testing.T) *sql.DB {
	t.Helper()
	d, err := sql.Open("pgx", dsn())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

type row struct {
	status, runner string
	attempt        int
	code, msg      sql.NullString
	result         sql.NullString
	rows           sql.NullInt64
}

func rowOf(t *testing.T, d *sql.DB, id string) row {
	t.Helper()
	var r row
	err := d.QueryRow(`SELECT status, runner_id, attempt, error_code, error_msg, result::text, rows_affected
	    FROM lease_sched.sys_cron_executions WHERE id = $1::text::uuid`, id).
		Scan(&r.status, &r.runner, &r.attempt, &r.code, &r.msg, &r.result, &r.rows)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func backendPid(t *testing.T, d *sql.DB, app string) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		var pid int
		if err := d.QueryRow("SELECT pid FROM pg_stat_activity WHERE application_name = $1 LIMIT 1", app).Scan(&pid); err == nil {
			return pid
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no backend named %q", app)
	return 0
}

// steal: another runner takes the plan (made stale in the same transaction when force, so no
// heartbeat slips in between).
func steal(t *testing.T, d *sql.DB, job string, when time.Time, id string, force bool) (string, string) {
	t.Helper()
	tx, err := d.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if force {
		if _, err := tx.Exec("UPDATE lease_sched.sys_cron_executions SET stale_after = clock_timestamp() - interval '1 second' WHERE id = $1::text::uuid", id); err != nil {
			t.Fatal(err)
		}
	}
	var outcome string
	var token sql.NullString
	if err := tx.QueryRow(`SELECT outcome, lease_token::text FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2,
	    runner_id => 'thief', stale_timeout => '1 minute')`, job, when).Scan(&outcome, &token); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return outcome, token.String
}

// proxy is a TCP proxy to the server; stop cuts every connection and refuses new ones.
type proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startProxy(t *testing.T) *proxy {
	kv := map[string]string{"host": "127.0.0.1", "port": "5432"}
	for _, f := range strings.Fields(dsn()) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	go func() {
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", net.JoinHostPort(kv["host"], kv["port"]))
			if err != nil {
				a.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, a, b)
			p.mu.Unlock()
			go func() { io.Copy(a, b); a.Close(); b.Close() }()
			go func() { io.Copy(b, a); a.Close(); b.Close() }()
		}
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *proxy) dsn() string {
	var rest []string
	for _, f := range strings.Fields(dsn()) {
		if !strings.HasPrefix(f, "host=") && !strings.HasPrefix(f, "port=") {
			rest = append(rest, f)
		}
	}
	return fmt.Sprintf("host=127.0.0.1 port=%d %s", p.ln.Addr().(*net.TCPAddr).Port, strings.Join(rest, " "))
}

func (p *proxy) stop() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func TestALeaseSurvivesFarPastItsStaleTimeout(t *testing.T) {
	c, d, job := open(t, dsn()), db(t), unique("go_survive")
	var id string
	var conflicts []string
	err := c.WithLease(context.Background(), job, plan(0), leasesched.LeaseOptions{RunnerID: "holder", StaleTimeout: time.Second},
		func(ctx context.Context, l *leasesched.Lease) error {
			id = l.ExecutionID
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() { // a thief keeps trying while the body works
				defer close(done)
				for {
					select {
					case <-stop:
						return
					case <-time.After(200 * time.Millisecond):
					}
					err := c.WithLease(context.Background(), job, plan(0), leasesched.LeaseOptions{RunnerID: "thief", StaleTimeout: time.Second},
						func(context.Context, *leasesched.Lease) error { return nil })
					if errors.Is(err, leasesched.ErrConflicted) {
						conflicts = append(conflicts, "conflicted")
					} else {
						conflicts = append(conflicts, fmt.Sprint(err))
					}
				}
			}()
			_, err := c.DB().ExecContext(ctx, "SELECT pg_sleep(4)") // 4 x stale_timeout
			close(stop)
			<-done
			if err != nil {
				return err
			}
			if err := l.Check(); err != nil {
				return err
			}
			l.Result = map[string]int{"rows": 3}
			n := int64(3)
			l.RowsAffected = &n
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if len(conflicts) == 0 {
		t.Fatal("the thief never tried")
	}
	for _, c := range conflicts {
		if c != "conflicted" {
			t.Fatalf("a thief got %q", c)
		}
	}
	r := rowOf(t, d, id)
	if r.status != "SUCCESS" || r.runner != "holder" || r.attempt != 1 || r.result.String != `{"rows": 3}` || r.rows.Int64 != 3 {
		t.Fatalf("%+v", r)
	}
}

func TestAnErrorFinishesFailedAndIsReturned(t *testing.T) {
	c, d, job := open(t, dsn()), db(t), unique("go_fail")
	boom := errors.New("boom 42")
	var id string
	err := c.WithLease(context.Background(), job, plan(0), leasesched.LeaseOptions{},
		func(ctx context.Context, l *leasesched.Lease) error { id = l.ExecutionID; return boom })
	if err != boom {
		t.Fatalf("got %v", err)
	}
	if r := rowOf(t, d, id); r.status != "FAILED" || r.code.String != "handler_error" || r.msg.String != "boom 42" {
		t.Fatalf("%+v", r)
	}
	err = c.WithLease(context.Background(), job, plan(1), leasesched.LeaseOptions{},
		func(ctx context.Context, l *leasesched.Lease) error {
			id = l.ExecutionID
			_, err := c.DB().ExecContext(ctx, "SELECT 1 / 0")
			return err
		})
	if err == nil || !strings.Contains(err.Error(), "division by zero") {
		t.Fatalf("got %v", err)
	}
	if r := rowOf(t, d, id); r.status != "FAILED" || r.code.String != "22012" {
		t.Fatalf("%+v", r)
	}
}

func TestAStolenLeaseIsLostWithinOneHeartbeatItsWorkCancelledAndNeverFinished(t *testing.T) {
	c, d, job, stale := open(t, dsn()), db(t), unique("go_steal"), 3*time.Second
	ready := make(chan *leasesched.Lease, 1)
	var cancelledAt time.Time
	result := make(chan error, 1)
	go func() {
		result <- c.WithLease(context.Background(), job, plan(0), leasesched.LeaseOptions{RunnerID: "holder", StaleTimeout: stale},
			func(ctx context.Context, l *leasesched.Lease) error {
				ready <- l
				_, err := c.DB().ExecContext(ctx, "SELECT pg_sleep(60)")
				cancelledAt = time.Now()
				return err
			})
	}()
	l := <-ready
	if _, err := d.Exec("SELECT pg_terminate_backend($1)", backendPid(t, d, "lease_sched lease "+l.ExecutionID)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	outcome, thiefToken := steal(t, d, job, plan(0), l.ExecutionID, true)
	stolenAt := time.Now()
	if outcome != "stole" {
		t.Fatalf("outcome %s", outcome)
	}
	select {
	case <-l.Lost():
	case <-time.After(stale/3 + time.Second):
		t.Fatal("not lost within one heartbeat interval")
	}
	var err error
	select {
	case err = <-result:
	case <-time.After(15 * time.Second):
		t.Fatal("the body was not cancelled")
	}
	var lost *leasesched.LeaseLost
	if !errors.As(err, &lost) {
		t.Fatalf("want *LeaseLost, got %v", err)
	}
	if cancelledAt.Sub(stolenAt) > stale/3+1500*time.Millisecond {
		t.Fatalf("the body's query ran %v after the steal", cancelledAt.Sub(stolenAt))
	}
	if r := rowOf(t, d, l.ExecutionID); r.status != "RUNNING" || r.runner != "thief" || r.attempt != 2 || l.Finished != "" {
		t.Fatalf("the lost holder finished something: %+v", r)
	}
	var ok bool
	if err := d.QueryRow("SELECT lease_sched.lease_finish($1::text::uuid, $2::text::uuid, 'SUCCESS')", l.ExecutionID, thiefToken).Scan(&ok); err != nil || !ok {
		t.Fatalf("the thief's finish: %v %v", ok, err)
	}
}

func TestAHolderCutOffFromTheDatabaseKnowsBeforeAnyoneMaySteal(t *testing.T) {
	p := startProxy(t)
	c, d, job, stale := open(t, p.dsn()), db(t), unique("go_cut"), 3*time.Second
	var id string
	var lostAfter time.Duration
	var dbMargin float64
	err := c.WithLease(context.Background(), job, plan(0), leasesched.LeaseOptions{RunnerID: "holder", StaleTimeout: stale},
		func(ctx context.Context, l *leasesched.Lease) error {
			id = l.ExecutionID
			time.Sleep(1200 * time.Millisecond) // a heartbeat or so
			p.stop()
			cut := time.Now()
			select {
			case <-ctx.Done():
			case <-time.After(2 * stale):
				return errors.New("never lost")
			}
			lostAfter = time.Since(cut)
			if err := d.QueryRow("SELECT extract(epoch FROM stale_after - clock_timestamp())::float8 FROM lease_sched.sys_cron_executions WHERE id = $1::text::uuid", id).Scan(&dbMargin); err != nil {
				return err
			}
			return ctx.Err()
		})
	var lost *leasesched.LeaseLost
	if !errors.As(err, &lost) {
		t.Fatalf("want *LeaseLost, got %v", err)
	}
	if dbMargin <= 0 {
		t.Fatalf("lost must be known before stale_after (margin %v)", dbMargin)
	}
	if lostAfter > stale {
		t.Fatalf("lost %v after the cut", lostAfter)
	}
	deadline := time.Now().Add(stale + 2*time.Second)
	for {
		if o, _ := steal(t, d, job, plan(0), id, false); o == "stole" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the thief never got the abandoned lease")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := rowOf(t, d, id); r.status != "RUNNING" || r.runner != "thief" || r.attempt != 2 {
		t.Fatalf("%+v", r)
	}
}

func Test32HoldersOver8PlansRunEachPlanExactlyOnce(t *testing.T) {
	c, d, job := open(t, dsn()), db(t), unique("go_many")
	if _, err := d.Exec(fmt.Sprintf("CREATE TABLE %s_work (plan timestamptz, holder int)", job)); err != nil {
		t.Fatal(err)
	}
	defer d.Exec(fmt.Sprintf("DROP TABLE %s_work", job))
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			err := c.WithLease(context.Background(), job, plan(i%8), leasesched.LeaseOptions{RunnerID: fmt.Sprintf("h%d", i), StaleTimeout: 2 * time.Second},
				func(ctx context.Context, l *leasesched.Lease) error {
					time.Sleep(time.Duration(300+rand.Intn(300)) * time.Millisecond)
					if err := l.Check(); err != nil {
						return err
					}
					_, err := c.DB().ExecContext(ctx, fmt.Sprintf("INSERT INTO %s_work VALUES ($1, $2)", job), plan(i%8), i)
					return err
				})
			if err != nil && !errors.Is(err, leasesched.ErrConflicted) {
				errs <- err
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var plans, works, done int
	if err := d.QueryRow(fmt.Sprintf("SELECT count(DISTINCT plan), count(*) FROM %s_work", job)).Scan(&plans, &works); err != nil {
		t.Fatal(err)
	}
	if err := d.QueryRow("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SUCCESS' AND attempt = 1", job).Scan(&done); err != nil {
		t.Fatal(err)
	}
	if plans != 8 || works != 8 || done != 8 {
		t.Fatalf("plans %d, works %d, SUCCESS rows %d: each plan's work must run exactly once", plans, works, done)
	}
}

func TestAResultThatCannotBeStoredStillFinishesTheRun(t *testing.T) {
	c, d, job := open(t, dsn()), db(t), unique("go_unstored")
	values := []any{math.NaN(), make(chan int), map[string]any{"f": func() {}}, strings.Repeat("x", 17*1024), "nul \u0000 inside"}
	for i, v := range values {
		var l *leasesched.Lease
		err := c.WithLease(context.Background(), job, plan(i), leasesched.LeaseOptions{StaleTimeout: 3 * time.Second},
			func(ctx context.Context, lease *leasesched.Lease) error {
				l = lease
				lease.Result = v
				return nil
			})
		if err != nil {
			t.Fatalf("value %d: %v", i, err)
		}
		r := rowOf(t, d, l.ExecutionID)
		if r.status != "SUCCESS" || l.Finished != "SUCCESS" || l.ResultError == "" || !strings.HasPrefix(r.result.String, `{"result_not_stored": `) {
			t.Fatalf("value %d: %+v %q", i, r, l.ResultError)
		}
	}
	// FAILED path: the body's own error is returned, the run finished FAILED with it.
	own := errors.New("the body's own error")
	var l *leasesched.Lease
	err := c.WithLease(context.Background(), job, plan(30), leasesched.LeaseOptions{},
		func(ctx context.Context, lease *leasesched.Lease) error {
			l = lease
			lease.Result = math.Inf(1)
			return own
		})
	if err != own {
		t.Fatalf("got %v", err)
	}
	if r := rowOf(t, d, l.ExecutionID); r.status != "FAILED" || r.msg.String != own.Error() || !strings.Contains(r.result.String, "result_not_stored") {
		t.Fatalf("%+v", r)
	}
}

func TestLeaderRunDueAndRuntime(t *testing.T) {
	c, d := open(t, dsn()), db(t)
	name := unique("go_leader")
	err := c.Leader(context.Background(), name, leasesched.LeaderOptions{Holder: "a", TTL: 3 * time.Second},
		func(ctx context.Context, l *leasesched.Leader) error {
			if l.FencingToken <= 0 {
				t.Errorf("fencing token %d", l.FencingToken)
			}
			err := c.Leader(ctx, name, leasesched.LeaderOptions{Holder: "b"}, func(context.Context, *leasesched.Leader) error {
				return errors.New("b must not lead while a does")
			})
			var nl *leasesched.NotLeader
			if !errors.As(err, &nl) || nl.State.Holder != "a" {
				t.Errorf("want NotLeader held by a, got %v", err)
			}
			tx, err := d.Begin()
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if err := l.Fence(ctx, tx); err != nil && err != leasesched.ErrFenceUnavailable {
				return err
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := d.QueryRow("SELECT count(*) FROM lease_sched.lock_info($1)", name).Scan(&n); err != nil || n != 0 {
		t.Fatalf("released: %d %v", n, err)
	}

	// run_due for a defined job: every, stale_timeout and max_attempts from the definition.
	job := unique("go_due")
	if _, err := d.Exec("SELECT lease_sched.job_define($1, every => '1 day', stale_timeout => '20 seconds', max_attempts => 2)", job); err != nil {
		t.Fatal(err)
	}
	calls := 0
	fn := func(ctx context.Context, l *leasesched.Lease) (any, error) {
		calls++
		var v float64
		err := c.DB().QueryRowContext(ctx, "SELECT 12.5::float8").Scan(&v)
		return map[string]any{"total": v, "token": l.FencingToken}, err
	}
	first, err := c.RunDue(context.Background(), job, leasesched.DueOptions{}, fn)
	if err != nil || first.Outcome != "success" || calls != 1 {
		t.Fatalf("%+v %v", first, err)
	}
	var st float64
	var attempts int
	if err := d.QueryRow("SELECT extract(epoch FROM stale_after - started_at)::float8, max_attempts FROM lease_sched.sys_cron_executions WHERE id = $1::text::uuid",
		first.Claim.ExecutionID).Scan(&st, &attempts); err != nil {
		t.Fatal(err)
	}
	if st < 19 || st > 21 || attempts != 2 {
		t.Fatalf("claimed with the definition's settings? stale %v, max_attempts %d", st, attempts)
	}
	// daily slots: the same slot unless the two calls straddle midnight UTC
	again, err := c.RunDue(context.Background(), job, leasesched.DueOptions{}, fn)
	if err != nil || !(again.Outcome == "nothing_due" && calls == 1 || !again.PlanTime.Equal(first.PlanTime) && calls == 2) {
		t.Fatalf("%+v %v", again, err)
	}
	if r := rowOf(t, d, first.Claim.ExecutionID); r.status != "SUCCESS" || !strings.Contains(r.result.String, `"total": 12.5`) {
		t.Fatalf("%+v", r)
	}

	rt, err := c.StartRuntime(context.Background(), unique("go_rt"), nil, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rt.Touches() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	rt.Stop()
	touched := rt.Touches()
	if touched < 3 {
		t.Fatalf("%d touches", touched)
	}
	time.Sleep(500 * time.Millisecond)
	if rt.Touches() != touched {
		t.Fatal("touched after Stop")
	}
}

func TestAStealIsNoticedThroughListenBeforeTheNextHeartbeat(t *testing.T) {
	// stale_timeout 30 s: the next heartbeat is 10 s away, so a loss noticed sooner came from
	// the lease_sched_lost notification (pgx's WaitForNotification, found without importing pgx).
	c, d, job := open(t, dsn()), db(t), unique("go_listen")
	ready := make(chan *leasesched.Lease, 1)
	result := make(chan error, 1)
	go func() {
		result <- c.WithLease(context.Background(), job, plan(0), leasesched.LeaseOptions{StaleTimeout: 30 * time.Second},
			func(ctx context.Context, l *leasesched.Lease) error {
				ready <- l
				<-ctx.Done()
				return ctx.Err()
			})
	}()
	l := <-ready
	backendPid(t, d, "lease_sched lease "+l.ExecutionID) // its heartbeat connection is up
	time.Sleep(300 * time.Millisecond)                   // and LISTENing
	if o, _ := steal(t, d, job, plan(0), l.ExecutionID, true); o != "stole" {
		t.Fatalf("outcome %s", o)
	}
	select {
	case err := <-result:
		var lost *leasesched.LeaseLost
		if !errors.As(err, &lost) || lost.Reason != "notified on lease_sched_lost" {
			t.Fatalf("want a loss by notification, got %v", err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("not noticed before the next heartbeat")
	}
}

func TestABodyThatEndsWhileTheHeartbeatConnectionIsConnectingFinishesAtOnce(t *testing.T) {
	// Heartbeats go to a server that accepts and never answers; claims and finishes through a
	// working pool. Ending the body must not wait for that connect (stale_timeout 120 s).
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p := &proxy{ln: hole}
	beats, err := sql.Open("pgx", p.dsn())
	if err != nil {
		t.Fatal(err)
	}
	c := leasesched.New(db(t), beats)
	start := time.Now()
	var l *leasesched.Lease
	err = c.WithLease(context.Background(), unique("go_hole"), plan(0), leasesched.LeaseOptions{StaleTimeout: 120 * time.Second},
		func(ctx context.Context, lease *leasesched.Lease) error { l = lease; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 20*time.Second || l.Finished != "SUCCESS" {
		t.Fatalf("finished %q after %v", l.Finished, took)
	}
	beats.Close()
}
