package tests

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// TestClientLeaseLostOnRevoke: a kept lease revoked by an operator is
// reported on Lost at its next renewal, with ErrNotFound.
func TestClientLeaseLostOnRevoke(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"a": 1})
	l, err := c.Acquire(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s", Intents: fileIntent("/r", "MUTATES"), TTL: 600 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Revoke(ctx, l.ID()); err != nil || !ok {
		t.Fatalf("Revoke = %v, %v; want true", ok, err)
	}
	select {
	case <-l.Lost():
	case <-ctx.Done():
		t.Fatal("Lost not closed after the lease was revoked")
	}
	if err := l.Err(); !errors.Is(err, clientlib.ErrNotFound) {
		t.Errorf("Err = %v; want ErrNotFound", err)
	}
}

// TestClientAcquireWaitsInDaemon: a senior's Acquire on a junior's lease
// waits in the daemon and is granted by the junior's release (the junior's
// TTL is a minute, so nothing else could grant it).
func TestClientAcquireWaitsInDaemon(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"senior": 100, "junior": 200})
	jr, err := c.AcquireLease(ctx, "junior", "j", "FILE", "/db.ts", "MUTATES", time.Minute)
	if err != nil || !jr.Success {
		t.Fatalf("junior AcquireLease = %+v, %v", jr, err)
	}
	got := make(chan *clientlib.Lease, 1)
	go func() {
		l, err := c.Acquire(ctx, clientlib.AcquireRequest{
			AgentID: "senior", SessionID: "s", Intents: fileIntent("/db.ts", "MUTATES"), TTL: time.Minute,
		})
		if err != nil {
			t.Errorf("senior Acquire = %v", err)
		}
		got <- l
	}()
	waitForStats(t, ctx, c, "the senior to wait in the daemon", func(st *protocol.StatsResult) bool {
		return st.Waiters == 1
	})
	if ok, err := c.ReleaseLease(ctx, jr.LeaseID); err != nil || !ok {
		t.Fatalf("junior ReleaseLease = %v, %v", ok, err)
	}
	l := <-got
	if l == nil {
		return
	}
	if l.Fence() <= jr.Fence {
		t.Errorf("senior fence %d; want above the junior's %d", l.Fence(), jr.Fence)
	}
	if err := l.Release(ctx); err != nil {
		t.Error(err)
	}
}

// TestClientAcquireRetriesDie: a junior's Acquire on a senior's lease is
// told DIE, retries after wait_time, and is granted once the senior releases.
func TestClientAcquireRetriesDie(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"senior": 100, "junior": 200})
	sr, err := c.AcquireLease(ctx, "senior", "s", "FILE", "/a", "MUTATES", time.Minute)
	if err != nil || !sr.Success {
		t.Fatalf("senior AcquireLease = %+v, %v", sr, err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := c.Acquire(ctx, clientlib.AcquireRequest{
			AgentID: "junior", SessionID: "j", Intents: fileIntent("/a", "MUTATES"), TTL: time.Minute,
		})
		if err == nil {
			err = l.Release(ctx)
		}
		got <- err
	}()
	waitForStats(t, ctx, c, "the junior to be told DIE", func(st *protocol.StatsResult) bool {
		return st.Dies >= 1
	})
	if _, err := c.ReleaseLease(ctx, sr.LeaseID); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("junior Acquire = %v; want a grant after the senior released", err)
	}
}

// TestClientAcquireDeadline: Acquire gives up when its context ends,
// reporting the last denial, and leaves no lease behind.
func TestClientAcquireDeadline(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"senior": 100, "junior": 200})
	if r, err := c.AcquireLease(ctx, "senior", "s", "FILE", "/a", "MUTATES", time.Minute); err != nil || !r.Success {
		t.Fatal(r, err)
	}
	if r, err := c.AcquireLease(ctx, "junior", "j", "FILE", "/b", "MUTATES", time.Minute); err != nil || !r.Success {
		t.Fatal(r, err)
	}
	for _, tc := range []struct {
		agent, path, reason string
		timeout             time.Duration
	}{
		{"junior", "/a", "DIE", 400 * time.Millisecond},      // retried after each wait_time
		{"senior", "/a", "CONFLICT", 400 * time.Millisecond}, // its own lease in another session
		// Waits in the daemon until a tenth of the time before the
		// deadline (150 ms here, ample for the daemon's answer).
		{"senior", "/b", "WAIT", 1500 * time.Millisecond},
	} {
		short, cancel := context.WithTimeout(ctx, tc.timeout)
		_, err := c.Acquire(short, clientlib.AcquireRequest{
			AgentID: tc.agent, SessionID: "other", Intents: fileIntent(tc.path, "MUTATES"), TTL: time.Minute,
		})
		cancel()
		var de *clientlib.DenialError
		if !errors.As(err, &de) || !errors.Is(err, context.DeadlineExceeded) || de.Reason != tc.reason {
			t.Errorf("%s Acquire(%s) past its deadline = %v; want a %s *DenialError matching DeadlineExceeded",
				tc.agent, tc.path, err, tc.reason)
		}
	}
	waitForStats(t, ctx, c, "no lease or waiter left behind", func(st *protocol.StatsResult) bool {
		return st.Leases == 2 && st.Waiters == 0
	})
}

// TestClientAcquireSessionExpired: Acquire in an ended session fails at once
// with a SESSION_EXPIRED denial.
func TestClientAcquireSessionExpired(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"a": 1})
	if _, err := c.EndSession(ctx, "a", "s"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Acquire(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s", Intents: fileIntent("/x", "MUTATES"), TTL: time.Minute,
	})
	var de *clientlib.DenialError
	if !errors.As(err, &de) || de.Reason != "SESSION_EXPIRED" {
		t.Fatalf("Acquire in an ended session = %v; want a SESSION_EXPIRED denial", err)
	}
}

// TestClientCancelledWaitReleasesLateGrant: an acquire waiting in the daemon
// whose caller gave up is granted later; the client releases that grant at
// once instead of leaving it held until its TTL.
func TestClientCancelledWaitReleasesLateGrant(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"senior": 100, "junior": 200})
	jr, err := c.AcquireLease(ctx, "junior", "j", "FILE", "/a", "MUTATES", time.Minute)
	if err != nil || !jr.Success {
		t.Fatal(jr, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.AcquireOnce(wctx, clientlib.AcquireRequest{
			AgentID: "senior", SessionID: "s", Intents: fileIntent("/a", "MUTATES"),
			TTL: time.Minute, WaitTimeout: time.Minute,
		})
		done <- err
	}()
	waitForStats(t, ctx, c, "the senior to wait in the daemon", func(st *protocol.StatsResult) bool {
		return st.Waiters == 1
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled AcquireOnce = %v; want context.Canceled", err)
	}
	if _, err := c.ReleaseLease(ctx, jr.LeaseID); err != nil {
		t.Fatal(err)
	}
	waitForStats(t, ctx, c, "the late grant to be released", func(st *protocol.StatsResult) bool {
		return st.Grants == 2 && st.Leases == 0
	})
}

// TestClientTypedErrors: refusals come back as *clientlib.Error matching the
// sentinels.
func TestClientTypedErrors(t *testing.T) {
	_, c, ctx := startClient(t, map[string]int64{"a": 1})
	_, errBadPredicate := c.AcquireLease(ctx, "a", "s", "FILE", "/x", "EATS", time.Minute)
	_, errUnknown := c.AcquireLease(ctx, "ghost", "s", "FILE", "/x", "MUTATES", time.Minute)
	_, errNotFound := c.Heartbeat(ctx, "00000000-0000-0000-0000-000000000000", 0)
	if r, err := c.AcquireLease(ctx, "a", "s", "FILE", "/held", "MUTATES", time.Minute); err != nil || !r.Success {
		t.Fatal(r, err)
	}
	errConflict := c.RegisterAgent(ctx, "a", 2)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"bad predicate", errBadPredicate, clientlib.ErrInvalidArgument},
		{"unknown agent", errUnknown, clientlib.ErrUnknownAgent},
		{"heartbeat of an unknown lease", errNotFound, clientlib.ErrNotFound},
		{"re-register with another priority while holding", errConflict, clientlib.ErrPriorityConflict},
	} {
		var e *clientlib.Error
		if !errors.Is(tc.err, tc.want) || !errors.As(tc.err, &e) || errors.Is(tc.err, clientlib.ErrClosed) {
			t.Errorf("%s: error %v; want %v", tc.name, tc.err, tc.want)
		}
	}
}

// TestClientManyGoroutines: 100 goroutines share one client, each taking,
// renewing and releasing its own leases; every answer reaches its caller.
func TestClientManyGoroutines(t *testing.T) {
	const goroutines, rounds = 100, 20
	agents := map[string]int64{}
	for g := range goroutines {
		agents[fmt.Sprintf("g%d", g)] = int64(g + 1)
	}
	_, c, ctx := startClient(t, agents)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			agent := fmt.Sprintf("g%d", g)
			for i := range rounds {
				path := fmt.Sprintf("/g/%d/%d", g, i)
				r, err := c.AcquireLease(ctx, agent, "s", "FILE", path, "MUTATES", time.Minute)
				if err != nil || !r.Success || r.AgentID != agent || r.Resource != "FILE:"+path {
					t.Errorf("%s AcquireLease(%s) = %+v, %v; want its own grant", agent, path, r, err)
					return
				}
				exp, err := c.Heartbeat(ctx, r.LeaseID, 2*time.Minute)
				if err != nil || !exp.After(r.ExpiresAt) {
					t.Errorf("Heartbeat(%s) = %v, %v; want a later expiry than %v", r.LeaseID, exp, err, r.ExpiresAt)
				}
				if ok, err := c.ReleaseLease(ctx, r.LeaseID); err != nil || !ok {
					t.Errorf("ReleaseLease(%s) = %v, %v; want true", r.LeaseID, ok, err)
				}
			}
		}()
	}
	wg.Wait()
	if n, err := c.ActiveLeaseCount(ctx); err != nil || n != 0 {
		t.Errorf("ActiveLeaseCount = %d, %v; want 0", n, err)
	}
}
