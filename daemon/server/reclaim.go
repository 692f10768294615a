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

const (
	// reclaimMin is the smallest drop (leases + parked requests) that gives
	// memory back: a few hundred bytes each, tens of MiB in all.
	reclaimMin = 50_000
	// reclaimSettle is the fall in a second below which a release is
	// taken to have ended.
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
	peak int // the most held since memory was last given back
	last int // held at the last tick
}

func newReclaimer(held int) reclaimer { return reclaimer{peak: held, last: held} }

// tick takes the count held now and reports whether to give memory back:
// a big drop from the peak (bigDrop) that has settled.
func (r *reclaimer) tick(now int) bool {
	r.peak = max(r.peak, now)
	settled := r.last-now < reclaimSettle
	r.last = now
	return settled && bigDrop(r.peak, now)
}

// gaveBack restarts the peak from the count held once memory was given
// back.
func (r *reclaimer) gaveBack(now int) {
	r.peak = now
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

// bigDrop reports whether going from peak held to now held is a drop worth
// giving memory back for: at least half, and at least reclaimMin.
func bigDrop(peak, now int) bool {
	return peak-now >= reclaimMin && now <= peak/2
}
