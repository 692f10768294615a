package server

import (
	"sync"
	"testing"
	"time"
)

// TestTurnsLetWaitersIn checks that a request waiting for the lock when a
// step ends takes it before the next step: sync.Mutex alone lets the
// stepping goroutine, still running, take it back first.
func TestTurnsLetWaitersIn(t *testing.T) {
	var tu turns
	tu.max = time.Minute // never the bound here, however slow the machine
	var mu sync.Mutex
	for round := range 200 {
		tu.lock(&mu) // the stepper's step
		served := false
		done := make(chan struct{})
		go func() {
			defer close(done)
			tu.lock(&mu)
			served = true
			mu.Unlock()
		}()
		for tu.asked.Load() < tu.got.Load()+1 {
			time.Sleep(10 * time.Microsecond) // until the request waits for the lock
		}
		mu.Unlock()
		tu.yield()
		tu.lock(&mu) // the next step
		if !served {
			t.Fatalf("round %d: the next step took the lock before the request waiting for it", round)
		}
		mu.Unlock()
		<-done
	}
}

// TestTurnsYieldReturns checks yield's bounds: at once with nobody
// waiting, and after max when a request that asked never gets the lock.
func TestTurnsYieldReturns(t *testing.T) {
	var tu turns
	tu.yield() // nobody asked: returns at once
	tu.max = 20 * time.Millisecond
	tu.asked.Add(1) // asked, never served
	start := time.Now()
	tu.yield()
	if d := time.Since(start); d < tu.max {
		t.Fatalf("yield returned after %v with a request still waiting; want at least %v", d, tu.max)
	}
	if len(tu.wait) != 0 || tu.yielders.Load() != 0 {
		t.Fatalf("a timed-out yield left %d waits and %d yielders", len(tu.wait), tu.yielders.Load())
	}
}
