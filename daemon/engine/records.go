package engine

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
}

// Records drains and returns the records produced since the last call, in
// order. It returns nil when Config.Journal is false.
func (e *Engine) Records() []Record {
	r := e.records
	e.records = nil
	return r
}

func (e *Engine) record(r Record) {
	if e.cfg.Journal {
		e.records = append(e.records, r)
	}
}
