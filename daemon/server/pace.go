package server

import "time"

// batchGap is the least time between two batches a busy watch stream
// takes. A watcher then costs the daemon a wake-up, an encode loop and a
// write(2) per millisecond at most, rather than per event: on a single
// busy connection each change is otherwise its own batch, and a watcher
// of everything cost about 1.5 times the CPU of the requests it watched
// (BENCHMARKS.md "What a watcher costs"). An event after a quiet
// millisecond goes out at once; one in a busy stream waits at most this.
const batchGap = time.Millisecond

// Pace spaces the batches of a busy stream. A stream's reader calls
// Gather each time Ready fires, just before Take; the zero Pace is ready
// to use. It is used by one goroutine, the stream's reader.
type Pace struct {
	gap   time.Duration // batchGap when 0 (tests set it)
	last  time.Time     // when the last batch was gathered
	timer *time.Timer   // reused by Gather
}

// Gather returns at once when the last batch was gathered batchGap or
// more ago; otherwise it waits until then, so that the events published
// meanwhile join this batch. It returns early when half of the stream's
// buffer is pending or the stream ends, so that pacing never makes a
// watcher overflow, nor delays unwatch or shutdown.
func (p *Pace) Gather(sub *Subscription) {
	gap := p.gap
	if gap == 0 {
		gap = batchGap
	}
	now := time.Now()
	if wait := p.last.Add(gap).Sub(now); wait > 0 {
		if p.timer == nil {
			p.timer = time.NewTimer(wait)
		} else {
			p.timer.Reset(wait)
		}
		select {
		case <-p.timer.C:
		case <-sub.hurry:
			p.timer.Stop()
		}
		now = time.Now()
	}
	p.last = now
}

// hasten wakes a reader that Gather holds; the caller holds sub.mu.
func (sub *Subscription) hasten() {
	select {
	case sub.hurry <- struct{}{}:
	default:
	}
}
