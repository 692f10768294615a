package server

import (
	"sync/atomic"
	"time"
)

// A long operation holds s.mu in steps bounded in work (stepWork leases
// ended, listWork entries looked at), and stepSizer bounds them in time
// too. A step of 1,000 leases ended takes a few milliseconds on a quiet
// machine, but 20-80 ms while the collector marks a heap of a million
// leases: the step's allocations pay for marking (assists) and the
// goroutine holding the lock waits for a CPU behind the mark workers
// (runtime traces of the stall probe, BENCHMARKS.md "Scale (issue 18)",
// session 6). Every request waiting for s.mu waits that long. So each
// hold's work is taken from how long the last one took: aiming at
// holdTarget, at least minStepWork, at most the work bound, and growing
// by at most half again per hold so that one fast step after a slow one
// does not undo it.
//
// What a step does depends only on its work argument, never on the
// clock: the engine stays deterministic, and in cluster mode, where every
// node applies the same steps, steps keep their fixed size.

const (
	// holdTarget is how long one hold of s.mu by a long operation aims
	// to last.
	holdTarget = 2 * time.Millisecond
	// minStepWork is the least work a step does, however slow: a long
	// operation still ends in a bounded number of steps.
	minStepWork = 50
)

// stepSizer is the work of the next hold of one kind of long operation.
// Concurrent operations share it; each reads and sets it atomically.
type stepSizer struct {
	max int          // the work bound of one hold
	n   atomic.Int64 // the next hold's work; 0 = max
}

// size returns the work of the next hold.
func (z *stepSizer) size() int {
	if n := int(z.n.Load()); n > 0 {
		return n
	}
	return z.max
}

// took records that a hold of work n lasted d.
func (z *stepSizer) took(n int, d time.Duration) {
	z.n.Store(int64(nextStepWork(n, d, z.max)))
}

// nextStepWork is the work of the hold after one of work n that lasted
// d: n scaled to holdTarget, at most 1.5n, at least minStepWork, at
// most maxN.
func nextStepWork(n int, d time.Duration, maxN int) int {
	next := n + n/2
	if d > 0 {
		next = int(min(int64(next), int64(n)*int64(holdTarget)/int64(d)))
	}
	return min(max(next, minStepWork), maxN)
}
