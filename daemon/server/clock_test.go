package server

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// fakeClock is a Clock the test moves: advance moves both clocks, as time
// passing does; step moves only the wall clock, as NTP or date -s does.
type fakeClock struct {
	mu   sync.Mutex
	wall time.Time
	mono time.Duration
	bomb atomic.Bool // Mono panics, as a bug would
}

func newFakeClock() *fakeClock {
	return &fakeClock{wall: time.UnixMilli(1_800_000_000_000), mono: time.Hour}
}

func (c *fakeClock) Wall() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wall
}

func (c *fakeClock) Mono() time.Duration {
	if c.bomb.Load() {
		panic("test: clock")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall, c.mono = c.wall.Add(d), c.mono+d
}

func (c *fakeClock) step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall = c.wall.Add(d)
}

// TestWallClockStepsNeitherExpireNorExtend: leases follow the monotonic
// clock. A step of the wall clock forward (2 h) does not expire a 60 s
// lease, nor does a step back extend it: a heartbeat gives it 60 s from
// the lease clock's now, and only 60 s passing expires it. Times in
// answers are Unix ms, starting from the wall clock at start.
func TestWallClockStepsNeitherExpireNorExtend(t *testing.T) {
	clock := newFakeClock()
	startMS := clock.Wall().UnixMilli()
	ts := start(t, Config{Clock: clock})
	c := ts.dial(t)
	register(c, 1, "holder", 1)
	register(c, 2, "other", 2)
	var g protocol.Grant
	c.call(3, protocol.OpAcquire, acquireArgs("holder", "/x", 60000, 0), &g)
	if g.AcquiredAt != startMS || g.ExpiresAt != startMS+60000 {
		t.Fatalf("grant times = %d..%d; want %d..%d (Unix ms from the wall clock at start)", g.AcquiredAt, g.ExpiresAt, startMS, startMS+60000)
	}
	active := func(id uint64) int {
		var n protocol.CountResult
		c.call(id, protocol.OpActiveLeaseCount, nil, &n)
		return n.Count
	}

	clock.step(2 * time.Hour)
	if n := active(4); n != 1 {
		t.Fatalf("after the wall clock stepped 2 h forward: %d active leases; want 1", n)
	}
	var d protocol.Denial
	c.call(5, protocol.OpAcquire, acquireArgs("other", "/x", 60000, 0), &d)
	if d.Success || d.Reason != protocol.ReasonDie {
		t.Fatalf("acquire by another agent after the step = %+v; want DIE: the lease still holds", d)
	}

	clock.step(-4 * time.Hour)
	clock.advance(30 * time.Second)
	var hb protocol.HeartbeatResult
	a := &protocol.Args{LeaseID: g.LeaseID}
	a.Set(protocol.ArgLeaseID)
	c.call(6, protocol.OpHeartbeat, a, &hb)
	if hb.ExpiresAt != startMS+30000+60000 {
		t.Fatalf("heartbeat after the wall clock stepped back = expires_at %d; want %d (30 s of lease time later)", hb.ExpiresAt, startMS+90000)
	}

	clock.advance(59 * time.Second)
	if n := active(7); n != 1 {
		t.Fatalf("59 s after the heartbeat: %d active leases; want 1", n)
	}
	clock.advance(time.Second)
	if n := active(8); n != 0 {
		t.Fatalf("60 s after the heartbeat: %d active leases; want 0", n)
	}
	var st protocol.StatsResult
	c.call(9, protocol.OpStats, nil, &st)
	if st.UptimeMS != 90000 {
		t.Fatalf("uptime = %d ms; want 90000 (monotonic time only)", st.UptimeMS)
	}
}

// TestEngineTimeIsTheWallClockWithoutSteps: while the wall clock does not
// step, engine time is the wall clock in Unix ms exactly, whatever the
// sub-millisecond phase of the start.
func TestEngineTimeIsTheWallClockWithoutSteps(t *testing.T) {
	clock := newFakeClock()
	clock.advance(900 * time.Microsecond)
	s := New(Config{Engine: engine.New(engine.Config{}), Clock: clock})
	defer s.Close()
	for range 50 {
		clock.advance(170 * time.Microsecond)
		if got, want := s.nowMS(), clock.Wall().UnixMilli(); got != want {
			t.Fatalf("engine time %d; want the wall clock %d", got, want)
		}
	}
}
