package protocol

// Result types, one per operation, with the keys of README.md. Times are
// Unix milliseconds; durations are milliseconds.

// HelloResult is hello's result.
type HelloResult struct {
	Server    string `msgpack:"server"`
	Protocol  int    `msgpack:"protocol"`
	PID       int    `msgpack:"pid"`
	MaxFrame  int    `msgpack:"max_frame"`
	StartedAt int64  `msgpack:"started_at"`
}

// RegisterResult is register_agent's result.
type RegisterResult struct {
	AgentID      string `msgpack:"agent_id"`
	Priority     int64  `msgpack:"priority"`
	RegisteredAt int64  `msgpack:"registered_at"`
}

// UnregisterResult is unregister_agent's result.
type UnregisterResult struct {
	Unregistered bool `msgpack:"unregistered"`
}

// Grant is acquire's result when the lease is granted, and one element of
// acquire_many's leases. Success is always true.
type Grant struct {
	Success    bool   `msgpack:"success"`
	LeaseID    string `msgpack:"lease_id"`
	AgentID    string `msgpack:"agent_id"`
	SessionID  string `msgpack:"session_id"`
	Resource   string `msgpack:"resource"`
	Predicate  string `msgpack:"predicate"`
	AcquiredAt int64  `msgpack:"acquired_at"`
	ExpiresAt  int64  `msgpack:"expires_at"`
	Fence      uint64 `msgpack:"fence"`
}

// Denial is the result of a denied acquire or acquire_many. Success is
// always false.
type Denial struct {
	Success  bool   `msgpack:"success"`
	Reason   Reason `msgpack:"reason"`
	WaitTime int64  `msgpack:"wait_time"`
	HeldBy   string `msgpack:"held_by"`
	Message  string `msgpack:"message"`
}

// AcquireManyGrant is acquire_many's result when every lease is granted.
type AcquireManyGrant struct {
	Success bool    `msgpack:"success"`
	Leases  []Grant `msgpack:"leases"`
}

// AcquireResult decodes any result of acquire or acquire_many: a Grant, a
// Denial or a AcquireManyGrant (then Leases is set). Clients decode into it;
// the daemon encodes the precise types.
type AcquireResult struct {
	Success    bool    `msgpack:"success"`
	LeaseID    string  `msgpack:"lease_id"`
	AgentID    string  `msgpack:"agent_id"`
	SessionID  string  `msgpack:"session_id"`
	Resource   string  `msgpack:"resource"`
	Predicate  string  `msgpack:"predicate"`
	AcquiredAt int64   `msgpack:"acquired_at"`
	ExpiresAt  int64   `msgpack:"expires_at"`
	Fence      uint64  `msgpack:"fence"`
	Reason     Reason  `msgpack:"reason"`
	WaitTime   int64   `msgpack:"wait_time"`
	HeldBy     string  `msgpack:"held_by"`
	Message    string  `msgpack:"message"`
	Leases     []Grant `msgpack:"leases"`
}

// ReleaseResult is release's result.
type ReleaseResult struct {
	Released bool `msgpack:"released"`
}

// HeartbeatResult is heartbeat's result.
type HeartbeatResult struct {
	LeaseID   string `msgpack:"lease_id"`
	ExpiresAt int64  `msgpack:"expires_at"`
}

// EndSessionResult is end_session's result: how many leases it released.
type EndSessionResult struct {
	Released int `msgpack:"released"`
}

// CountResult is active_lease_count's result.
type CountResult struct {
	Count int `msgpack:"count"`
}

// EvictResult is evict_expired's result.
type EvictResult struct {
	Evicted int `msgpack:"evicted"`
}

// LeaseInfo is one lease in list_leases.
type LeaseInfo struct {
	LeaseID    string `msgpack:"lease_id"`
	AgentID    string `msgpack:"agent_id"`
	SessionID  string `msgpack:"session_id"`
	Resource   string `msgpack:"resource"`
	Predicate  string `msgpack:"predicate"`
	AcquiredAt int64  `msgpack:"acquired_at"`
	ExpiresAt  int64  `msgpack:"expires_at"`
	Fence      uint64 `msgpack:"fence"`
	OwnerUID   uint32 `msgpack:"owner_uid"`
	OwnerPID   int32  `msgpack:"owner_pid"`
}

// ListLeasesResult is list_leases' result.
type ListLeasesResult struct {
	Leases    []LeaseInfo `msgpack:"leases"`
	Truncated bool        `msgpack:"truncated"`
}

// AgentInfo is one agent in list_agents.
type AgentInfo struct {
	AgentID      string `msgpack:"agent_id"`
	Priority     int64  `msgpack:"priority"`
	RegisteredAt int64  `msgpack:"registered_at"`
	Leases       int    `msgpack:"leases"`
	Waiting      int    `msgpack:"waiting"`
}

// ListAgentsResult is list_agents' result.
type ListAgentsResult struct {
	Agents    []AgentInfo `msgpack:"agents"`
	Truncated bool        `msgpack:"truncated"`
}

// RevokeResult is revoke's result.
type RevokeResult struct {
	Revoked bool `msgpack:"revoked"`
}

// FreezeResult is the result of freeze and thaw: the state after the call.
type FreezeResult struct {
	Frozen bool `msgpack:"frozen"`
}

// StatsResult is stats' result.
type StatsResult struct {
	UptimeMS    int64  `msgpack:"uptime_ms"`
	Connections int    `msgpack:"connections"`
	Agents      int    `msgpack:"agents"`
	Leases      int    `msgpack:"leases"`
	Waiters     int    `msgpack:"waiters"`
	Ops         uint64 `msgpack:"ops"`
	Grants      uint64 `msgpack:"grants"`
	Waits       uint64 `msgpack:"waits"`
	Dies        uint64 `msgpack:"dies"`
	Expirations uint64 `msgpack:"expirations"`
	Fence       uint64 `msgpack:"fence"`
}
