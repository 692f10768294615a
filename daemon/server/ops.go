package server

import (
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// Each op handler calls the engine under s.mu (released by defer, so a
// panic cannot leave it held), journals the records the call produced, and
// appends its answer with the journal sequence it depends on. Answers are
// encoded after the lock is released where the result allows it.

func (s *Server) register(c *conn, id uint64, a *protocol.Args) {
	ag, seq, err := func() (engine.Agent, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		ag, err := s.eng.Register(s.nowMS(), c.caller, a.AgentID, a.Priority, a.Has(protocol.ArgPriority))
		return ag, s.journalLocked(), err
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.RegisterResult{AgentID: ag.ID, Priority: ag.Priority, RegisteredAt: ag.RegisteredAt}, seq)
}

func (s *Server) unregister(c *conn, id uint64, a *protocol.Args) {
	ok, seq, err := func() (bool, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		ok, err := s.eng.Unregister(s.nowMS(), c.caller, a.AgentID)
		return ok, s.journalLocked(), err
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.UnregisterResult{Unregistered: ok}, seq)
}

// acquire serves acquire (one intent from the flat args) and acquire_many.
// A WAIT verdict with wait_timeout is parked: its answer comes as a wake-up.
func (s *Server) acquire(c *conn, id uint64, a *protocol.Args, many bool) {
	req := engine.AcquireRequest{
		AgentID:     a.AgentID,
		SessionID:   a.SessionID,
		TTL:         a.TTL,
		WaitTimeout: a.WaitTimeout,
		Idem:        a.Idem,
	}
	var one [1]engine.Intent
	if many {
		req.Intents = make([]engine.Intent, len(a.Intents))
		for i, in := range a.Intents {
			req.Intents[i] = engine.Intent{ResourceType: in.ResourceType, ResourcePath: in.ResourcePath, Predicate: in.Predicate}
		}
	} else {
		one[0] = engine.Intent{ResourceType: a.ResourceType, ResourcePath: a.ResourcePath, Predicate: a.Predicate}
		req.Intents = one[:]
	}
	res, seq, err := func() (engine.Result, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			// Shutdown has answered the parked acquires; nothing would
			// answer a new one.
			return engine.Result{}, s.lastSeq, errShuttingDown
		}
		if req.WaitTimeout > 0 && len(c.waiters) >= s.cfg.MaxInflight {
			return engine.Result{}, s.lastSeq, &engine.Error{Code: protocol.CodeResourceExhausted,
				Message: "klock: too many requests in flight on this connection; at most " + itoa(s.cfg.MaxInflight) + " may wait at once"}
		}
		now := s.nowMS()
		var res engine.Result
		var err error
		if many {
			res, err = s.eng.AcquireMany(now, c.caller, req)
		} else {
			res, err = s.eng.Acquire(now, c.caller, req)
		}
		seq := s.journalLocked()
		if err == nil && res.Queued {
			s.waiters[res.Waiter] = waiter{c: c, id: id, many: many}
			if c.waiters == nil {
				c.waiters = make(map[engine.WaiterID]struct{})
			}
			c.waiters[res.Waiter] = struct{}{}
		}
		s.armLocked(now)
		return res, seq, err
	}()
	switch {
	case err != nil:
		c.answerErr(id, err, seq)
	case res.Queued:
		// Answered later by a wake-up, a timeout or shutdown.
	default:
		c.appendResult(id, acquireAnswer(&res, many), seq)
	}
}

// endLease runs an engine call that may end a lease (release, revoke)
// under the lock, journals it, answers the wake-ups it causes and re-arms
// the expiry timer.
func (s *Server) endLease(c *conn, end func(now int64) (bool, []engine.Wakeup, error)) (bool, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.nowMS()
	ok, wakes, err := end(now)
	seq := s.journalLocked()
	s.wakeLocked(wakes, seq, c)
	s.armLocked(now)
	return ok, seq, err
}

func (s *Server) release(c *conn, id uint64, a *protocol.Args) {
	ok, seq, err := s.endLease(c, func(now int64) (bool, []engine.Wakeup, error) {
		return s.eng.Release(now, c.caller, a.LeaseID)
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.ReleaseResult{Released: ok}, seq)
}

func (s *Server) heartbeat(c *conn, id uint64, a *protocol.Args) {
	if a.Has(protocol.ArgTTL) && a.TTL == 0 {
		// The engine reads 0 as "keep the current ttl"; on the wire ttl
		// is optional but, when given, at least 1 ms like every ttl.
		c.appendError(id, protocol.CodeInvalidArgument, "klock: argument ttl must be at least 1 ms; omit it to keep the lease's ttl", 0)
		return
	}
	l, seq, err := func() (engine.Lease, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		now := s.nowMS()
		l, err := s.eng.Heartbeat(now, c.caller, a.LeaseID, a.TTL)
		seq := s.journalLocked()
		s.armLocked(now)
		return l, seq, err
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.HeartbeatResult{LeaseID: l.ID, ExpiresAt: l.ExpiresAt}, seq)
}

func (s *Server) endSession(c *conn, id uint64, a *protocol.Args) {
	n, seq, err := func() (int, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		now := s.nowMS()
		n, wakes, err := s.eng.EndSession(now, c.caller, a.AgentID, a.SessionID)
		seq := s.journalLocked()
		s.wakeLocked(wakes, seq, c)
		s.armLocked(now)
		return n, seq, err
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.EndSessionResult{Released: n}, seq)
}

func (s *Server) activeLeaseCount(c *conn, id uint64) {
	n, seq := func() (int, uint64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.eng.ActiveLeaseCount(s.nowMS()), s.lastSeq
	}()
	c.appendResult(id, &protocol.CountResult{Count: n}, seq)
}

func (s *Server) evictExpired(c *conn, id uint64) {
	n, seq := func() (int, uint64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		now := s.nowMS()
		n, wakes := s.eng.EvictExpired(now)
		seq := s.journalLocked()
		s.wakeLocked(wakes, seq, c)
		s.armLocked(now)
		return n, seq
	}()
	c.appendResult(id, &protocol.EvictResult{Evicted: n}, seq)
}

func (s *Server) listLeases(c *conn, id uint64, a *protocol.Args) {
	f := engine.LeaseFilter{AgentID: a.AgentID, ResourcePrefix: a.ResourcePrefix, Limit: clampLimit(a.Limit)}
	ls, truncated, seq, err := func() ([]engine.Lease, bool, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		ls, truncated, err := s.eng.ListLeases(s.nowMS(), f)
		return ls, truncated, s.lastSeq, err
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.ListLeasesResult{Leases: make([]protocol.LeaseInfo, len(ls)), Truncated: truncated}
	for i := range ls {
		l := &ls[i]
		r.Leases[i] = protocol.LeaseInfo{
			LeaseID: l.ID, AgentID: l.AgentID, SessionID: l.SessionID, Resource: l.Resource,
			Predicate: l.Predicate.String(), AcquiredAt: l.AcquiredAt, ExpiresAt: l.ExpiresAt,
			Fence: l.Fence, OwnerUID: l.OwnerUID, OwnerPID: l.OwnerPID,
		}
	}
	c.appendBounded(id, r, seq, func(keep float64) bool {
		k, ok := keepCount(len(r.Leases), keep)
		r.Leases, r.Truncated = r.Leases[:k], true
		return ok
	})
}

func (s *Server) listAgents(c *conn, id uint64, a *protocol.Args) {
	ags, truncated, seq, err := func() ([]engine.Agent, bool, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		ags, truncated, err := s.eng.ListAgents(s.nowMS(), clampLimit(a.Limit))
		return ags, truncated, s.lastSeq, err
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.ListAgentsResult{Agents: make([]protocol.AgentInfo, len(ags)), Truncated: truncated}
	for i := range ags {
		g := &ags[i]
		r.Agents[i] = protocol.AgentInfo{AgentID: g.ID, Priority: g.Priority, RegisteredAt: g.RegisteredAt, Leases: g.Leases, Waiting: g.Waiting}
	}
	c.appendBounded(id, r, seq, func(keep float64) bool {
		k, ok := keepCount(len(r.Agents), keep)
		r.Agents, r.Truncated = r.Agents[:k], true
		return ok
	})
}

// clampLimit converts a wire limit to int without overflow; the engine
// rejects anything above its maximum.
func clampLimit(n int64) int {
	const max = 1 << 30
	if n > max {
		return max
	}
	return int(n)
}

func (s *Server) revoke(c *conn, id uint64, a *protocol.Args) {
	ok, seq, err := s.endLease(c, func(now int64) (bool, []engine.Wakeup, error) {
		return s.eng.Revoke(now, c.caller, a.LeaseID)
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.RevokeResult{Revoked: ok}, seq)
}

// freeze serves freeze (on) and thaw (!on).
func (s *Server) freeze(c *conn, id uint64, a *protocol.Args, on bool) {
	frozen, seq, err := func() (bool, uint64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		now := s.nowMS()
		if !on {
			ok, err := s.eng.Thaw(now, c.caller, a.ResourceType, a.ResourcePath)
			return ok, s.journalLocked(), err
		}
		ok, wakes, err := s.eng.Freeze(now, c.caller, a.ResourceType, a.ResourcePath)
		seq := s.journalLocked()
		s.wakeLocked(wakes, seq, c)
		return ok, seq, err
	}()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.FreezeResult{Frozen: frozen}, seq)
}

func (s *Server) stats(c *conn, id uint64) {
	st, seq := func() (engine.Stats, uint64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		st := s.eng.Stats()
		// Stats counts leases not yet removed; expired ones are never counted.
		st.Leases = s.eng.ActiveLeaseCount(s.nowMS())
		return st, s.lastSeq
	}()
	c.appendResult(id, &protocol.StatsResult{
		UptimeMS:    s.uptime(),
		Connections: s.Connections(),
		Agents:      st.Agents,
		Leases:      st.Leases,
		Waiters:     st.Waiters,
		Ops:         s.ops.Load(),
		Grants:      st.Grants,
		Waits:       st.Waits,
		Dies:        st.Dies,
		Expirations: st.Expirations,
		Fence:       st.Fence,
	}, seq)
}
