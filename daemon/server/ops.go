package server

import (
	"runtime"
	"time"

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
// engine lock for at most listWork entries looked at at a time (fewer
// when holds take long, stepsize.go), and for at most listWork*listHolds
// entries in all, releasing the lock in between; an answer that stops
// early carries next, where the following request continues.
const (
	listWork  = 1000
	listHolds = 100
)

// listPage is what a list op has gathered: its entries, and whether more
// follow after next.
type listPage[T, P any] struct {
	items []T
	more  bool
	next  P
}

// gather pages through the engine for a list op: up to limit entries after
// pos, one hold of the lock per call of page, which answers with at most n
// entries wanted, looking at no more than work. It returns them with the
// sequence the answer waits for.
func gather[T, P any](s *Server, c *conn, limit int, pos P,
	page func(now int64, pos P, n, work int) (listPage[T, P], error)) (listPage[T, P], uint64, error) {
	all := listPage[T, P]{next: pos}
	for looked := 0; ; {
		if looked > 0 {
			s.turns.yield() // the requests waiting for s.mu go first
		}
		work := s.listSteps.size()
		p, seq, err := read(s, c, func(now int64) (listPage[T, P], error) {
			defer func(t0 time.Time) { s.listSteps.took(work, time.Since(t0)) }(time.Now())
			return page(now, all.next, limit-len(all.items), work)
		})
		if err != nil {
			return all, seq, err
		}
		looked += work
		all.items, all.more, all.next = append(all.items, p.items...), p.more, p.next
		if !all.more || len(all.items) >= limit || looked >= listWork*listHolds {
			return all, seq, nil
		}
	}
}

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
	got, seq, err := gather(s, c, limit, f.After, func(now int64, pos engine.LeasePos, n, work int) (listPage[engine.Lease, engine.LeasePos], error) {
		f.After, f.Limit = pos, n
		p, err := s.eng.LeasesPage(now, f, work)
		return listPage[engine.Lease, engine.LeasePos]{p.Leases, p.More, p.Next}, err
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.ListLeasesResult{}
	answerPage(c, id, seq, got, leaseInfo, leaseCursor,
		func(l *protocol.LeaseInfo) engine.LeasePos {
			return engine.LeasePos{Resource: l.Resource, Fence: l.Fence}
		},
		func(items []protocol.LeaseInfo, truncated bool, next string) {
			r.Leases, r.Truncated, r.Next = items, truncated, next
		}, r)
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
	got, seq, err := gather(s, c, limit, after, func(now int64, pos engine.AgentPos, n, work int) (listPage[engine.Agent, engine.AgentPos], error) {
		p, err := s.eng.AgentsPage(now, pos, min(n, work))
		return listPage[engine.Agent, engine.AgentPos]{p.Agents, p.More, p.Next}, err
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.ListAgentsResult{}
	answerPage(c, id, seq, got, agentInfo, agentCursor,
		func(a *protocol.AgentInfo) engine.AgentPos {
			return engine.AgentPos{Priority: a.Priority, ID: a.AgentID}
		},
		func(items []protocol.AgentInfo, truncated bool, next string) {
			r.Agents, r.Truncated, r.Next = items, truncated, next
		}, r)
}

// answerPage answers a list op with the page gather found, each entry
// converted by info, and next when more follow. An answer too big for
// max_frame keeps fewer entries; its next then names the last one kept
// (posOf). set fills result's fields, which is what is encoded.
func answerPage[T, P, I any](c *conn, id, seq uint64, got listPage[T, P],
	info func(*T) I, cursor func(P) string, posOf func(*I) P,
	set func(items []I, truncated bool, next string), result any) {
	items := make([]I, len(got.items))
	for i := range got.items {
		items[i] = info(&got.items[i])
	}
	var next string
	if got.more {
		next = cursor(got.next)
	}
	set(items, got.more, next)
	c.appendBounded(id, result, seq, func(keep float64) bool {
		k, ok := keepCount(len(items), keep)
		if k > 0 {
			next = cursor(posOf(&items[k-1]))
		}
		items = items[:k]
		set(items, true, next)
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
		Ops:         s.opsTotal(),
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
