package server

import (
	"testing"

	"github.com/klockd/klock/protocol"
)

// watchArgs is a watch with the given filters ("" for none).
func watchArgs(agent, prefix string) *protocol.Args {
	a := &protocol.Args{AgentID: agent, ResourcePrefix: prefix}
	if agent != "" {
		a.Set(protocol.ArgAgentID)
	}
	if prefix != "" {
		a.Set(protocol.ArgResourcePrefix)
	}
	return a
}

func TestSubscriberThatNeverReadsOverflowsWithoutBlocking(t *testing.T) {
	ts := start(t, Config{WatchBuffer: 4})
	sub, err := ts.Subscribe(WatchFilter{})
	if err != nil {
		t.Fatal(err)
	}
	c := ts.dial(t)
	register(c, 1, "a", 1)
	// Far more events than the buffer holds; nobody takes them. Every
	// request is still answered: publishing never waits.
	for i := uint64(0); i < 20; i++ {
		var g protocol.Grant
		c.call(10+2*i, protocol.OpAcquire, acquireArgs("a", "/x", 60000, 0), &g)
		rel := &protocol.Args{LeaseID: g.LeaseID}
		rel.Set(protocol.ArgLeaseID)
		c.call(11+2*i, protocol.OpRelease, rel, &protocol.ReleaseResult{})
	}
	n := len(takeAll(sub))
	if n != 4 || !sub.Overflowed() {
		t.Fatalf("received %d events, overflowed %v; want the 4 buffered, then the end by overflow", n, sub.Overflowed())
	}
	if ts.Unsubscribe(sub) {
		t.Fatal("Unsubscribe of an overflowed stream reported it open")
	}
	ts.mu.Lock()
	on := ts.eng.Events() != nil || len(ts.subs) != 0
	ts.mu.Unlock()
	if on {
		t.Fatal("events are still built with no subscriber left")
	}
}

func TestWatchEventsWaitForTheJournal(t *testing.T) {
	j := &panicJournal{panicked: true}
	ts := start(t, Config{Journal: j})
	sub, err := ts.Subscribe(WatchFilter{ResourcePrefix: "FILE:/j"})
	if err != nil {
		t.Fatal(err)
	}
	c := ts.dial(t)
	register(c, 1, "a", 1)
	c.call(2, protocol.OpAcquire, acquireArgs("a", "/other", 60000, 0), &protocol.Grant{})
	c.call(3, protocol.OpAcquire, acquireArgs("a", "/j", 60000, 0), &protocol.Grant{})
	<-sub.Ready()
	evs, open := sub.Take(nil)
	if len(evs) != 1 || !open {
		t.Fatalf("took %d events (open %v); want the one grant of FILE:/j", len(evs), open)
	}
	ev := evs[0]
	if ev.Resource != "FILE:/j" || ev.Seq != 3 {
		t.Fatalf("event %+v; want the grant of FILE:/j at journal sequence 3 (the filter skips /other)", ev)
	}
	ts.Unsubscribe(sub)
}

// takeAll takes the events of sub until its stream ends.
func takeAll(sub *Subscription) []Watched {
	var all, batch []Watched
	for open := true; open; {
		<-sub.Ready()
		batch, open = sub.Take(batch)
		all = append(all, batch...)
	}
	return all
}

func TestWatchLimits(t *testing.T) {
	ts := start(t, Config{MaxWatches: 2})
	c := ts.dial(t)
	var w protocol.WatchResult
	c.call(1, protocol.OpWatch, nil, &w)
	c.call(2, protocol.OpWatch, watchArgs("", "FILE:/"), &w)
	if r := c.call(3, protocol.OpWatch, nil, nil); r.OK || r.Error.Code != protocol.CodeResourceExhausted {
		t.Fatalf("third watch answered %+v; want RESOURCE_EXHAUSTED", r)
	}
	if _, err := ts.Subscribe(WatchFilter{}); err == nil {
		t.Fatal("Subscribe past MaxWatches succeeded")
	}
	if r := c.call(4, protocol.OpWatch, watchArgs("", string(make([]byte, 5000))), nil); r.OK || r.Error.Code != protocol.CodeInvalidArgument {
		t.Fatalf("watch with a 5000-byte prefix answered %+v; want INVALID_ARGUMENT", r)
	}
	var u protocol.UnwatchResult
	uw := &protocol.Args{WatchID: w.WatchID}
	uw.Set(protocol.ArgWatchID)
	c.call(5, protocol.OpUnwatch, uw, &u)
	if !u.Unwatched {
		t.Fatal("unwatch of an open watch reported false")
	}
	c.call(6, protocol.OpUnwatch, uw, &u)
	if u.Unwatched {
		t.Fatal("second unwatch reported true")
	}
	// The slot is free again; closing the connection ends the rest
	// (start's cleanup checks no pump goroutine is left).
	c.call(7, protocol.OpWatch, nil, &w)
	register(c, 8, "a", 1)
	c.send(9, protocol.OpAcquire, acquireArgs("a", "/x", 60000, 0))
	// The grant's answer and both watches' events come in any order.
	for got := 0; got < 3; got++ {
		r := c.recv()
		switch r.ID {
		case 9:
			if !r.OK {
				t.Fatalf("acquire: %+v", r.Error)
			}
		case 1, 7:
			var ev protocol.WatchEvent
			if err := protocol.DecodeResult(r.Result, &ev); err != nil || ev.Event != protocol.EventGrant || ev.ExpiresAt == 0 {
				t.Fatalf("watch %d saw %+v (%v); want the grant with its expiry", r.ID, ev, err)
			}
		default:
			t.Fatalf("unexpected answer %+v", r)
		}
	}
}

// TestWatchEventsAreNotOps: stats' ops counts requests answered, not the
// events a watch streams.
func TestWatchEventsAreNotOps(t *testing.T) {
	ts := start(t, Config{})
	w := ts.dial(t)
	var wr protocol.WatchResult
	w.call(1, protocol.OpWatch, nil, &wr)
	c := ts.dial(t)
	register(c, 1, "a", 1)
	for i := uint64(0); i < 5; i++ {
		c.call(2+i, protocol.OpAcquire, acquireArgs("a", "/ops", 60000, 0), &protocol.Grant{})
	}
	for i := 0; i < 5; i++ {
		if r := w.recv(); r.ID != 1 {
			t.Fatalf("answer %+v; want an event of watch 1", r)
		}
	}
	var st protocol.StatsResult
	c.call(10, protocol.OpStats, nil, &st)
	if st.Ops != 7 {
		t.Fatalf("ops = %d; want 7 (watch, register, 5 acquires), not the 5 events", st.Ops)
	}
}

// TestStatsOpsCountsClosedAndOpenConnections: ops counts the answers of
// connections since closed as well as those of the open ones (each
// connection counts its own; Server.opsTotal).
func TestStatsOpsCountsClosedAndOpenConnections(t *testing.T) {
	ts := start(t, Config{})
	gone := ts.dial(t)
	register(gone, 1, "a", 1)
	gone.call(2, protocol.OpHello, nil, &protocol.HelloResult{})
	gone.nc.Close()
	waitFor(t, "the closed connection to be forgotten", func() bool { return ts.nconns.Load() == 0 })
	c := ts.dial(t)
	c.call(1, protocol.OpHello, nil, &protocol.HelloResult{})
	var st protocol.StatsResult
	c.call(2, protocol.OpStats, nil, &st)
	if st.Ops != 3 {
		t.Fatalf("ops = %d; want 3 (register and hello on the closed connection, hello on this one)", st.Ops)
	}
}
