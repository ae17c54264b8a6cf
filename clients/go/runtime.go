package leasesched

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"
)

// Runtime is a registered runtime (lease_sched.runtime_register), touched every Every in the
// background until Stop.
type Runtime struct {
	ID   string
	Name string

	touches int64
	stop    chan struct{}
	once    sync.Once
	done    chan struct{}
}

// Touches is the number of acknowledged touches so far.
func (r *Runtime) Touches() int64 { return atomic.LoadInt64(&r.touches) }

// Stop stops touching and waits for the background goroutine.
func (r *Runtime) Stop() {
	r.once.Do(func() { close(r.stop) })
	<-r.done
}

// StartRuntime registers a runtime and touches it every `every` (default 15 s) on a
// short statement through the client's pool, until Stop.
func (c *Client) StartRuntime(ctx context.Context, name string, metadata map[string]any, every time.Duration) (*Runtime, error) {
	if every <= 0 {
		every = 15 * time.Second
	}
	if metadata == nil {
		metadata = map[string]any{}
	}
	meta, err := json.Marshal(metadata)
	if err != nil {
		return nil, err
	}
	r := &Runtime{Name: name, stop: make(chan struct{}), done: make(chan struct{})}
	if err := c.db.QueryRowContext(ctx, "SELECT lease_sched.runtime_register($1, $2::text::jsonb)::text", name, string(meta)).Scan(&r.ID); err != nil {
		return nil, err
	}
	go func() {
		defer close(r.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-t.C:
			}
			tctx, cancel := context.WithTimeout(context.Background(), every+5*time.Second)
			var ok any
			if c.db.QueryRowContext(tctx, "SELECT lease_sched.runtime_touch($1::text::uuid)", r.ID).Scan(&ok) == nil {
				atomic.AddInt64(&r.touches, 1)
			}
			cancel()
		}
	}()
	return r, nil
}
