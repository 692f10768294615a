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

const (
	// reclaimMin is the smallest drop (leases + parked requests) that gives
	// memory back: a few hundred bytes each, tens of MiB in all.
	reclaimMin = 50_000
	// reclaimEvery is how often the drop is checked.
	reclaimEvery = time.Second
)

// reclaimLoop checks for a large drop every reclaimEvery until shutdown.
func (s *Server) reclaimLoop() {
	t := time.NewTicker(reclaimEvery)
	defer t.Stop()
	peak := s.heldCount()
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
		}
		n := s.heldCount()
		peak = max(peak, n)
		if bigDrop(peak, n) {
			debug.FreeOSMemory()
			peak = s.heldCount()
		}
	}
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
