package tests

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestClientRidesThroughRestart stops klockd (SIGKILL, or SIGTERM as a
// service restart does) while 16 goroutines have requests in flight on one
// client, a lease is kept alive by Acquire and another Acquire is parked in
// the daemon, then restarts it on the same state directory: the application
// sees no error, the kept lease keeps its id and is renewed after the
// restart, the parked Acquire is granted, and no resent acquire created a
// second lease.
func TestClientRidesThroughRestart(t *testing.T) {
	t.Run("kill", func(t *testing.T) { ridesThroughRestart(t, true) })
	t.Run("graceful", func(t *testing.T) { ridesThroughRestart(t, false) })
}

func ridesThroughRestart(t *testing.T, kill bool) {
	d := harness.Start(t, harness.Options{})
	c := d.Client(t)
	ctx := testCtx(t)

	const workers = 16
	agents := map[string]int64{"senior": 100, "junior": 200}
	for w := range workers {
		agents[fmt.Sprintf("w%d", w)] = int64(1000 + w)
	}
	registerAgents(t, ctx, c, agents)

	held, err := c.Acquire(ctx, clientlib.AcquireRequest{
		AgentID: "senior", SessionID: "s1", Intents: fileIntent("/held", "MUTATES"), TTL: 5 * time.Second,
	})
	if err != nil {
		t.Fatalf("Acquire(/held) = %v", err)
	}
	heldFence := held.Fence()

	// The junior holds /contended without keep-alive; the senior's Acquire
	// waits for it in the daemon (WAIT), across the restart.
	if r, err := c.AcquireLease(ctx, "junior", "j", "FILE", "/contended", "MUTATES", 1500*time.Millisecond); err != nil || !r.Success {
		t.Fatalf("junior AcquireLease(/contended) = %+v, %v", r, err)
	}
	type acquired struct {
		lease *clientlib.Lease
		err   error
	}
	parked := make(chan acquired, 1)
	go func() {
		l, err := c.Acquire(ctx, clientlib.AcquireRequest{
			// Its ttl leaves renewals room on a loaded machine: in cluster
			// mode each goes through etcd, and one CI run lost a 3 s lease
			// at load 9 after the restart.
			AgentID: "senior", SessionID: "s2", Intents: fileIntent("/contended", "MUTATES"), TTL: 10 * time.Second,
		})
		parked <- acquired{l, err}
	}()
	waitForStats(t, ctx, c, "the senior's Acquire to wait in the daemon", func(st *protocol.StatsResult) bool {
		return st.Waiters == 1
	})

	// Workers: acquire and release their own resource in a loop; fences
	// must only grow, across the restart too.
	var rounds atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			agent, path := fmt.Sprintf("w%d", w), fmt.Sprintf("/w/%d", w)
			var last uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := c.AcquireLease(ctx, agent, "s", "FILE", path, "MUTATES", 30*time.Second)
				if err != nil || !r.Success {
					errs <- fmt.Errorf("%s AcquireLease = %+v, %v; want a grant", agent, r, err)
					return
				}
				if r.Fence <= last {
					errs <- fmt.Errorf("%s fence %d after %d; fences must grow", agent, r.Fence, last)
					return
				}
				last = r.Fence
				// A release resent after a restart may report false: it was
				// applied before; only an error is a failure.
				if _, err := c.ReleaseLease(ctx, r.LeaseID); err != nil {
					errs <- fmt.Errorf("%s ReleaseLease = %v", agent, err)
					return
				}
				rounds.Add(1)
			}
		}()
	}
	waitFor(t, "200 rounds before the kill", func() bool { return rounds.Load() >= 200 })
	if kill {
		d.Kill(t)
	} else {
		d.Stop(t) // SIGTERM: waiters are answered SHUTTING_DOWN
	}
	restarted := time.Now()
	before := rounds.Load()
	d.Restart(t)
	waitFor(t, "200 rounds after the restart", func() bool { return rounds.Load() >= before+200 || len(errs) > 0 })
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	p := <-parked
	if p.err != nil {
		t.Fatalf("Acquire parked across the restart = %v; want a grant", p.err)
	}
	if p.lease.Resource() != "FILE:/contended" || p.lease.Fence() <= heldFence {
		t.Errorf("parked Acquire got %s fence %d; want FILE:/contended above fence %d", p.lease.Resource(), p.lease.Fence(), heldFence)
	}
	waitFor(t, "the kept lease to be renewed after the restart", func() bool {
		return held.ExpiresAt().After(restarted.Add(4 * time.Second))
	})
	if err := held.Err(); err != nil {
		t.Fatalf("kept lease Err = %v; want nil", err)
	}

	// Nothing else is active: no resent acquire left a second lease.
	leases, _, err := c.ListLeases(ctx, clientlib.LeaseFilter{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, l := range leases {
		got[l.LeaseID] = true
	}
	if len(leases) != 2 || !got[held.ID()] || !got[p.lease.ID()] {
		t.Errorf("active leases after the restart = %+v; want exactly %s and %s", leases, held.ID(), p.lease.ID())
	}
	for _, l := range []*clientlib.Lease{held, p.lease} {
		if err := l.Release(ctx); err != nil {
			t.Errorf("Release(%s) = %v", l.ID(), err)
		}
		if !errors.Is(l.Err(), clientlib.ErrLeaseReleased) {
			t.Errorf("Err after Release = %v; want ErrLeaseReleased", l.Err())
		}
	}
	if n, err := c.ActiveLeaseCount(ctx); err != nil || n != 0 {
		t.Errorf("ActiveLeaseCount after releasing = %d, %v; want 0", n, err)
	}
}

// TestClientLeaseLostWhileDaemonDown kills klockd for longer than a kept
// lease's TTL: Lost fires and Err says the lease could not be renewed.
func TestClientLeaseLostWhileDaemonDown(t *testing.T) {
	d, c, ctx := startClient(t, map[string]int64{"a": 1})
	l, err := c.Acquire(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s", Intents: fileIntent("/x", "MUTATES"), TTL: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.Kill(t)
	select {
	case <-l.Lost():
	case <-ctx.Done():
		t.Fatal("Lost not closed although the daemon stayed down past the lease's expiry")
	}
	if err := l.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Err = %v; want a renewal that ran out of time", err)
	}
	// A lost lease has ended: Release does not wait for the daemon.
	if err := l.Release(context.Background()); err != nil {
		t.Errorf("Release of a lost lease = %v; want nil", err)
	}
}
