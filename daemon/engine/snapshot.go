package engine

// StateVersion is the version of the State layout written by Snapshot.
const StateVersion = 1

// State is the engine's whole durable state, as saved by Snapshot and
// loaded by Restore. Queued requests are not part of it: they belong to
// connections, which do not survive a restart. Slices are sorted so that
// equal states compare equal.
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
	// Ended are the ended sessions, sorted by agent then session.
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
