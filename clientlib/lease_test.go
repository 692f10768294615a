package clientlib

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

func oneIntent(path string) []Intent {
	return []Intent{{ResourceType: "FILE", ResourcePath: path, Predicate: "MUTATES"}}
}

// TestLateGrantReleasedOnQuietClient: an acquire abandoned by its caller is
// granted later; with no other call in flight, the client still reads that
// answer and releases the lease.
func TestLateGrantReleasedOnQuietClient(t *testing.T) {
	f := newFakeDaemon(t)
	held := make(chan func(), 1)
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		if req.Op != protocol.OpAcquire || req.Args.ResourcePath != "/late" {
			return false
		}
		res, perr := f.handle(req) // granted now, answered later
		held <- func() { reply(res, perr) }
		return true
	})
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.AcquireOnce(actx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/late"), TTL: time.Minute})
		done <- err
	}()
	answer := <-held
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled AcquireOnce = %v; want context.Canceled", err)
	}
	answer()
	f.waitFor("the late grant to be released", func() bool { return f.ops[protocol.OpRelease] == 1 && len(f.leases) == 0 })
}

// TestAcquireRetriesDieAndKeepsAlive: Acquire is told DIE while another
// agent holds the resource, retries, is granted once that lease expires, and
// then renews its own lease until Release.
func TestAcquireRetriesDieAndKeepsAlive(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	for _, a := range []string{"senior", "junior"} {
		p := map[string]int64{"senior": 1, "junior": 2}[a]
		if err := c.RegisterAgent(ctx, a, p); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := c.AcquireLease(ctx, "senior", "s", "FILE", "/x", "MUTATES", 300*time.Millisecond); err != nil || !r.Success {
		t.Fatal(r, err)
	}
	l, err := c.Acquire(ctx, AcquireRequest{AgentID: "junior", SessionID: "j", Intents: oneIntent("/x"), TTL: 900 * time.Millisecond})
	if err != nil {
		t.Fatalf("Acquire = %v; want a grant once the senior's lease expired", err)
	}
	if f.count(protocol.OpAcquire) < 3 {
		t.Errorf("daemon saw %d acquires; want the junior to have retried after DIE", f.count(protocol.OpAcquire))
	}
	// Renewed several times: still held well past its first expiry.
	first := l.ExpiresAt()
	f.waitFor("two renewals", func() bool { return f.ops[protocol.OpHeartbeat] >= 2 })
	if err := l.Err(); err != nil {
		t.Fatalf("Err while kept alive = %v", err)
	}
	if !l.ExpiresAt().After(first) {
		t.Errorf("ExpiresAt %v not after the first expiry %v", l.ExpiresAt(), first)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.ActiveLeaseCount(ctx); n != 0 {
		t.Errorf("ActiveLeaseCount after Release = %d; want 0", n)
	}
}

// TestLeaseLostWhenRenewalRefused: a renewal answered NOT_FOUND closes Lost.
func TestLeaseLostWhenRenewalRefused(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/x"), TTL: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Revoke(ctx, l.ID()); err != nil || !ok {
		t.Fatal(ok, err)
	}
	select {
	case <-l.Lost():
	case <-ctx.Done():
		t.Fatal("Lost not closed after the lease was revoked")
	}
	if !errors.Is(l.Err(), ErrNotFound) {
		t.Errorf("Err = %v; want ErrNotFound", l.Err())
	}
	if err := l.Release(ctx); err != nil {
		t.Errorf("Release of a lost lease = %v; want nil", err)
	}
}

// TestCloseLosesKeptLeases: closing the client stops renewals and says so.
func TestCloseLosesKeptLeases(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/x"), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-l.Lost()
	if !errors.Is(l.Err(), ErrClosed) {
		t.Errorf("Err after Close = %v; want ErrClosed", l.Err())
	}
}

func TestWaitFor(t *testing.T) {
	if w, ok := waitFor(context.Background(), 30*time.Second); w != 30*time.Second || !ok {
		t.Errorf("waitFor(no deadline) = %v, %v; want 30s, true", w, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if w, ok := waitFor(ctx, 30*time.Second); w < 9*time.Second || w > 9750*time.Millisecond || !ok {
		t.Errorf("waitFor(10s left) = %v, %v; want about 9.75s, true", w, ok)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel2()
	if w, ok := waitFor(short, 30*time.Second); w != 0 || ok {
		t.Errorf("waitFor(30ms left) = %v, %v; want 0, false", w, ok)
	}
}

// TestKeepAliveRedialsOnceBeforeGivingUp: the daemon restarts while the
// redial backoff sleeps far past the lease's expiry; before declaring the
// lease lost, the keep-alive makes one immediate redial and renewal, and
// keeps the lease.
func TestKeepAliveRedialsOnceBeforeGivingUp(t *testing.T) {
	f := newFakeDaemon(t)
	c, l, ctx := keptLease(t, f, Options{MaxBackoff: time.Minute}, 3*time.Second)
	// The next redial waits a minute, and the daemon restarts (its state
	// kept) before the first renewal finds the connection broken.
	c.mu.Lock()
	c.backoff = time.Minute
	c.mu.Unlock()
	f.restart()
	f.waitFor("a renewal after the restart", func() bool { return f.ops[protocol.OpHeartbeat] >= 1 })
	select {
	case <-l.Lost():
		t.Fatalf("lease lost although the daemon was back before it expired: %v", l.Err())
	default:
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKeepAliveUsesItsOwnClock: the daemon's expires_at is on the daemon's
// lease clock, which may be far from this process's wall clock (a step of
// the wall clock, a suspend); the keep-alive measures the lease from when
// it sent each request, so a daemon an hour behind neither loses the lease
// nor makes ExpiresAt a time in the past.
func TestKeepAliveUsesItsOwnClock(t *testing.T) {
	f := newFakeDaemon(t)
	const behind = int64(time.Hour / time.Millisecond)
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		res, perr := f.handle(req)
		switch r := res.(type) {
		case protocol.Grant:
			r.AcquiredAt, r.ExpiresAt = r.AcquiredAt-behind, r.ExpiresAt-behind
			res = r
		case protocol.HeartbeatResult:
			r.ExpiresAt -= behind
			res = r
		}
		reply(res, perr)
		return true
	})
	_, l, ctx := keptLease(t, f, Options{}, 600*time.Millisecond)
	if left := time.Until(l.ExpiresAt()); left <= 0 || left > 600*time.Millisecond {
		t.Fatalf("ExpiresAt is %v from now; want within the 600ms ttl", left)
	}
	f.waitFor("three renewals", func() bool { return f.ops[protocol.OpHeartbeat] >= 3 })
	select {
	case <-l.Lost():
		t.Fatalf("lease lost: %v", l.Err())
	default:
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// keptLease dials f with opts, registers agent "a" and takes a kept lease
// on FILE:/x with ttl.
func keptLease(t *testing.T, f *fakeDaemon, opts Options, ttl time.Duration) (*Client, *Lease, context.Context) {
	t.Helper()
	c := dialFake(t, f, opts)
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/x"), TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return c, l, ctx
}
