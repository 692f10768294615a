package protocol

// Operation names (the request's op).
const (
	OpHello            = "hello"
	OpRegisterAgent    = "register_agent"
	OpUnregisterAgent  = "unregister_agent"
	OpAcquire          = "acquire"
	OpAcquireMany      = "acquire_many"
	OpRelease          = "release"
	OpHeartbeat        = "heartbeat"
	OpEndSession       = "end_session"
	OpActiveLeaseCount = "active_lease_count"
	OpEvictExpired     = "evict_expired"
	OpListLeases       = "list_leases"
	OpListAgents       = "list_agents"
	OpRevoke           = "revoke"
	OpFreeze           = "freeze"
	OpThaw             = "thaw"
	OpStats            = "stats"
)

// Ops lists every operation, in the order README.md documents them.
var Ops = []string{
	OpHello, OpRegisterAgent, OpUnregisterAgent, OpAcquire, OpAcquireMany,
	OpRelease, OpHeartbeat, OpEndSession, OpActiveLeaseCount, OpEvictExpired,
	OpListLeases, OpListAgents, OpRevoke, OpFreeze, OpThaw, OpStats,
}

// AdminOp reports whether op needs root or the daemon's own uid.
func AdminOp(op string) bool {
	return op == OpRevoke || op == OpFreeze || op == OpThaw
}
