package server

import (
	"runtime"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/protocol"
)

// The read ops. Each queries the engine through read (commit.go) and
// converts and encodes its answer after the lock is released. The ops that
// change state are in change.go.

func (s *Server) activeLeaseCount(c *conn, id uint64) {
	n, seq, err := read(s, c, func(now int64) (int, error) {
		return s.eng.ActiveLeaseCount(now), nil
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	c.appendResult(id, &protocol.CountResult{Count: n}, seq)
}

func (s *Server) listLeases(c *conn, id uint64, a *protocol.Args) {
	f := engine.LeaseFilter{AgentID: a.AgentID, ResourcePrefix: a.ResourcePrefix, Limit: clampLimit(a.Limit)}
	type list struct {
		leases    []engine.Lease
		truncated bool
	}
	ls, seq, err := read(s, c, func(now int64) (list, error) {
		ls, truncated, err := s.eng.ListLeases(now, f)
		return list{ls, truncated}, err
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.ListLeasesResult{Leases: make([]protocol.LeaseInfo, len(ls.leases)), Truncated: ls.truncated}
	for i := range ls.leases {
		r.Leases[i] = leaseInfo(&ls.leases[i])
	}
	c.appendBounded(id, r, seq, func(keep float64) bool {
		k, ok := keepCount(len(r.Leases), keep)
		r.Leases, r.Truncated = r.Leases[:k], true
		return ok
	})
}

func (s *Server) listAgents(c *conn, id uint64, a *protocol.Args) {
	type list struct {
		agents    []engine.Agent
		truncated bool
	}
	ags, seq, err := read(s, c, func(now int64) (list, error) {
		ags, truncated, err := s.eng.ListAgents(now, clampLimit(a.Limit))
		return list{ags, truncated}, err
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.ListAgentsResult{Agents: make([]protocol.AgentInfo, len(ags.agents)), Truncated: ags.truncated}
	for i := range ags.agents {
		g := &ags.agents[i]
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

func (s *Server) stats(c *conn, id uint64) {
	type stats struct {
		engine.Stats
		fault  *store.Fault
		pidfds int
	}
	st, seq, err := readLocal(s, func(now int64) (stats, error) {
		st := s.eng.Stats()
		// Stats counts leases not yet removed; expired ones are never counted.
		st.Leases = s.eng.ActiveLeaseCount(now)
		st.Grants += s.totals.Grants
		st.Waits += s.totals.Waits
		st.Dies += s.totals.Dies
		st.Expirations += s.totals.Expirations
		st.ExitReleases += s.totals.ExitReleases
		return stats{st, s.degradedLocked(), s.procs.len()}, nil
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.StatsResult{
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

		BoundProcesses: st.Processes,
		Pidfds:         st.pidfds,
		ExitReleases:   st.ExitReleases,
		Goroutines:     runtime.NumGoroutine(),
		Cluster:        s.clusterStats(),
	}
	if f := st.fault; f != nil {
		r.Degraded, r.DegradedSince, r.DegradedReason = true, f.Since.UnixMilli(), f.Reason()
	}
	c.appendResult(id, r, seq)
}
