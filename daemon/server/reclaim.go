package server

import (
	"runtime/debug"
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
// (BENCHMARKS.md "Scale (issue 18)"). Traffic after that can grow the heap
// again up to the collector's goal; a quiet holder keeps only what it
// uses.

const (
	// reclaimMin is the smallest drop (leases + parked requests) that gives
	// memory back: a few hundred bytes each, tens of MiB in all.
	reclaimMin = 50_000
	// reclaimSettle is the change in a second below which a release, or
	// a growth, is taken to have ended.
	reclaimSettle = reclaimMin / 10
	// reclaimEvery is how often the drop is checked.
	reclaimEvery = time.Second
)

// reclaimLoop checks for a large drop every reclaimEvery until shutdown.
func (s *Server) reclaimLoop() {
	t := time.NewTicker(reclaimEvery)
	defer t.Stop()
	r := newReclaimer(s.heldCount())
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
		}
		if r.tick(s.heldCount()) {
			debug.FreeOSMemory()
			r.gaveBack(s.heldCount())
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
