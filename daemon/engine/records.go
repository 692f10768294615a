package engine

import "github.com/klockd/klock/protocol"

// RecordKind says which state change a Record is.
type RecordKind uint8

// The record kinds. Values are persisted: never renumber.
const (
	RecRegister   RecordKind = 1  // AgentID, Priority, Time (= registered_at), UID, Auto
	RecUnregister RecordKind = 2  // AgentID
	RecGrant      RecordKind = 3  // Leases (one acquire or acquire_many set), Idem
	RecRelease    RecordKind = 4  // LeaseIDs (one)
	RecHeartbeat  RecordKind = 5  // LeaseIDs (one), Time, TTL: expires_at = Time + TTL
	RecExpire     RecordKind = 6  // LeaseIDs removed because they expired
	RecRevoke     RecordKind = 7  // LeaseIDs (one)
	RecEndSession RecordKind = 8  // AgentID, SessionID
	RecFreeze     RecordKind = 9  // Resource
	RecThaw       RecordKind = 10 // Resource
	RecProcessEnd RecordKind = 11 // Bound, LeaseIDs: the leases bound to that process, ended because it ended
)

// Record is one state change, carrying everything needed to replay it
// exactly with Apply: lease ids, fences and times come from the record and
// are never generated again. Only the fields listed for its Kind are set.
type Record struct {
	// Kind is the state change (RecRegister ...).
	Kind RecordKind `msgpack:"k"`
	// Time is the call's time, Unix ms.
	Time int64 `msgpack:"t"`
	// AgentID is the agent registered, unregistered or whose session ended.
	AgentID string `msgpack:"a,omitempty"`
	// SessionID is the ended session (RecEndSession).
	SessionID string `msgpack:"s,omitempty"`
	// Priority is the registered priority (RecRegister).
	Priority int64 `msgpack:"p,omitempty"`
	// UID is the owner uid of a registered agent (RecRegister).
	UID uint32 `msgpack:"u,omitempty"`
	// Auto says the priority was assigned from the clock (RecRegister), so
	// later automatic priorities stay strictly above it.
	Auto bool `msgpack:"au,omitempty"`
	// TTL is the lease's new ttl (RecHeartbeat).
	TTL int64 `msgpack:"ttl,omitempty"`
	// Resource is the frozen or thawed resource key (RecFreeze, RecThaw).
	Resource string `msgpack:"r,omitempty"`
	// LeaseIDs are the leases released, heartbeaten, expired or revoked.
	LeaseIDs []string `msgpack:"ls,omitempty"`
	// Leases are the leases granted together (RecGrant), in intent order.
	Leases []Lease `msgpack:"g,omitempty"`
	// Idem is the idempotency key the grant was made under (RecGrant).
	Idem string `msgpack:"i,omitempty"`
	// Bound is the process that ended (RecProcessEnd).
	Bound *Process `msgpack:"b,omitempty"`
}

// Records drains and returns the records produced since the last call, in
// order. It returns nil when Config.Journal is false.
func (e *Engine) Records() []Record {
	r := e.records
	e.records = nil
	return r
}

// recordLease records a change to one lease, building nothing when the
// journal is off.
func (e *Engine) recordLease(kind RecordKind, now int64, leaseID string, ttl int64) {
	if e.cfg.Journal {
		e.records = append(e.records, Record{Kind: kind, Time: now, LeaseIDs: []string{leaseID}, TTL: ttl})
	}
}

func (e *Engine) record(r Record) {
	if e.cfg.Journal {
		e.records = append(e.records, r)
	}
}

// Apply replays one record on the engine (recovery): the state change is
// made exactly as recorded, without deciding anything again and without
// producing records or wake-ups. A record that does not fit the state (a
// lease granted twice, an unknown kind) is an INTERNAL *Error.
func (e *Engine) Apply(r Record) error {
	// Replaying is not something happening now: no events (SetEvents).
	on := e.eventsOn
	e.eventsOn = false
	defer func() { e.eventsOn = on }()
	if err := e.apply(&r); err != nil {
		return err
	}
	return nil
}

func (e *Engine) apply(r *Record) *Error {
	switch r.Kind {
	case RecRegister:
		e.applyRegister(r)
	case RecUnregister:
		e.applyUnregister(r)
	case RecGrant:
		xs := make([]*lease, 0, len(r.Leases))
		for _, l := range r.Leases {
			x, err := e.addLease(l, nil, nil)
			if err != nil {
				return err
			}
			xs = append(xs, x)
		}
		if r.Idem != "" {
			e.bindIdemRead(r.Idem, xs)
		}
	case RecRelease, RecRevoke, RecExpire, RecProcessEnd:
		for _, id := range r.LeaseIDs {
			if l := e.lookup(id); l != nil {
				e.removeLease(l)
			}
		}
	case RecHeartbeat:
		for _, id := range r.LeaseIDs {
			l := e.lookup(id)
			if l == nil {
				return errorf(protocol.CodeInternal, "klock: record heartbeats unknown lease %s", id)
			}
			e.heartbeat(l, r.Time, r.TTL)
		}
	case RecEndSession:
		a := e.agents[r.AgentID]
		if a == nil {
			return errorf(protocol.CodeInternal, "klock: record ends a session of unknown agent %q", r.AgentID)
		}
		e.endSession(r.Time, a, r.SessionID)
	case RecFreeze:
		e.resourceFor(r.Resource).frozen = true
	case RecThaw:
		if res := e.resources.get(r.Resource); res != nil {
			res.frozen = false
			e.dropIfIdle(res)
		}
	default:
		return errorf(protocol.CodeInternal, "klock: unknown record kind %d", r.Kind)
	}
	// No queue exists during replay; nothing is dirty for long.
	for _, res := range e.dirty {
		res.isDirty = false
		e.dropIfIdle(res)
	}
	clear(e.dirty)
	e.dirty = e.dirty[:0]
	return nil
}
