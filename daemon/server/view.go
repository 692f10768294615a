package server

import (
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/protocol"
)

// This file holds what the HTTP side (daemon/web) reads: the counters for
// /metrics and the whole state for the dashboard.

// Counters are the engine's counters (with Leases counting active leases
// only, and totals kept across rollbacks), the open connections and the
// journal fault that makes the server refuse changes (nil when healthy),
// read together.
type Counters struct {
	engine.Stats
	Connections int
	Fault       *store.Fault
	Pidfds      int // processes watched with a pidfd for bound leases
}

// Counters returns the counters now. It takes the engine lock for the
// time of a copy: a scrape costs the hot path nothing but that. It fails
// only once a state change has panicked (the daemon is stopping).
func (s *Server) Counters() (Counters, error) {
	c, _, err := s.counters()
	return c, err
}

// counters returns the counters and the journal sequence they depend on.
func (s *Server) counters() (Counters, uint64, error) {
	c, seq, err := readLocal(s, func(now int64) (Counters, error) {
		st := s.eng.Stats()
		// Stats counts leases not yet removed; expired ones are never counted.
		st.Leases = s.eng.ActiveLeaseCount(now)
		st.AddTotals(s.totals)
		return Counters{Stats: st, Fault: s.degradedLocked(), Pidfds: s.procs.len()}, nil
	})
	c.Connections = s.Connections()
	return c, seq, err
}

// MaxStateLeases is how many leases, agents and waiters State returns at
// most, each.
const MaxStateLeases = engine.MaxLimit

// State is everything the dashboard shows, read at one instant.
type State struct {
	Now       int64                 `json:"now"` // the daemon's clock, Unix ms
	Server    string                `json:"server"`
	StartedAt int64                 `json:"started_at"`
	Agents    []protocol.AgentInfo  `json:"agents"`
	Leases    []protocol.LeaseInfo  `json:"leases"`
	Waiters   []protocol.WaiterInfo `json:"waiters"`
	Truncated bool                  `json:"truncated"` // some list held more than MaxStateLeases
	Stats     engine.Stats          `json:"-"`
	Seq       uint64                `json:"-"` // journal sequence to wait for before showing it
}

// State returns the agents, active leases and queued requests, read under
// one lock so they agree with each other. It fails only once a state
// change has panicked (the daemon is stopping).
func (s *Server) State() (State, error) {
	type lists struct {
		ags        []engine.Agent
		ls         []engine.Lease
		ws         []engine.Waiting
		st         engine.Stats
		now        int64
		t1, t2, t3 bool
	}
	l, seq, err := readLocal(s, func(now int64) (lists, error) {
		var l lists
		l.now = now
		l.ags, l.t1, _ = s.eng.ListAgents(now, MaxStateLeases)
		l.ls, l.t2, _ = s.eng.ListLeases(now, engine.LeaseFilter{Limit: MaxStateLeases})
		l.ws, l.t3, _ = s.eng.ListWaiting(now, MaxStateLeases)
		l.st = s.eng.Stats()
		return l, nil
	})
	if err != nil {
		return State{}, err
	}
	st := State{
		Now: l.now, Server: "klockd " + s.cfg.Version, StartedAt: s.startedAt.UnixMilli(),
		Agents: make([]protocol.AgentInfo, len(l.ags)), Leases: make([]protocol.LeaseInfo, len(l.ls)),
		Waiters: make([]protocol.WaiterInfo, len(l.ws)), Truncated: l.t1 || l.t2 || l.t3, Stats: l.st, Seq: seq,
	}
	for i := range l.ags {
		st.Agents[i] = agentInfo(&l.ags[i])
	}
	for i := range l.ls {
		st.Leases[i] = leaseInfo(&l.ls[i])
	}
	for i := range l.ws {
		st.Waiters[i] = waiterInfo(&l.ws[i])
	}
	return st, nil
}

// agentInfo converts an engine agent to its list form.
func agentInfo(g *engine.Agent) protocol.AgentInfo {
	return protocol.AgentInfo{AgentID: g.ID, Priority: g.Priority, RegisteredAt: g.RegisteredAt, Leases: g.Leases, Waiting: g.Waiting}
}
