package clientlib

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// TestAcquireBindsByDefault: every acquire sends bind "process" unless the
// request says BindNone, and a grant's bound pid reaches the caller. (The
// real klockd binding and ending leases is tested in tests/.)
func TestAcquireBindsByDefault(t *testing.T) {
	f := newFakeDaemon(t)
	var mu sync.Mutex
	binds := map[string]string{} // path -> bind sent
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		if req.Op == protocol.OpAcquire || req.Op == protocol.OpAcquireMany {
			mu.Lock()
			path := req.Args.ResourcePath
			if req.Op == protocol.OpAcquireMany {
				path = req.Args.Intents[0].ResourcePath
			}
			binds[path] = req.Args.Bind
			mu.Unlock()
			if req.Args.TTL == 0 && req.Args.Bind == "process" {
				reply(protocol.Grant{Success: true, LeaseID: "L0", AgentID: req.Args.AgentID, SessionID: req.Args.SessionID,
					Resource: "FILE:" + path, Predicate: "MUTATES", AcquiredAt: 1, ExpiresAt: 0, Fence: 1, BoundPID: 4242}, nil)
				return true
			}
			if req.Op == protocol.OpAcquireMany {
				reply(protocol.Denial{Reason: protocol.ReasonDie, WaitTime: 1, HeldBy: "x", Message: "held"}, nil)
				return true
			}
		}
		return false
	})
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, "a", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AcquireLease(ctx, "a", "s", "FILE", "/seed", "MUTATES", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AcquireOnce(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/none"), TTL: time.Minute, Bind: BindNone}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AcquireMany(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/many"), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	r, err := c.AcquireOnce(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/nottl")})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Success || r.BoundPID != 4242 || !r.ExpiresAt.IsZero() {
		t.Errorf("grant without a ttl = %+v; want bound pid 4242 and a zero ExpiresAt", r)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]string{"/seed": "process", "/none": "none", "/many": "process", "/nottl": "process"}
	for p, b := range want {
		if binds[p] != b {
			t.Errorf("acquire of %s sent bind %q; want %q", p, binds[p], b)
		}
	}
}

// TestLeaseWithoutTTLIsNotRenewed: Acquire of a bound lease without a ttl
// keeps it without heartbeats (there is no ttl to renew) until Release,
// and Client.Close still reports it lost.
func TestLeaseWithoutTTLIsNotRenewed(t *testing.T) {
	f := newFakeDaemon(t)
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		if req.Op != protocol.OpAcquire {
			return false
		}
		reply(protocol.Grant{Success: true, LeaseID: "L" + req.Args.ResourcePath, AgentID: req.Args.AgentID, SessionID: req.Args.SessionID,
			Resource: "FILE:" + req.Args.ResourcePath, Predicate: "MUTATES", AcquiredAt: 1, Fence: 1, BoundPID: 4242}, nil)
		return true
	})
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	l, err := c.Acquire(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/a")})
	if err != nil {
		t.Fatal(err)
	}
	// Round trips while the keep-alive runs: a lease treated as expiring
	// at its zero ExpiresAt would be renewed, fail and be lost meanwhile.
	for range 200 {
		if _, err := c.ActiveLeaseCount(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if l.Err() != nil || f.count(protocol.OpHeartbeat) != 0 || !l.ExpiresAt().IsZero() {
		t.Fatalf("lease without a ttl: err %v, %d heartbeats, expires %v; want held, never renewed, no expiry",
			l.Err(), f.count(protocol.OpHeartbeat), l.ExpiresAt())
	}
	if err := l.Release(ctx); err != nil || !errors.Is(l.Err(), ErrLeaseReleased) {
		t.Fatalf("Release = %v, Err %v", err, l.Err())
	}
	kept, err := c.Acquire(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/b")})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-kept.Lost()
	if !errors.Is(kept.Err(), ErrClosed) {
		t.Errorf("lease without a ttl after Close: %v; want ErrClosed", kept.Err())
	}
}
