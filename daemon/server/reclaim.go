package server

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Memory comes back after a large release. Go returns freed heap to the
// kernel only slowly, and only after a collection that an idle daemon may
// not run for minutes: after an end_session of a million leases, klockd's
// RSS stayed where it was. So once a second the daemon compares the leases
// and parked requests it holds with the most it held since it last gave
// memory back, and when at least half of them, and at least reclaimMin,
// have gone, it collects and returns the free memory to the kernel
// (debug.FreeOSMemory), off the engine lock.
//
// It waits for the release to end first: a large end_session goes in steps
// over a second or more, and memory given back half way through is taken
// again by the rest of it (the garbage of the later steps, and in durable
// mode the records the journal writes for them), which the runtime then
// keeps. So it gives memory back only once the count has fallen by less
// than reclaimSettle in the last second.
//
// It gives memory back after a large growth too, once that has settled.
// While leases are taken by the hundred thousand, the collector lets the
// heap grow to twice what it held live at its last cycle, and the runtime
// keeps what it grew to: a daemon that took a million leases and then went
// quiet held ~1.6 times its live heap for as long as it stayed quiet
// (BENCHMARKS.md "Scale (issue 18)").
//
// And it gives memory back once traffic has quietened. Requests leave
// garbage, and the collector lets it pile up to as much again as the live
// heap before it collects (GOGC=100): a daemon holding a million leases
// grew from ~1.1 to ~2 times its live heap under traffic, and kept what
// it grew to once the traffic stopped, for good (the runtime returns free
// memory only above ~1.1 times the collector's goal, and a collection
// every two minutes on an idle daemon frees nothing it can return). So
// when the heap holds, above what its last collection found live, at
// least reclaimIdleMin or a reclaimIdleShare-th of the live heap in
// garbage and free memory, at least that much has been allocated since
// memory was last given back, at least reclaimIdleGap ago, and less than
// reclaimIdleAlloc was allocated in each of the last reclaimIdleTicks
// seconds, it collects and gives back (a pause of one second is often the
// gap before the next burst, which should not find a collection of a
// large heap marking). That costs one collection (about half a CPU second
// at a million leases) while the daemon is idle or nearly so, at most one
// per reclaimIdleGap; busy, the collector is left as it is (a lower GOGC
// or a memory limit under traffic made other clients wait much longer
// while one paged through a million leases; BENCHMARKS.md, session 5).

const (
	// reclaimMin is the smallest drop (leases + parked requests) that gives
	// memory back: a few hundred bytes each, tens of MiB in all.
	reclaimMin = 50_000
	// reclaimSettle is the change in a second below which a release, or
	// a growth, is taken to have ended.
	reclaimSettle = reclaimMin / 10
	// reclaimEvery is how often the drop is checked.
	reclaimEvery = time.Second

	// reclaimIdleMin is the least garbage and free memory above the live
	// heap that an idle daemon gives back, and reclaimIdleShare the share
	// of the live heap the threshold follows above it (1/32: 8.5 MiB at a
	// million leases, about what a second of one client's acquire/release
	// pairs leaves).
	reclaimIdleMin   = 8 << 20
	reclaimIdleShare = 32
	// reclaimIdleAlloc is the most allocated in a second (reclaimEvery)
	// by a daemon that counts as idle: a few hundred requests.
	reclaimIdleAlloc = 256 << 10
	// reclaimIdleTicks is how many seconds in a row a daemon is idle
	// before it gives back.
	reclaimIdleTicks = 2
	// reclaimIdleGap is the least time, in ticks, from one give-back to
	// an idle one: bursts with pauses between them cost at most one
	// collection this often.
	reclaimIdleGap = 10
)

// reclaimLoop checks for a large drop every reclaimEvery until shutdown.
func (s *Server) reclaimLoop() {
	t := time.NewTicker(reclaimEvery)
	defer t.Stop()
	r := newReclaimer(s.heldCount())
	var h heapReclaimer
	m := newHeapMeter()
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
		}
		count := r.tick(s.heldCount())
		idle := h.tick(m.read())
		if count || idle {
			debug.FreeOSMemory()
			r.gaveBack(s.heldCount())
			h.gaveBack(m.read())
		}
	}
}

// reclaimer decides, from the count held at each tick, when to give
// memory back.
type reclaimer struct {
	peak  int // the most held since memory was last given back
	floor int // held when memory was last given back
	last  int // held at the last tick
}

func newReclaimer(held int) reclaimer { return reclaimer{peak: held, floor: held, last: held} }

// tick takes the count held now and reports whether to give memory back:
// a big drop from the peak (bigDrop) that has settled, or a big growth
// from the floor (bigGrowth) that has stopped.
func (r *reclaimer) tick(now int) bool {
	r.peak = max(r.peak, now)
	fell, rose := r.last-now, now-r.last
	r.last = now
	if fell < reclaimSettle && bigDrop(r.peak, now) {
		return true
	}
	return fell < reclaimSettle && rose < reclaimSettle && bigGrowth(r.floor, now)
}

// gaveBack restarts the peak and the floor from the count held once
// memory was given back.
func (r *reclaimer) gaveBack(now int) {
	r.peak = now
	r.floor = now
	r.last = now
}

// heldCount returns the leases and parked requests in the engine; 0 once
// a panic has left the engine untouchable.
func (s *Server) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken.Load() != nil {
		return 0
	}
	st := s.eng.Stats()
	return st.Leases + st.Waiters
}

// bigGrowth reports whether going from floor held to now held is a growth
// worth giving memory back after: at least double, and at least
// reclaimMin.
func bigGrowth(floor, now int) bool {
	return now-floor >= reclaimMin && now >= 2*floor
}

// bigDrop reports whether going from peak held to now held is a drop worth
// giving memory back for: at least half, and at least reclaimMin.
func bigDrop(peak, now int) bool {
	return peak-now >= reclaimMin && now <= peak/2
}

// heapMem is what the reclaim loop reads of the Go heap at each tick.
type heapMem struct {
	live   uint64 // marked live by the last collection
	excess uint64 // dead objects not yet collected, and free memory not yet returned to the kernel
	allocs uint64 // allocated since the process started
}

// heapMeter reads heapMem from runtime/metrics (no stop of the world).
type heapMeter struct{ s []metrics.Sample }

func newHeapMeter() heapMeter {
	return heapMeter{s: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/heap/allocs:bytes"},
	}}
}

func (m heapMeter) read() heapMem {
	metrics.Read(m.s)
	var v [4]uint64
	for i, s := range m.s {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	live, objects, free, allocs := v[0], v[1], v[2], v[3]
	return heapMem{live: live, excess: objects + free - min(live, objects), allocs: allocs}
}

// heapReclaimer decides, from the heap read at each tick, when an idle
// daemon gives back the garbage its traffic left.
type heapReclaimer struct {
	gave  uint64 // allocs when memory was last given back
	last  uint64 // allocs at the last tick
	quiet int    // ticks in a row that allocated under reclaimIdleAlloc
	since int    // ticks since memory was last given back
}

// tick takes the heap now and reports whether to give memory back.
func (r *heapReclaimer) tick(h heapMem) bool {
	if h.allocs-r.last < reclaimIdleAlloc {
		r.quiet++
	} else {
		r.quiet = 0
	}
	r.last = h.allocs
	r.since++
	need := idleNeed(h.live)
	return r.quiet >= reclaimIdleTicks && r.since >= reclaimIdleGap && h.excess >= need && h.allocs-r.gave >= need
}

// gaveBack restarts the count of allocations from the heap read once
// memory was given back.
func (r *heapReclaimer) gaveBack(h heapMem) {
	r.gave = h.allocs
	r.last = h.allocs
	r.since = 0
}

// idleNeed is the least garbage and free memory, and allocation since
// memory was last given back, for which an idle daemon with live bytes
// live gives memory back.
func idleNeed(live uint64) uint64 {
	return max(reclaimIdleMin, live/reclaimIdleShare)
}
