package engine

import (
	"cmp"
	"slices"

	"github.com/klockd/klock/protocol"
)

// ReplicaState is a replica's whole state: the durable State plus what a
// State leaves out because a single daemon loses it on restart anyway, the
// queued requests and the queues waiting to be decided again. In cluster
// mode queued requests are part of the replicated state (a request parked
// on one node makes a junior on another DIE), so a node that joins from a
// snapshot must load them too.
//
// The lease id generator is not part of it: replicas reseed it from every
// command (ReseedLeaseIDs). Counters other than the fence start from zero.
type ReplicaState struct {
	State *State `msgpack:"s"`
	// Waiters are the queued requests, sorted by id.
	Waiters []WaiterState `msgpack:"w"`
	// NextWaiter is the last waiter id handed out.
	NextWaiter WaiterID `msgpack:"nw"`
	// Dirty are the keys whose queue must be decided again, in the order
	// the engine will decide them, and SettleAt when that became due.
	Dirty    []string `msgpack:"d,omitempty"`
	SettleAt int64    `msgpack:"sa,omitempty"`
}

// WaiterState is one queued request in a ReplicaState.
type WaiterState struct {
	ID        WaiterID       `msgpack:"id"`
	AgentID   string         `msgpack:"a"`
	SessionID string         `msgpack:"s"`
	Priority  int64          `msgpack:"p"`
	Targets   []QueuedTarget `msgpack:"t"`
	TTL       int64          `msgpack:"ttl"`
	Idem      string         `msgpack:"i,omitempty"`
	UID       uint32         `msgpack:"u"`
	PID       int32          `msgpack:"pid"`
	Since     int64          `msgpack:"at"`
	Deadline  int64          `msgpack:"dl"`
	Bind      *Process       `msgpack:"b,omitempty"`
}

// QueuedTarget is one resource a queued request waits for.
type QueuedTarget struct {
	Resource  string    `msgpack:"r"`
	Predicate Predicate `msgpack:"p"`
}

// ReplicaSnapshot returns the engine's whole state, queued requests
// included. The result shares nothing with the engine.
func (e *Engine) ReplicaSnapshot() *ReplicaState {
	rs := &ReplicaState{State: e.Snapshot(), NextWaiter: e.nextWaiter, SettleAt: e.settleAt}
	rs.Waiters = make([]WaiterState, 0, len(e.waiters))
	for _, w := range e.waiters {
		ws := WaiterState{
			ID: w.id, AgentID: w.agent.id, SessionID: w.session, Priority: w.priority,
			Targets: make([]QueuedTarget, len(w.targets)),
			TTL:     w.ttl, Idem: w.idem, UID: w.uid, PID: w.pid, Since: w.since, Deadline: w.deadline,
		}
		if w.bind != nil {
			p := *w.bind
			ws.Bind = &p
		}
		for i, t := range w.targets {
			ws.Targets[i] = QueuedTarget{Resource: t.key, Predicate: t.pred}
		}
		rs.Waiters = append(rs.Waiters, ws)
	}
	slices.SortFunc(rs.Waiters, func(x, y WaiterState) int { return cmp.Compare(x.ID, y.ID) })
	for _, r := range e.dirty {
		rs.Dirty = append(rs.Dirty, r.key)
	}
	if len(rs.Dirty) == 0 {
		rs.SettleAt = 0
	}
	return rs
}

// RestoreReplica replaces the engine's state with rs, queued requests
// included (their answers then come as wake-ups with their ids, as on the
// engine that took the snapshot). Errors are as for Restore; a queued
// request of an unknown agent or with an id above NextWaiter is one too.
func (e *Engine) RestoreReplica(rs *ReplicaState) error {
	if rs.State == nil {
		*e = *New(e.cfg)
		return errorf(protocol.CodeInternal, "klock: replica state has no state")
	}
	if err := e.restoreStream(rs.State, rs.State.EachLease); err != nil {
		*e = *New(e.cfg)
		return err
	}
	if err := e.restoreWaiters(rs); err != nil {
		*e = *New(e.cfg)
		return err
	}
	return nil
}

func (e *Engine) restoreWaiters(rs *ReplicaState) *Error {
	e.nextWaiter = rs.NextWaiter
	for i := range rs.Waiters {
		ws := &rs.Waiters[i]
		a := e.agents[ws.AgentID]
		switch {
		case a == nil || a.unregistered:
			return errorf(protocol.CodeInternal, "klock: queued request %d of unknown agent %q", ws.ID, ws.AgentID)
		case ws.ID == 0 || ws.ID > rs.NextWaiter || e.waiters[ws.ID] != nil:
			return errorf(protocol.CodeInternal, "klock: queued request id %d is out of order or repeated", ws.ID)
		case len(ws.Targets) == 0:
			return errorf(protocol.CodeInternal, "klock: queued request %d waits for nothing", ws.ID)
		}
		w := &waiter{
			id: ws.ID, agent: a, session: ws.SessionID, priority: ws.Priority,
			targets: make([]target, len(ws.Targets)),
			ttl:     ws.TTL, idem: ws.Idem, uid: ws.UID, pid: ws.PID, since: ws.Since, deadline: ws.Deadline,
		}
		if ws.Bind != nil {
			p := *ws.Bind
			w.bind = &p
		}
		for j, t := range ws.Targets {
			if t.Predicate < Provides || t.Predicate > Renames {
				return errorf(protocol.CodeInternal, "klock: queued request %d has predicate %d", ws.ID, t.Predicate)
			}
			w.targets[j] = target{key: t.Resource, pred: t.Predicate}
		}
		e.park(w)
	}
	for _, key := range rs.Dirty {
		e.markDirty(e.resourceFor(key))
	}
	e.settleAt = rs.SettleAt
	return nil
}
