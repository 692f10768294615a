package server

import (
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// explain answers what an acquire would get, changing nothing: the engine
// decides it with the same code as an acquire (engine.Explain).
func (s *Server) explain(c *conn, id uint64, a *protocol.Args) {
	req := engine.ExplainRequest{
		AgentID: a.AgentID, SessionID: a.SessionID,
		ResourceType: a.ResourceType, ResourcePath: a.ResourcePath, Predicate: a.Predicate,
	}
	x, seq, err := read(s, c, func(now int64) (engine.Explanation, error) {
		return s.eng.Explain(now, req)
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := explainAnswer(&x)
	c.appendBounded(id, r, seq, func(keep float64) bool {
		// Cut the longer list first; both are marked by truncated.
		if len(r.Holders) >= len(r.Queue) {
			k, ok := keepCount(len(r.Holders), keep)
			r.Holders, r.Truncated = r.Holders[:k], true
			return ok
		}
		k, ok := keepCount(len(r.Queue), keep)
		r.Queue, r.Truncated = r.Queue[:k], true
		return ok
	})
}

// explainAnswer converts an engine explanation to its wire form.
func explainAnswer(x *engine.Explanation) *protocol.ExplainResult {
	r := &protocol.ExplainResult{
		Resource: x.Resource, Predicate: x.Predicate.String(), AgentID: x.AgentID, Priority: x.Priority,
		Holders: make([]protocol.HolderInfo, len(x.Holders)),
		Queue:   make([]protocol.WaiterInfo, len(x.Queue)),
		Verdict: protocol.VerdictGrant, Reason: x.Reason, WaitTime: x.WaitTime, HeldBy: x.HeldBy,
		Step: string(x.Step), Message: x.Message,
	}
	if x.Reason != "" {
		r.Verdict = string(x.Reason)
	}
	for i := range x.Holders {
		h := &x.Holders[i]
		r.Holders[i] = protocol.HolderInfo{LeaseInfo: leaseInfo(&h.Lease), Priority: h.Priority, Conflicts: h.Conflicts}
	}
	for i := range x.Queue {
		r.Queue[i] = waiterInfo(&x.Queue[i])
	}
	return r
}

// leaseInfo converts an engine lease to its list form.
func leaseInfo(l *engine.Lease) protocol.LeaseInfo {
	return protocol.LeaseInfo{
		LeaseID: l.ID, AgentID: l.AgentID, SessionID: l.SessionID, Resource: l.Resource,
		Predicate: l.Predicate.String(), AcquiredAt: l.AcquiredAt, ExpiresAt: wireExpiry(l.ExpiresAt),
		Fence: l.Fence, OwnerUID: l.OwnerUID, OwnerPID: l.OwnerPID, BoundPID: boundPID(l),
		ClientPath: l.ClientPath,
	}
}

// waiterInfo converts a queued request to its wire form.
func waiterInfo(w *engine.Waiting) protocol.WaiterInfo {
	return protocol.WaiterInfo{
		AgentID: w.AgentID, SessionID: w.SessionID, Priority: w.Priority, Resource: w.Resource,
		Predicate: w.Predicate.String(), Since: w.Since, Deadline: w.Deadline, WaitsFor: w.WaitsFor,
		Conflicts: w.Conflicts,
	}
}

// listWaiters lists the queued requests, by resource then queue order.
func (s *Server) listWaiters(c *conn, id uint64, a *protocol.Args) {
	type list struct {
		waiters   []engine.Waiting
		truncated bool
	}
	ws, seq, err := read(s, c, func(now int64) (list, error) {
		ws, truncated, err := s.eng.ListWaiting(now, clampLimit(a.Limit))
		return list{ws, truncated}, err
	})
	if err != nil {
		c.answerErr(id, err, seq)
		return
	}
	r := &protocol.ListWaitersResult{Waiters: make([]protocol.WaiterInfo, len(ws.waiters)), Truncated: ws.truncated}
	for i := range ws.waiters {
		r.Waiters[i] = waiterInfo(&ws.waiters[i])
	}
	c.appendBounded(id, r, seq, func(keep float64) bool {
		k, ok := keepCount(len(r.Waiters), keep)
		r.Waiters, r.Truncated = r.Waiters[:k], true
		return ok
	})
}
