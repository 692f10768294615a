package server

import (
	"runtime/debug"
	"time"

	"github.com/klockd/klock/daemon/engine"
)

// journalLocked hands the records of the operation just made to the journal
// and returns the sequence its answer must wait for: the last state change
// so far, so even a read never acknowledges state that could still be lost.
// The caller holds s.mu.
func (s *Server) journalLocked() uint64 {
	if s.cfg.Journal == nil {
		return 0
	}
	if recs := s.eng.Records(); len(recs) > 0 {
		s.lastSeq = s.cfg.Journal.Append(recs)
	}
	return s.lastSeq
}

// wakeLocked answers parked acquires the engine has decided: each answer is
// appended to its waiter's connection and a flush is kicked, except on
// self, whose reader flushes at the end of its batch. The caller holds s.mu.
func (s *Server) wakeLocked(wakes []engine.Wakeup, seq uint64, self *conn) {
	for i := range wakes {
		w := &wakes[i]
		wt, ok := s.waiters[w.Waiter]
		if !ok {
			continue
		}
		delete(s.waiters, w.Waiter)
		wt.c.dropWaiterLocked(w.Waiter)
		wt.c.appendResult(wt.id, acquireAnswer(&w.Result, wt.many), seq)
		if wt.c != self {
			wt.c.kick()
		}
	}
}

// armLocked sets the expiry timer to the engine's next deadline when that
// is earlier than what the timer is already set for. A deadline that moved
// later (a lease released) leaves the timer early; it then fires, finds
// nothing due and re-arms. The caller holds s.mu.
func (s *Server) armLocked(now int64) {
	if s.closed {
		return
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
	if s.closed {
		return
	}
	now := s.nowMS()
	n, wakes := s.eng.Expire(now)
	seq := s.journalLocked()
	s.wakeLocked(wakes, seq, nil)
	s.armLocked(now)
	if n > 0 {
		s.log.Debug("leases expired", "count", n)
	}
}

// recoverBug, deferred, turns a panic in background work (not a request)
// into a logged error, so one bug does not take the daemon down.
func (s *Server) recoverBug(what string) {
	if r := recover(); r != nil {
		s.log.Error("panic while "+what, "panic", r, "stack", string(debug.Stack()))
	}
}
