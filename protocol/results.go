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
	ExpiresAt  int64  `msgpack:"expires_at"` // 0: no ttl (a bound lease)
	Fence      uint64 `msgpack:"fence"`
	BoundPID   int32  `msgpack:"bound_pid,omitempty"` // the process it ends with (bind "process"); 0: not bound
}

// Denial is the result of a denied acquire or acquire_many. Success is
// always false.
type Denial struct {
	Success  bool   `msgpack:"success"`
	Reason   Reason `msgpack:"reason"`
	WaitTime int64  `msgpack:"wait_time"`
	HeldBy   string `msgpack:"held_by"`
	Message  string `msgpack:"message"`
	// HeldPath is the client_path of the lease that decided the denial,
	// when it has one; omitted otherwise.
	HeldPath string `msgpack:"held_path,omitempty"`
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
	BoundPID   int32   `msgpack:"bound_pid,omitempty"`
	Reason     Reason  `msgpack:"reason"`
	WaitTime   int64   `msgpack:"wait_time"`
	HeldBy     string  `msgpack:"held_by"`
	Message    string  `msgpack:"message"`
	HeldPath   string  `msgpack:"held_path,omitempty"`
	Leases     []Grant `msgpack:"leases"`
}

// ReleaseResult is release's result.
type ReleaseResult struct {
	Released bool `msgpack:"released"`
}

// HeartbeatResult is heartbeat's result.
type HeartbeatResult struct {
	LeaseID   string `msgpack:"lease_id"`
	ExpiresAt int64  `msgpack:"expires_at"` // 0: no ttl
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

// LeaseInfo is one lease in list_leases. LeaseInfo, AgentInfo and
// WaiterInfo carry json tags too, for the dashboard's /api/state.
type LeaseInfo struct {
	LeaseID    string `msgpack:"lease_id" json:"lease_id"`
	AgentID    string `msgpack:"agent_id" json:"agent_id"`
	SessionID  string `msgpack:"session_id" json:"session_id"`
	Resource   string `msgpack:"resource" json:"resource"`
	Predicate  string `msgpack:"predicate" json:"predicate"`
	AcquiredAt int64  `msgpack:"acquired_at" json:"acquired_at"`
	ExpiresAt  int64  `msgpack:"expires_at" json:"expires_at"`
	Fence      uint64 `msgpack:"fence" json:"fence"`
	OwnerUID   uint32 `msgpack:"owner_uid" json:"owner_uid"`
	OwnerPID   int32  `msgpack:"owner_pid" json:"owner_pid"`
	BoundPID   int32  `msgpack:"bound_pid,omitempty" json:"bound_pid,omitempty"`
	// ClientPath is the path the holder named, when the worktree rule
	// keyed it as another (see Intent.ClientPath); omitted otherwise.
	ClientPath string `msgpack:"client_path,omitempty" json:"client_path,omitempty"`
}

// ListLeasesResult is list_leases' result. Next, when not empty, is the
// cursor of the next page: pass it as the next request's after.
type ListLeasesResult struct {
	Leases    []LeaseInfo `msgpack:"leases"`
	Truncated bool        `msgpack:"truncated"`
	Next      string      `msgpack:"next,omitempty"`
}

// AgentInfo is one agent in list_agents.
type AgentInfo struct {
	AgentID      string `msgpack:"agent_id" json:"agent_id"`
	Priority     int64  `msgpack:"priority" json:"priority"`
	RegisteredAt int64  `msgpack:"registered_at" json:"registered_at"`
	Leases       int    `msgpack:"leases" json:"leases"`
	Waiting      int    `msgpack:"waiting" json:"waiting"`
}

// ListAgentsResult is list_agents' result; Next as in ListLeasesResult.
type ListAgentsResult struct {
	Agents    []AgentInfo `msgpack:"agents"`
	Truncated bool        `msgpack:"truncated"`
	Next      string      `msgpack:"next,omitempty"`
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
	// Degraded says state changes are refused with UNAVAILABLE because
	// klockd cannot make them durable; DegradedSince (Unix ms) and
	// DegradedReason (errno, operation and file) say since when and why.
	// They are 0 and "" when not degraded.
	Degraded       bool   `msgpack:"degraded"`
	DegradedSince  int64  `msgpack:"degraded_since"`
	DegradedReason string `msgpack:"degraded_reason"`

	// BoundProcesses counts processes leases or parked acquires are bound
	// to; Pidfds the processes klockd watches (a pidfd each); ExitReleases
	// the leases ended because their process ended; Goroutines klockd's.
	BoundProcesses int    `msgpack:"bound_processes"`
	Pidfds         int    `msgpack:"pidfds"`
	ExitReleases   uint64 `msgpack:"exit_releases"`
	Goroutines     int    `msgpack:"goroutines"`
	// Cluster is set in cluster mode (klockd --etcd): this node and its
	// view of etcd.
	Cluster *ClusterStats `msgpack:"cluster,omitempty"`
}

// ClusterStats is a cluster-mode node's part of stats. The JSON tags are
// klockctl's (status --json).
type ClusterStats struct {
	Node     string `msgpack:"node" json:"node"`         // --node-id
	Leader   bool   `msgpack:"leader" json:"leader"`     // elected to tick, drop lapsed nodes' requests and write snapshots
	EtcdOK   bool   `msgpack:"etcd_ok" json:"etcd_ok"`   // an etcd quorum is reachable
	Since    int64  `msgpack:"since" json:"since"`       // ms: when etcd_ok last changed
	Error    string `msgpack:"error" json:"error"`       // why not etcd_ok ("" when ok)
	Revision int64  `msgpack:"revision" json:"revision"` // etcd revision of the last change applied
}

// ExplainResult is explain's result: the dry run of an acquire.
type ExplainResult struct {
	Resource  string       `msgpack:"resource"`
	Predicate string       `msgpack:"predicate"`
	AgentID   string       `msgpack:"agent_id"` // "" when none was named
	Priority  int64        `msgpack:"priority"` // the requester's (for none: what a new agent would get)
	Holders   []HolderInfo `msgpack:"holders"`
	Queue     []WaiterInfo `msgpack:"queue"`
	Verdict   string       `msgpack:"verdict"` // "GRANT" or the denial reason
	Reason    Reason       `msgpack:"reason"`  // "" when it would be granted
	WaitTime  int64        `msgpack:"wait_time"`
	HeldBy    string       `msgpack:"held_by"`
	Step      string       `msgpack:"step"`
	Message   string       `msgpack:"message"`
	Truncated bool         `msgpack:"truncated"` // holders or queue cut to fit in a frame
}

// VerdictGrant is explain's verdict when the acquire would be granted.
const VerdictGrant = "GRANT"

// HolderInfo is one holder in explain: a lease, its agent's priority and
// whether it conflicts with the request explained.
type HolderInfo struct {
	LeaseInfo `msgpack:",inline"`
	Priority  int64 `msgpack:"priority"`
	Conflicts bool  `msgpack:"conflicts"`
}

// WaiterInfo is one queued request, in explain's queue and in
// list_waiters.
type WaiterInfo struct {
	AgentID   string `msgpack:"agent_id" json:"agent_id"`
	SessionID string `msgpack:"session_id" json:"session_id"`
	Priority  int64  `msgpack:"priority" json:"priority"`
	Resource  string `msgpack:"resource" json:"resource"`
	Predicate string `msgpack:"predicate" json:"predicate"`
	Since     int64  `msgpack:"since" json:"since"`         // queued at
	Deadline  int64  `msgpack:"deadline" json:"deadline"`   // answered WAIT at, unless decided before
	WaitsFor  string `msgpack:"waits_for" json:"waits_for"` // the agent whose lease it waits for now
	Conflicts bool   `msgpack:"conflicts,omitempty" json:"conflicts,omitempty"`
}

// ListWaitersResult is list_waiters' result.
type ListWaitersResult struct {
	Waiters   []WaiterInfo `msgpack:"waiters"`
	Truncated bool         `msgpack:"truncated"`
}

// WatchResult is the first answer to watch.
type WatchResult struct {
	Watching bool  `msgpack:"watching"`
	WatchID  int64 `msgpack:"watch_id"`
}

// UnwatchResult is unwatch's result.
type UnwatchResult struct {
	Unwatched bool `msgpack:"unwatched"`
}

// The event names of watch (README.md "watch").
const (
	EventGrant    = "grant"
	EventRelease  = "release"
	EventExpire   = "expire"
	EventRevoke   = "revoke"
	EventWait     = "wait"
	EventDie      = "die"
	EventFreeze   = "freeze"
	EventThaw     = "thaw"
	EventEnd      = "end"
	EventOverflow = "overflow"
)

// WatchEvent is one event of a watch stream, sent as a result with the
// watch request's id. It carries json tags too: klockctl watch --json and
// the dashboard's /events print the same keys.
type WatchEvent struct {
	Event     string `msgpack:"event" json:"event"`
	At        int64  `msgpack:"at" json:"at"`
	Resource  string `msgpack:"resource" json:"resource"`
	AgentID   string `msgpack:"agent_id" json:"agent_id"`
	SessionID string `msgpack:"session_id" json:"session_id"`
	LeaseID   string `msgpack:"lease_id" json:"lease_id"`
	Predicate string `msgpack:"predicate" json:"predicate"`
	Fence     uint64 `msgpack:"fence" json:"fence"`
	ExpiresAt int64  `msgpack:"expires_at,omitempty" json:"expires_at,omitempty"`
	BoundPID  int32  `msgpack:"bound_pid,omitempty" json:"bound_pid,omitempty"`
	Reason    Reason `msgpack:"reason,omitempty" json:"reason,omitempty"`
	HeldBy    string `msgpack:"held_by,omitempty" json:"held_by,omitempty"`
}
