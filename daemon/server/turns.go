package server

import (
	"sync"
	"sync/atomic"
	"time"
)

// turns makes a long change, applied in steps (stepWork), let every
// request that was waiting for the engine lock when a step ended take the
// lock before the next step. sync.Mutex alone does not: Unlock wakes a
// waiter, but the stepping goroutine is still running and takes the lock
// back long before the woken one gets a CPU on a busy machine, so that a
// stats call waited behind tens of end_session steps, 0.1-2.7 s in all
// (a runtime trace of klockd, BENCHMARKS.md "Stall probe").
//
// Requests take s.mu through lock (readLocal, commitStep), which counts
// those that had to wait for it and those of them that got it; a long
// change calls yield between steps, without the lock.
type turns struct {
	max        time.Duration // longest yield; 0 = maxYield (tests set it)
	asked, got atomic.Uint64 // requests that waited for the lock, and got it
	yields     atomic.Uint64 // calls of yield: one between two holds of a long change
	yielders   atomic.Int32  // goroutines in yield; lock wakes them only then

	mu   sync.Mutex
	wait []turnWait // the yielders, under mu
}

// turnWait is one yielder: it waits until got reaches target.
type turnWait struct {
	target uint64
	done   chan struct{}
}

// maxYield bounds one yield: a step waits for those ahead of it no
// longer than this, whatever happens to them.
const maxYield = 100 * time.Millisecond

// lock takes mu for a request, counting it if it has to wait: one that
// gets mu at once is ahead of no yield, and skipping the count saves two
// atomic adds on counters every request shares, which two CPUs pass back
// and forth.
func (t *turns) lock(mu *sync.Mutex) {
	if mu.TryLock() {
		return
	}
	t.asked.Add(1)
	mu.Lock()
	got := t.got.Add(1)
	if t.yielders.Load() == 0 {
		return
	}
	t.mu.Lock()
	keep := t.wait[:0]
	for _, w := range t.wait {
		if got >= w.target {
			close(w.done)
		} else {
			keep = append(keep, w)
		}
	}
	t.wait = keep
	t.mu.Unlock()
}

// yield returns once every request that had asked for the lock when it
// was called has got it, or after maxYield. The caller does not hold it.
func (t *turns) yield() {
	t.yields.Add(1)
	target := t.asked.Load()
	if t.got.Load() >= target {
		return
	}
	w := turnWait{target: target, done: make(chan struct{})}
	t.yielders.Add(1)
	defer t.yielders.Add(-1)
	t.mu.Lock()
	if t.got.Load() >= target { // got it meanwhile, maybe before lock saw a yielder
		t.mu.Unlock()
		return
	}
	t.wait = append(t.wait, w)
	t.mu.Unlock()
	limit := t.max
	if limit == 0 {
		limit = maxYield
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-w.done:
	case <-timer.C:
		t.mu.Lock()
		for i := range t.wait {
			if t.wait[i].done == w.done {
				t.wait = append(t.wait[:i], t.wait[i+1:]...)
				break
			}
		}
		t.mu.Unlock()
	}
}
