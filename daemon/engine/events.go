package engine

import "github.com/klockd/klock/protocol"

// EventKind says what an Event reports.
type EventKind uint8

// The event kinds, with their wire names (protocol/README.md "watch").
const (
	EvGrant   EventKind = iota + 1 // a lease was granted (one event per lease)
	EvRelease                      // a lease was released (release, or end_session)
	EvExpire                       // a lease expired and was removed
	EvRevoke                       // a lease was revoked by an operator
	EvWait                         // a request got WAIT: parked in the queue, or answered at once
	EvDie                          // a request was answered DIE
	EvFreeze                       // a resource was frozen
	EvThaw                         // a resource was thawed
	EvEnd                          // a process-bound lease ended because its process exited
)

var eventNames = [...]string{
	EvGrant: "grant", EvRelease: "release", EvExpire: "expire", EvRevoke: "revoke",
	EvWait: "wait", EvDie: "die", EvFreeze: "freeze", EvThaw: "thaw", EvEnd: "end",
}

// String returns the kind's wire name, or "invalid".
func (k EventKind) String() string {
	if k < EvGrant || k > EvEnd {
		return "invalid"
	}
	return eventNames[k]
}

// Event is one thing that happened to a lease, a request or a resource, as
// a watcher sees it. Lease events (grant, release, expire, revoke, end)
// carry the lease; verdict events (wait, die) carry the request (no lease
// id, fence 0), the resource that decided it, the reason and HeldBy;
// freeze and thaw carry only the resource.
type Event struct {
	Kind      EventKind
	At        int64 // Unix ms: the time of the call that caused it
	Resource  string
	AgentID   string
	SessionID string
	LeaseID   string
	Predicate Predicate
	Fence     uint64
	ExpiresAt int64           // grant: when the lease expires (Unix ms)
	BoundPID  int32           // grant: the process the lease ends with (bind "process"); 0: not bound
	Reason    protocol.Reason // wait, die: the verdict
	HeldBy    string          // wait, die: the agent whose lease or queued request decided it
}

// SetEvents turns the event stream on or off. While it is on, every call
// that changes a lease, answers a request WAIT or DIE, or freezes or thaws
// a resource appends Events, drained with Events; while it is off (the
// default) nothing is built. Apply and Restore never produce events:
// replaying the log is not something happening now.
func (e *Engine) SetEvents(on bool) {
	e.eventsOn = on
	if !on {
		e.events = nil
	}
}

// Events drains and returns the events produced since the last call, in
// the order they happened; nil while events are off.
func (e *Engine) Events() []Event {
	ev := e.events
	e.events = nil
	return ev
}

// emitLease reports a change to one lease.
func (e *Engine) emitLease(kind EventKind, now int64, l *Lease) {
	if !e.eventsOn {
		return
	}
	e.events = append(e.events, Event{
		Kind: kind, At: now, Resource: l.Resource, AgentID: l.AgentID, SessionID: l.SessionID,
		LeaseID: l.ID, Predicate: l.Predicate, Fence: l.Fence,
	})
	if kind == EvGrant {
		ev := &e.events[len(e.events)-1]
		ev.ExpiresAt = l.ExpiresAt
		if l.Bound != nil {
			ev.BoundPID = l.Bound.PID
		}
	}
}

// emitLeaseOf reports a change to one of the table's leases.
func (e *Engine) emitLeaseOf(kind EventKind, now int64, x *lease) {
	if e.eventsOn {
		l := e.public(x)
		e.emitLease(kind, now, &l)
	}
}

// emitVerdict reports a WAIT or DIE verdict given to a request; other
// verdicts are not events.
func (e *Engine) emitVerdict(now int64, a *agent, session string, v *verdict) {
	if !e.eventsOn {
		return
	}
	var kind EventKind
	switch v.reason {
	case protocol.ReasonWait:
		kind = EvWait
	case protocol.ReasonDie:
		kind = EvDie
	default:
		return
	}
	ev := Event{Kind: kind, At: now, Resource: v.key, AgentID: a.id, SessionID: session, Predicate: v.pred, Reason: v.reason}
	if v.by != nil {
		ev.HeldBy = v.by.id
	}
	e.events = append(e.events, ev)
}

// emitResource reports a freeze or thaw.
func (e *Engine) emitResource(kind EventKind, now int64, key string) {
	if e.eventsOn {
		e.events = append(e.events, Event{Kind: kind, At: now, Resource: key})
	}
}
