package server

import (
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// gatherOrFail runs pace.Gather(sub) and fails the test if it has not
// returned within a minute: with an hour's gap, only a hurry returns it.
func gatherOrFail(t *testing.T, pace *Pace, sub *Subscription, while func(), what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pace.Gather(sub)
	}()
	while()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("Gather still waits after %s: a paced reader must be hurried", what)
	}
}

// TestPaceIsHurriedByAHalfFullBufferAndByTheEnd: a paced reader waits for
// the gap only while its stream has room; half the buffer pending, or the
// stream's end (unwatch, shutdown), returns Gather at once.
func TestPaceIsHurriedByAHalfFullBufferAndByTheEnd(t *testing.T) {
	ts := start(t, Config{WatchBuffer: 8})
	sub, err := ts.Subscribe(WatchFilter{})
	if err != nil {
		t.Fatal(err)
	}
	c := ts.dial(t)
	register(c, 1, "a", 1)
	pace := &Pace{gap: time.Hour}
	pace.Gather(sub) // the first batch is not held: nothing was taken before

	gatherOrFail(t, pace, sub, func() {
		for i := uint64(0); i < 4; i++ { // 4 grants: half of 8
			c.call(10+i, protocol.OpAcquire, acquireArgs("a", "/p/"+itoa(int(i)), 60000, 0), &protocol.Grant{})
		}
	}, "4 of 8 events are pending")
	if evs, open := sub.Take(nil); len(evs) != 4 || !open {
		t.Fatalf("took %d events (open %v); want the 4 grants", len(evs), open)
	}

	gatherOrFail(t, pace, sub, func() { ts.Unsubscribe(sub) }, "the stream ended")
	if evs, open := sub.Take(nil); len(evs) != 0 || open {
		t.Fatalf("took %d events (open %v) after unsubscribing; want none, and the stream closed", len(evs), open)
	}
}

// TestTakeClearsAStaleHurry: a hurry left by a batch already taken does
// not cut the next gap short (the token is taken with the events).
func TestTakeClearsAStaleHurry(t *testing.T) {
	ts := start(t, Config{WatchBuffer: 2})
	sub, err := ts.Subscribe(WatchFilter{})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Unsubscribe(sub)
	c := ts.dial(t)
	register(c, 1, "a", 1)
	c.call(2, protocol.OpAcquire, acquireArgs("a", "/stale", 60000, 0), &protocol.Grant{})
	if evs, _ := sub.Take(nil); len(evs) != 1 {
		t.Fatalf("took %d events; want the grant", len(evs))
	}
	select {
	case <-sub.hurry:
		t.Fatal("a hurry token outlived the Take of the events that set it")
	default:
	}
}
