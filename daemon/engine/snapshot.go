package engine

import (
	"cmp"
	"slices"
	"strings"

	"github.com/klockd/klock/protocol"
)

// StateVersion is the version of the State layout written by Snapshot.
const StateVersion = 1

// State is the engine's whole durable state, as saved by Snapshot and
// loaded by Restore. Queued requests are not part of it: they belong to
// connections, which do not survive a restart. Slices are in a fixed order
// (sorted, except Ended: see there) so that equal states compare equal.
type State struct {
	// Version is StateVersion when written.
	Version int `msgpack:"v"`
	// Fence is the last fencing token issued.
	Fence uint64 `msgpack:"f"`
	// LastAuto is the last priority assigned from the clock.
	LastAuto int64 `msgpack:"la"`
	// Agents are the registered agents (and unregistered ones that still
	// have expired leases not yet removed), sorted by id.
	Agents []AgentState `msgpack:"a"`
	// Leases are all leases not yet removed (expired ones included), sorted
	// by fence.
	Leases []LeaseState `msgpack:"l"`
	// Frozen are the frozen resource keys, sorted.
	Frozen []string `msgpack:"z"`
	// Ended are the ended sessions the agents remember (at most
	// maxEndedSessions each), grouped by agent in the order of Agents and,
	// within an agent, in the order they were ended, oldest first: Restore
	// remembers them in list order, so the restored engine forgets the same
	// session next. States written before this order (sorted by session
	// within an agent) restore with that order instead.
	Ended []SessionRef `msgpack:"e"`
}

// AgentState is one agent in a State.
type AgentState struct {
	ID           string `msgpack:"id"`
	Priority     int64  `msgpack:"p"`
	RegisteredAt int64  `msgpack:"at"`
	UID          uint32 `msgpack:"u"`
	// Unregistered marks an agent kept only because expired leases of it
	// have not been removed yet.
	Unregistered bool `msgpack:"x,omitempty"`
}

// LeaseState is one lease in a State with the idempotency key it is
// answered under ("" when none or when the key has moved on).
type LeaseState struct {
	Lease Lease  `msgpack:"l"`
	Idem  string `msgpack:"i,omitempty"`
}

// SessionRef names one session of one agent.
type SessionRef struct {
	AgentID   string `msgpack:"a"`
	SessionID string `msgpack:"s"`
}

// Snapshot returns the engine's whole durable state (queued requests are
// not included). The result shares nothing mutable with the engine (a
// bound lease's Process is never changed).
func (e *Engine) Snapshot() *State {
	s, n, each := e.SnapshotStream()
	s.Leases = make([]LeaseState, 0, n)
	each(func(ls LeaseState) error {
		s.Leases = append(s.Leases, ls)
		return nil
	})
	return s
}

// SnapshotStream is Snapshot without a copy of the leases: it returns the
// state with Leases nil, the number of leases, and each, which calls yield
// with the leases Snapshot would list, in its order, built one at a time,
// and stops at yield's first error. Compaction writes the state of a
// million leases with it, rather than holding a copy of them all. The
// engine must not change until each has returned.
func (e *Engine) SnapshotStream() (s *State, n int, each func(yield func(LeaseState) error) error) {
	s = &State{Version: StateVersion, Fence: e.fence, LastAuto: e.lastAuto}
	s.Agents = make([]AgentState, 0, len(e.agents))
	for _, a := range e.agents {
		s.Agents = append(s.Agents, AgentState{
			ID: a.id, Priority: a.priority, RegisteredAt: a.registeredAt, UID: a.uid, Unregistered: a.unregistered,
		})
	}
	slices.SortFunc(s.Agents, func(x, y AgentState) int { return strings.Compare(x.ID, y.ID) })
	leases := make([]*lease, 0, e.leases.len())
	e.leases.each(func(l *lease) { leases = append(leases, l) })
	slices.SortFunc(leases, func(x, y *lease) int { return cmp.Compare(x.Fence, y.Fence) })
	for r := range e.resources.all() {
		if r.frozen {
			s.Frozen = append(s.Frozen, r.key)
		}
	}
	slices.Sort(s.Frozen)
	for _, as := range s.Agents {
		e.agents[as.ID].ended.each(func(session string) {
			s.Ended = append(s.Ended, SessionRef{AgentID: as.ID, SessionID: session})
		})
	}
	each = func(yield func(LeaseState) error) error {
		for _, l := range leases {
			ls := LeaseState{Lease: e.public(l)}
			if l.idem != nil {
				ls.Idem = l.idem.key
			}
			if err := yield(ls); err != nil {
				return err
			}
		}
		return nil
	}
	return s, len(leases), each
}

// Restore replaces the engine's state with s (queued requests are dropped
// without answer; call CancelAll first to answer them). Counters other
// than the fence start from zero. A state of another version, or one that
// does not hold together (a lease of an unknown agent, a lease id twice),
// is an INTERNAL *Error and leaves the engine empty.
func (e *Engine) Restore(s *State) error {
	return e.RestoreStream(s, s.EachLease)
}

// RestoreStream is Restore with the leases given one at a time by each, in
// a State's order, as a snapshot is read: a state of a million leases is
// restored without a copy of them all. head's Leases are not used, and its
// Frozen and Ended are read only once each has returned (a reader may fill
// them in meanwhile). An error each returns is returned as it is.
func (e *Engine) RestoreStream(head *State, each func(yield func(LeaseState) error) error) error {
	// Whether events are built is a setting of the owner, not state: a
	// rollback must not stop the watch streams.
	on := e.eventsOn
	defer func() { e.eventsOn = on }()
	if err := e.restoreStream(head, each); err != nil {
		*e = *New(e.cfg)
		return err
	}
	return nil
}

// EachLease yields s's leases in order, as RestoreStream's each: an error
// yield returns stops it and is returned.
func (s *State) EachLease(yield func(LeaseState) error) error {
	for _, ls := range s.Leases {
		if err := yield(ls); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) restoreStream(s *State, each func(yield func(LeaseState) error) error) error {
	*e = *New(e.cfg)
	if s.Version != StateVersion {
		return errorf(protocol.CodeInternal, "klock: state version %d is not supported (want %d)", s.Version, StateVersion)
	}
	e.fence, e.lastAuto = s.Fence, s.LastAuto
	// Sized up front: rehashing showed in recovery profiles of 100k leases.
	// (The resource table grows a bucket at a time; it does not rehash.)
	e.agents = make(map[string]*agent, len(s.Agents))
	for _, as := range s.Agents {
		if _, dup := e.agents[as.ID]; dup {
			return errorf(protocol.CodeInternal, "klock: state lists agent %q twice", as.ID)
		}
		e.agentSeq++
		a := &agent{
			seq: e.agentSeq,
			id:  as.ID, priority: as.Priority, registeredAt: as.RegisteredAt, uid: as.UID, unregistered: as.Unregistered,
		}
		e.agents[as.ID] = a
		if !as.Unregistered {
			e.registered++
			e.byPriority.ReplaceOrInsert(a)
		}
	}
	type idemKey struct{ agent, key string }
	groups := make(map[idemKey][]*lease)
	var order []idemKey
	err := each(func(ls LeaseState) error {
		x, err := e.addLease(ls.Lease, nil, nil)
		if err != nil {
			return err
		}
		if ls.Idem != "" {
			k := idemKey{ls.Lease.AgentID, ls.Idem}
			if groups[k] == nil {
				order = append(order, k)
			}
			groups[k] = append(groups[k], x)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range order {
		e.bindIdemRead(k.key, groups[k])
	}
	for _, key := range s.Frozen {
		e.resourceFor(key).frozen = true
	}
	// In list order, so that each agent forgets its oldest first; a list
	// longer than maxEndedSessions (an older state) keeps the newest. A
	// session of an agent the state does not list is not kept: an agent of
	// that id registered later starts afresh.
	for _, ref := range s.Ended {
		if a := e.agents[ref.AgentID]; a != nil {
			a.ended.add(ref.SessionID)
		}
	}
	// Leftover agents whose leases are all gone are not kept.
	for _, a := range e.agents {
		e.dropLeftover(a)
	}
	return nil
}
