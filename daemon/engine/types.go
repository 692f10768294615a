package engine

import (
	"strings"

	"github.com/klockd/klock/protocol"
)

// Predicate says how a lease uses its resource.
type Predicate uint8

// The six predicates. The zero value is not a valid predicate.
const (
	Provides Predicate = iota + 1
	Consumes
	Mutates
	Deletes
	DependsOn
	Renames
)

var predicateNames = [...]string{
	Provides:  "PROVIDES",
	Consumes:  "CONSUMES",
	Mutates:   "MUTATES",
	Deletes:   "DELETES",
	DependsOn: "DEPENDS_ON",
	Renames:   "RENAMES",
}

const predicateList = "PROVIDES, CONSUMES, MUTATES, DELETES, DEPENDS_ON, RENAMES"

// String returns the predicate's wire name (upper case), or "INVALID".
func (p Predicate) String() string {
	if p < Provides || p > Renames {
		return "INVALID"
	}
	return predicateNames[p]
}

// ParsePredicate parses a predicate name, ignoring case. An unknown name is
// an INVALID_ARGUMENT *Error naming the allowed values.
func ParsePredicate(s string) (Predicate, error) {
	for p := Provides; p <= Renames; p++ {
		if strings.EqualFold(s, predicateNames[p]) {
			return p, nil
		}
	}
	return 0, invalidf("klock: predicate %q is not one of %s", s, predicateList)
}

// compatible marks the predicate pairs that may share a resource:
// PROVIDES, CONSUMES and DEPENDS_ON coexist except PROVIDES with PROVIDES.
var compatible = [7][7]bool{
	Provides:  {Consumes: true, DependsOn: true},
	Consumes:  {Provides: true, Consumes: true, DependsOn: true},
	DependsOn: {Provides: true, Consumes: true, DependsOn: true},
}

// Conflicts reports whether leases with predicates p and q may not hold one
// resource at the same time (DESIGN.md "Conflict matrix"; symmetric).
func Conflicts(p, q Predicate) bool {
	if p > Renames || q > Renames {
		return true
	}
	return !compatible[p][q]
}

// ResourceType says what kind of thing a resource path names.
type ResourceType uint8

// The five resource types. The zero value is not a valid type.
const (
	File ResourceType = iota + 1
	Symbol
	APIEndpoint
	DatabaseTable
	ConfigKey
)

var resourceTypeNames = [...]string{
	File:          "FILE",
	Symbol:        "SYMBOL",
	APIEndpoint:   "API_ENDPOINT",
	DatabaseTable: "DATABASE_TABLE",
	ConfigKey:     "CONFIG_KEY",
}

const resourceTypeList = "FILE, SYMBOL, API_ENDPOINT, DATABASE_TABLE, CONFIG_KEY"

// String returns the type's wire name (upper case), or "INVALID".
func (t ResourceType) String() string {
	if t < File || t > ConfigKey {
		return "INVALID"
	}
	return resourceTypeNames[t]
}

// ParseResourceType parses a resource type name, ignoring case. An unknown
// name is an INVALID_ARGUMENT *Error naming the allowed values.
func ParseResourceType(s string) (ResourceType, error) {
	for t := File; t <= ConfigKey; t++ {
		if strings.EqualFold(s, resourceTypeNames[t]) {
			return t, nil
		}
	}
	return 0, invalidf("klock: resource_type %q is not one of %s", s, resourceTypeList)
}

// DefaultMaxTTL is the longest lease ttl when Config.MaxTTL is 0: 24 hours.
const DefaultMaxTTL int64 = 24 * 60 * 60 * 1000

// Config sets the engine's limits.
type Config struct {
	MaxLeases  int    // 0 = unlimited; reached -> RESOURCE_EXHAUSTED
	MaxWaiters int    // 0 = unlimited; reached -> RESOURCE_EXHAUSTED
	MaxAgents  int    // registered agents; 0 = unlimited; reached -> RESOURCE_EXHAUSTED for a new agent
	MaxTTL     int64  // longest ttl and wait_timeout in ms; 0 = DefaultMaxTTL
	AdminUID   uint32 // besides uid 0, the uid allowed revoke/freeze/thaw (the daemon's uid)
	Journal    bool   // when true, every state change is appended as a Record (see Records)
}

// Caller is the peer credential of the request's connection; uid 0 is root.
type Caller struct {
	UID uint32
	PID int32
}

// Error is the type of every error the engine returns: a protocol/README.md error
// code plus a lower-case "klock: ..." message for humans.
type Error struct {
	Code    protocol.Code
	Message string
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// Lease is one granted lease. Tags are the short msgpack keys used in
// records and snapshots.
type Lease struct {
	ID         string    `msgpack:"id"` // random UUID
	AgentID    string    `msgpack:"a"`
	SessionID  string    `msgpack:"s"`
	Resource   string    `msgpack:"r"` // resource key "TYPE:path"
	Predicate  Predicate `msgpack:"p"`
	AcquiredAt int64     `msgpack:"at"` // Unix ms
	ExpiresAt  int64     `msgpack:"ex"` // Unix ms; active while now < ExpiresAt
	TTL        int64     `msgpack:"ttl"`
	Fence      uint64    `msgpack:"f"` // fencing token, unique and increasing
	OwnerUID   uint32    `msgpack:"u"` // uid of the connection that acquired it
	OwnerPID   int32     `msgpack:"pid"`
	// Bound is the process the lease ends with (bind "process"), nil when
	// it is not bound. The leases of one process share one Process, which
	// is never changed: copies of a Lease may share it too.
	Bound *Process `msgpack:"b,omitempty"`
	// ClientPath is the path the holder named, if not the key's (worktrees).
	ClientPath string `msgpack:"cp,omitempty"`
}

// Never is the ExpiresAt of a lease without a ttl: a lease bound to its
// process and taken with ttl 0 lasts until it is released or its process
// ends. It is not in the expiry queue and is always active.
const Never int64 = 1<<63 - 1

// Process names one process a lease is bound to, so that a pid the kernel
// reuses for another process is never taken for it: the pid, the process's
// start time (field 22 of /proc/PID/stat, clock ticks since boot) and the
// boot it started in (the first 32 bits of the kernel's boot_id), since a
// start time only means something within one boot. The engine never reads
// them; the daemon does, and tells the engine when the process has ended
// (ProcessEnded).
type Process struct {
	PID   int32  `msgpack:"pid"`
	Boot  uint32 `msgpack:"bt"`
	Start uint64 `msgpack:"st"`
}

// Denial is a refused acquire: why, when to retry, who decided it and a
// sentence for humans.
type Denial struct {
	Reason   protocol.Reason
	WaitTime int64  // suggested delay before retrying, ms, 1..1000
	HeldBy   string // agent whose lease or queued request decided it ("" if none)
	HeldPath string // the ClientPath of the lease that decided it, if any
	Message  string
}

// WaiterID names a queued request.
type WaiterID uint64

// Result is the answer to Acquire or AcquireMany. When Granted, Leases has
// one entry per intent, in order. Otherwise Denial says why; Queued means
// the verdict is WAIT and the request is parked (only when WaitTimeout > 0):
// its final answer comes later as a Wakeup for Waiter.
type Result struct {
	Granted bool
	Leases  []Lease
	Denial  Denial
	Queued  bool
	Waiter  WaiterID
}

// Wakeup is the final answer to a queued request: a grant or a denial (DIE,
// WAIT on timeout, RESOURCE_LOCKED on freeze, SESSION_EXPIRED on
// end_session); never Queued.
type Wakeup struct {
	Waiter WaiterID
	Result Result
}

// Intent is one resource an acquire asks for, as given on the wire.
// ClientPath, optional, is the path the client named before the worktree
// rule mapped it to ResourcePath; it is kept on the lease for display.
type Intent struct {
	ResourceType, ResourcePath, Predicate string
	ClientPath                            string
}

// AcquireRequest is an acquire or acquire_many request. Acquire takes
// exactly one intent, AcquireMany 1..64.
type AcquireRequest struct {
	AgentID, SessionID string
	Intents            []Intent
	TTL                int64  // lease lifetime, ms, 1..MaxTTL; 0 = none (only with Bind)
	WaitTimeout        int64  // 0 = answer at once; else park a WAIT this long (ms)
	Idem               string // idempotency key, ≤ 64 bytes, "" = none
	// Bind, when set, binds the leases to that process: they end when
	// the daemon reports it ended (ProcessEnded), and TTL may be 0. The
	// daemon sets it to the requesting process itself, never to another.
	Bind *Process
}

// Agent is a registered agent as listed by ListAgents.
type Agent struct {
	ID           string
	Priority     int64 // lower = older = higher precedence
	RegisteredAt int64
	OwnerUID     uint32
	Leases       int // active leases
	Waiting      int // queued requests
}

// LeaseFilter selects leases for ListLeases and LeasesPage. Limit 0 means
// 1000; above 10000 is INVALID_ARGUMENT. After is where the listing
// starts: only leases strictly after it in list order (the zero LeasePos:
// from the start).
type LeaseFilter struct {
	AgentID, ResourcePrefix string
	Limit                   int
	After                   LeasePos
}

// AddTotals adds o's totals (the counters since New, not the current
// counts nor the fence) to s: the totals of an engine state that a
// rollback replaced.
func (s *Stats) AddTotals(o Stats) {
	s.Grants += o.Grants
	s.Waits += o.Waits
	s.Dies += o.Dies
	s.Expirations += o.Expirations
	s.ExitReleases += o.ExitReleases
	s.Conflicts += o.Conflicts
	s.Locked += o.Locked
	s.SessionExpired += o.SessionExpired
	s.Releases += o.Releases
	s.Revocations += o.Revocations
}

// Stats are the engine's counters: current counts and totals since New.
// Processes counts the processes that leases or queued requests are bound
// to; ExitReleases the leases ended because their process ended.
type Stats struct {
	Agents, Leases, Waiters, Processes                    int
	Grants, Waits, Dies, Expirations, ExitReleases, Fence uint64
	// Conflicts, Locked and SessionExpired count the denials answered
	// CONFLICT, RESOURCE_LOCKED and SESSION_EXPIRED (queued requests
	// answered so included).
	Conflicts, Locked, SessionExpired uint64
	// Releases counts leases ended by release or end_session, Revocations
	// those ended by revoke.
	Releases, Revocations uint64
}
