package server

import (
	"runtime"

	"github.com/klockd/klock/daemon/engine"
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

// The list ops page (protocol/README.md "Paging"): a request holds the
// engine lock for at most listWork entries looked at at a time, and for at
// most listHolds such holds, releasing the lock in between; an answer that
// stops early carries next, where the following request continues.
const (
	listWork  = 1000
	listHolds = 100
)

func (s *Server) listLeases(c *conn, id uint64, a *protocol.Args) {
	// Arguments are checked before the lock is taken, in the engine's
	// order, the cursor last.
	f := engine.LeaseFilter{AgentID: a.AgentID, ResourcePrefix: a.ResourcePrefix}
	limit, err := engine.CheckLimit(clampLimit(a.Limit))
	if err == nil {
		err = engine.CheckFilter(f.AgentID, f.ResourcePrefix)
	}
	if err == nil && a.After != "" {
		f.After, err = parseLeaseCursor(a.After)
	}
	if err != nil {
		c.answerErr(id, err, 0)
		return
	}
	var ls []engine.Lease
	var more bool
	var next engine.LeasePos
	var seq uint64
	for hold := 0; ; hold++ {
		f.Limit = limit - len(ls)
		p, sq, err := read(s, c, func(now int64) (engine.LeasePage, error) {
			return s.eng.LeasesPage(now, f, listWork)
		})
		if err != nil {
			c.answerErr(id, err, sq)
			return
		}
		ls, seq = append(ls, p.Leases...), sq
		if more, next = p.More, p.Next; !more || len(ls) >= limit || hold+1 == listHolds {
			break
		}
		f.After = p.Next
	}
	r := &protocol.ListLeasesResult{Leases: make([]protocol.LeaseInfo, len(ls)), Truncated: more}
	for i := range ls {
		r.Leases[i] = leaseInfo(&ls[i])
	}
	if more {
		r.Next = leaseCursor(next)
	}
	c.appendBounded(id, r, seq, func(keep float64) bool {
		k, ok := keepCount(len(r.Leases), keep)
		if k > 0 {
			last := &r.Leases[k-1]
			r.Next = leaseCursor(engine.LeasePos{Resource: last.Resource, Fence: last.Fence})
		}
		r.Leases, r.Truncated = r.Leases[:k], true
		return ok
	})
}

func (s *Server) listAgents(c *conn, id uint64, a *protocol.Args) {
	var after engine.AgentPos
	limit, err := engine.CheckLimit(clampLimit(a.Limit))
	if err == nil && a.After != "" {
		after, err = parseAgentCursor(a.After)
	}
	if err != nil {
		c.answerErr(id, err, 0)
		return
	}
	var ags []engine.Agent
	var more bool
	var seq uint64
	for hold := 0; ; hold++ {
		n := min(limit-len(ags), listWork)
		p, sq, err := read(s, c, func(now int64) (engine.AgentPage, error) {
			return s.eng.AgentsPage(now, after, n)
		})
		if err != nil {
			c.answerErr(id, err, sq)
			return
		}
		ags, seq = append(ags, p.Agents...), sq
		if more, after = p.More, p.Next; !more || len(ags) >= limit || hold+1 == listHolds {
			break
		}
	}
	r := &protocol.ListAgentsResult{Agents: make([]protocol.AgentInfo, len(ags)), Truncated: more}
	for i := range ags {
		r.Agents[i] = agentInfo(&ags[i])
	}
	if more {
		r.Next = agentCursor(after)
	}
	c.appendBounded(id, r, seq, func(keep float64) bool {
		k, ok := keepCount(len(r.Agents), keep)
		if k > 0 {
			last := &r.Agents[k-1]
			r.Next = agentCursor(engine.AgentPos{Priority: last.Priority, ID: last.AgentID})
		}
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
	st, seq, err := s.counters()
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.StatsResult{
		UptimeMS:    s.uptime(),
		Connections: st.Connections,
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
		Pidfds:         st.Pidfds,
		ExitReleases:   st.ExitReleases,
		Goroutines:     runtime.NumGoroutine(),
		Cluster:        s.clusterStats(),
	}
	if f := st.Fault; f != nil {
		r.Degraded, r.DegradedSince, r.DegradedReason = true, f.Since.UnixMilli(), f.Reason()
	}
	c.appendResult(id, r, seq)
}
