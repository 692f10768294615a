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
// times out waiters, answers the wake-ups and re-arms.
func (s *Server) onTimer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.recoverBug("expiring leases")
	s.armed = 0
	if s.closed || s.rep.log != nil {
		return // in cluster mode the leader ticks (replica.go)
	}
	o, _ := s.commitLocked(nil, 0, &change{op: opExpire})
	if o.expired > 0 {
		s.log.Debug("leases expired", "count", o.expired)
	}
}

// recoverBug, deferred, turns a panic in background work (not a request)
// into a logged error, so one bug does not take the daemon down.
func (s *Server) recoverBug(what string) {
	if r := recover(); r != nil {
		s.log.Error("panic while "+what, "panic", r, "stack", string(debug.Stack()))
	}
}
