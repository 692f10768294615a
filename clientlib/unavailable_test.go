package clientlib

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// unavailableFake answers the first n state changes UNAVAILABLE (only
// those of op, unless op is ""), then serves them.
func unavailableFake(t *testing.T, n int64, op string) *fakeDaemon {
	f := newFakeDaemon(t)
	var refused atomic.Int64
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		if req.Op == protocol.OpHello || req.Op == protocol.OpActiveLeaseCount || op != "" && req.Op != op || refused.Add(1) > n {
			return false
		}
		reply(nil, protocol.Errorf(protocol.CodeUnavailable, "klock: klockd cannot make state changes durable right now (ENOSPC: writing /s/log.0000000000000001: no space left on device); nothing was changed; retry later"))
		return true
	})
	return f
}

// TestUnavailableIsRetried: a call answered UNAVAILABLE is sent again, with
// backoff, and succeeds once the daemon can make changes durable.
func TestUnavailableIsRetried(t *testing.T) {
	f := unavailableFake(t, 3, "")
	c := dialFake(t, f, Options{})
	if err := c.RegisterAgent(testCtx(t), "a", 1); err != nil {
		t.Fatalf("RegisterAgent after 3 UNAVAILABLE answers = %v; want success", err)
	}
	if n := f.count(protocol.OpRegisterAgent); n != 4 {
		t.Fatalf("register_agent sent %d times; want 4", n)
	}
}

// TestUnavailableEndsWithATypedError: when the daemon stays unable to make
// changes durable, the call returns UNAVAILABLE (errors.Is ErrUnavailable,
// with the daemon's message) before its context's deadline, or at once
// with a negative UnavailableWait, or after UnavailableWait. A blocking
// Acquire ends the same way: its attempts retry UNAVAILABLE as every call
// does, and it has no second backoff loop of its own for it.
func TestUnavailableEndsWithATypedError(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		ctx   time.Duration
		tries func(int) bool
	}{
		{"context deadline", Options{}, 400 * time.Millisecond, func(n int) bool { return n >= 2 }},
		{"no retry", Options{UnavailableWait: -1}, 10 * time.Second, func(n int) bool { return n == 1 }},
		{"UnavailableWait", Options{UnavailableWait: 300 * time.Millisecond}, 10 * time.Second, func(n int) bool { return n >= 2 }},
	} {
		for _, op := range []string{protocol.OpRegisterAgent, protocol.OpAcquire} {
			t.Run(tc.name+"/"+op, func(t *testing.T) {
				f := unavailableFake(t, 1<<40, op)
				c := dialFake(t, f, tc.opts)
				ctx, cancel := context.WithTimeout(context.Background(), tc.ctx)
				defer cancel()
				err := c.RegisterAgent(ctx, "a", 1)
				if op == protocol.OpAcquire {
					if err != nil {
						t.Fatal(err)
					}
					_, err = c.Acquire(ctx, AcquireRequest{AgentID: "a", SessionID: "s", Intents: oneIntent("/x"), TTL: time.Minute})
				}
				var e *Error
				if !errors.Is(err, ErrUnavailable) || !errors.As(err, &e) || e.Message == "" {
					t.Fatalf("%s = %v; want an *Error matching ErrUnavailable with the daemon's message", op, err)
				}
				if ctx.Err() != nil {
					t.Errorf("the error came after the context ended (%v); want it before", ctx.Err())
				}
				if n := f.count(op); !tc.tries(n) {
					t.Errorf("%s sent %d times", op, n)
				}
			})
		}
	}
}
