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
	OpExplain          = "explain"
	OpWatch            = "watch"
	OpUnwatch          = "unwatch"
	OpListWaiters      = "list_waiters"
)

// Ops lists every operation, in the order README.md documents them.
var Ops = []string{
	OpHello, OpRegisterAgent, OpUnregisterAgent, OpAcquire, OpAcquireMany,
	OpRelease, OpHeartbeat, OpEndSession, OpActiveLeaseCount, OpEvictExpired,
	OpListLeases, OpListAgents, OpRevoke, OpFreeze, OpThaw, OpStats,
	OpExplain, OpWatch, OpUnwatch, OpListWaiters,
}

// opArgs lists the arguments each operation takes. Any other key in its
// args is, for that op, an unknown key: ignored whatever its value.
var opArgs = map[string]Arg{
	OpHello:            ArgClient,
	OpRegisterAgent:    ArgAgentID | ArgPriority,
	OpUnregisterAgent:  ArgAgentID,
	OpAcquire:          ArgAgentID | ArgSessionID | ArgResourceType | ArgResourcePath | ArgPredicate | ArgTTL | ArgWaitTimeout | ArgIdem | ArgBind | ArgClientPath,
	OpAcquireMany:      ArgAgentID | ArgSessionID | ArgTTL | ArgWaitTimeout | ArgIdem | ArgIntents | ArgBind,
	OpRelease:          ArgLeaseID,
	OpHeartbeat:        ArgLeaseID | ArgTTL,
	OpEndSession:       ArgAgentID | ArgSessionID,
	OpActiveLeaseCount: 0,
	OpEvictExpired:     0,
	OpListLeases:       ArgAgentID | ArgResourcePrefix | ArgLimit | ArgAfter,
	OpListAgents:       ArgLimit | ArgAfter,
	OpRevoke:           ArgLeaseID,
	OpFreeze:           ArgResourceType | ArgResourcePath,
	OpThaw:             ArgResourceType | ArgResourcePath,
	OpStats:            0,
	OpExplain:          ArgAgentID | ArgSessionID | ArgResourceType | ArgResourcePath | ArgPredicate,
	OpWatch:            ArgAgentID | ArgResourcePrefix,
	OpUnwatch:          ArgWatchID,
	OpListWaiters:      ArgLimit,
}

// OpArgs returns the arguments op takes (0 for an unknown op).
func OpArgs(op string) Arg { return opArgs[op] }
