package server

import (
	"errors"
	"fmt"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/protocol"
)

// Degraded mode: when the journal cannot make changes durable (a full,
// failing or read-only disk), the server
//
//   - answers UNAVAILABLE, before touching the engine, to every state change
//     (heartbeat included) and answers reads from memory;
//   - first makes memory match the log again: the changes of the batch the
//     failure caught (and any made before the server noticed) reached the
//     engine but not the disk, so the engine is restored from the journal's
//     DurableState, and their answers, not yet sent, become UNAVAILABLE
//     (conn.flush); parked acquires are answered UNAVAILABLE too;
//   - tries to heal once a second: the journal writes the engine's state as
//     a new snapshot and log, and changes are accepted again.
//
// Nothing is acknowledged that was not written, and nothing answered
// UNAVAILABLE was made.

// faultyJournal is a Journal that can fail without losing what it
// acknowledged and heal (daemon/store.Store is one).
type faultyJournal interface {
	Fault() *store.Fault
	DurableState() (*engine.State, error)
	Heal(state *engine.State) error
}

// healEvery is how often a degraded server tries to heal.
const healEvery = time.Second

// unavailableLocked returns the error refusing a state change while the
// journal is in a fault, nil when it is not. It makes a new fault take
// effect first (enterFaultLocked). The caller holds s.mu.
func (s *Server) unavailableLocked() error {
	if s.fj == nil {
		return nil
	}
	f := s.fj.Fault()
	if f == nil {
		return nil
	}
	if s.fault == nil || s.fault.Epoch != f.Epoch {
		if err := s.enterFaultLocked(f); err != nil {
			return errBroken
		}
	}
	return unavailable(f)
}

// unavailable is the UNAVAILABLE error for fault f.
func unavailable(f *store.Fault) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeUnavailable, Message: "klock: klockd cannot make state changes durable right now (" +
		f.Reason() + "); nothing was changed; retry later"}
}

// enterFaultLocked makes fault f take effect: it rolls the engine back to
// what the journal holds if changes were made since, answers parked
// acquires UNAVAILABLE, stops expiry (which would make changes) and starts
// the heal loop. When memory cannot be made to match the log, the server
// stops as after a panic in a change, and the error is returned. The
// caller holds s.mu.
func (s *Server) enterFaultLocked(f *store.Fault) error {
	s.fault = f
	now := s.nowMS()
	// Parked acquires are not durable and could not be granted now.
	s.eng.CancelAll(now)
	uerr := unavailable(f)
	for id, w := range s.waiters {
		delete(s.waiters, id)
		w.c.dropWaiterLocked(id)
		w.c.appendError(w.id, uerr.Code, uerr.Message, 0)
		w.c.kick()
	}
	rolledBack := uint64(0)
	if s.lastSeq > f.Durable {
		if err := s.rollBackLocked(f); err != nil {
			s.log.Error("klockd cannot make memory match its log after a failed write; it stops so that it restarts from the log",
				"reason", f.Reason(), "err", err)
			s.stopLocked(err)
			return err
		}
		rolledBack = s.lastSeq - f.Durable
		s.lastSeq = f.Durable
	}
	s.timer.Stop()
	s.armed = 0
	s.log.Warn("klockd cannot make state changes durable: changes are refused (UNAVAILABLE), reads are served; retrying every second",
		"reason", f.Reason(), "rolled_back_changes", rolledBack)
	if !s.healing && !s.closed {
		s.healing = true
		s.healWG.Add(1)
		go s.healLoop()
	}
	return nil
}

// rollBackLocked restores the engine from the journal's DurableState,
// keeping the totals stats reports. The caller holds s.mu.
func (s *Server) rollBackLocked(f *store.Fault) error {
	if f.Fatal {
		return fmt.Errorf("klock: %w", f.Err)
	}
	st, err := s.fj.DurableState()
	if err != nil {
		return err
	}
	before := s.eng.Stats()
	if err := s.eng.Restore(st); err != nil {
		return err
	}
	s.totals.AddTotals(before)
	// Undone process ends bring back leases of processes no longer
	// watched: watch the live ones; the ended ones end when healed.
	s.syncWatchesLocked("rollback")
	return nil
}

// noticeFault makes a journal fault take effect now (a flush found it):
// before the answers it caught are replaced, memory must no longer show
// their changes. It reports whether the server serves on (false: it is
// stopping).
func (s *Server) noticeFault() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailableLocked()
	return s.broken.Load() == nil
}

// NoticeFault makes the server act on a journal fault at once (log it,
// roll back, start healing) instead of at the next request. The daemon
// calls it from the store's fault callback.
func (s *Server) NoticeFault() {
	s.noticeFault()
}

// healLoop tries to heal the journal once a second until it heals or the
// server stops, telling Config.OnDegraded on the way in and out.
func (s *Server) healLoop() {
	defer s.healWG.Done()
	s.mu.Lock()
	f := s.fault
	s.mu.Unlock()
	if s.cfg.OnDegraded != nil {
		s.cfg.OnDegraded(f)
	}
	t := time.NewTicker(healEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
		}
		s.mu.Lock()
		if s.broken.Load() != nil || s.closed {
			s.mu.Unlock()
			return
		}
		state := s.eng.Snapshot()
		s.mu.Unlock()
		err := s.fj.Heal(state)
		if errors.Is(err, store.ErrClosed) {
			return
		}
		if err != nil {
			s.log.Debug("healing the journal failed; retrying", "err", err)
			continue
		}
		s.mu.Lock()
		if s.unavailableLocked() != nil {
			// A new fault, already taken in hand: keep trying.
			s.mu.Unlock()
			continue
		}
		since := s.fault.Since
		s.fault, s.healing = nil, false
		s.syncWatchesLocked("healed") // processes that ended meanwhile
		s.armLocked(s.nowMS())
		s.mu.Unlock()
		s.log.Info("klockd can make state changes durable again: changes are accepted", "degraded_for", time.Since(since).Round(time.Millisecond))
		if s.cfg.OnDegraded != nil {
			s.cfg.OnDegraded(nil)
		}
		return
	}
}

// degradedLocked returns the fault the server is degraded by, nil when it
// is not. The caller holds s.mu.
func (s *Server) degradedLocked() *store.Fault {
	if s.unavailableLocked() == nil {
		return nil
	}
	return s.fault
}

// retract rewrites the answers in buf (framed, starting at the offsets in
// marks) whose journal sequence was lost in a fault as UNAVAILABLE errors,
// keeping the others. It returns the new buffer.
func (s *Server) retract(buf []byte, marks []answerMark) []byte {
	out := make([]byte, 0, len(buf))
	for i, m := range marks {
		end := len(buf)
		if i+1 < len(marks) {
			end = marks[i+1].off
		}
		if m.seq == 0 {
			out = append(out, buf[m.off:end]...)
			continue
		}
		err := s.cfg.Journal.Wait(m.seq)
		var ue *store.UnavailableError
		switch {
		case err == nil:
			out = append(out, buf[m.off:end]...)
		case errors.As(err, &ue) && m.event:
			// The change this event told of was rolled back: the
			// watcher is not told of it at all.
		case errors.As(err, &ue):
			u := unavailable(ue.Fault)
			out = protocol.AppendError(out, m.id, u.Code, u.Message)
		default:
			return nil
		}
	}
	return out
}
