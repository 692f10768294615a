package server

import (
	"runtime/debug"
	"time"
)

// armLocked sets the expiry timer to the engine's next deadline when that
// is earlier than what the timer is already set for. A deadline that moved
// later (a lease released) leaves the timer early; it then fires, finds
// nothing due and re-arms. The caller holds s.mu.
func (s *Server) armLocked(now int64) {
	if s.closed || s.rep.log != nil {
		return // in cluster mode the leader ticks (replica.go)
	}
	dl, ok := s.eng.NextDeadline()
	if !ok || (s.armed != 0 && s.armed <= dl) {
		return
	}
	s.armed = dl
	d := time.Duration(dl-now) * time.Millisecond
	if d < time.Millisecond {
		d = time.Millisecond
	}
	s.timer.Reset(d)
}

// onTimer runs when the earliest deadline is due: it expires leases and
// times out waiters, answers the wake-ups and re-arms. Many due at once
// are expired in steps, with the requests waiting for s.mu let in between
// (turns), as an end_session is: not one step per firing of a timer
// re-armed for 1 ms, which left each step's wait for the lock to the
// scheduler and made a large expiry take at least 1 ms per step. A timer
// that fires while such a run goes on leaves what is due to it.
func (s *Server) onTimer() {
	expired := 0
	for first := true; ; first = false {
		n, more := s.expireStep(first)
		expired += n
		if !more {
			break
		}
		s.turns.yield()
	}
	if expired > 0 {
		s.log.Debug("leases expired", "count", expired)
	}
}

// expireStep is one step of onTimer, under s.mu: it returns the leases
// it expired and whether more are due at once. first is the first step of
// a run, which does nothing while another run goes on.
func (s *Server) expireStep(first bool) (n int, more bool) {
	s.turns.lock(&s.mu)
	defer s.mu.Unlock()
	if first && s.expiring {
		return 0, false
	}
	s.expiring = true
	defer func() { s.expiring = more }() // after recoverBug: false on a panic
	defer s.recoverBug("expiring leases")
	s.armed = 0
	if s.closed || s.rep.log != nil {
		return 0, false // in cluster mode the leader ticks (replica.go)
	}
	o, _ := s.commitLocked(nil, 0, &change{op: opExpire})
	return o.expired, o.more && o.err == nil
}

// recoverBug, deferred, turns a panic in background work (not a request)
// into a logged error, so one bug does not take the daemon down.
func (s *Server) recoverBug(what string) {
	if r := recover(); r != nil {
		s.log.Error("panic while "+what, "panic", r, "stack", string(debug.Stack()))
	}
}
