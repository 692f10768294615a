package engine

import "github.com/klockd/klock/protocol"

var errTODO = &Error{Code: protocol.CodeInternal, Message: "klock: not implemented yet"}

type leaseHeap []*lease
type waiterHeap []*waiter
type waiter struct{}
type queued struct{}

func invalidf(format string, args ...any) *Error { return errTODO }

// ResourceKey returns the resource key "TYPE:path".
func ResourceKey(typ, path string) (string, error) { return "", errTODO }

// Register registers an agent.
func (e *Engine) Register(now int64, c Caller, agentID string, priority int64, hasPriority bool) (Agent, error) {
	return Agent{}, errTODO
}

// Unregister removes an agent.
func (e *Engine) Unregister(now int64, c Caller, agentID string) (bool, error) { return false, errTODO }

// Acquire decides one intent.
func (e *Engine) Acquire(now int64, c Caller, req AcquireRequest) (Result, error) {
	return Result{}, errTODO
}

// AcquireMany decides 1..64 intents all or nothing.
func (e *Engine) AcquireMany(now int64, c Caller, req AcquireRequest) (Result, error) {
	return Result{}, errTODO
}

// Release ends a lease.
func (e *Engine) Release(now int64, c Caller, leaseID string) (bool, []Wakeup, error) {
	return false, nil, errTODO
}

// Heartbeat extends a lease.
func (e *Engine) Heartbeat(now int64, c Caller, leaseID string, ttl int64) (Lease, error) {
	return Lease{}, errTODO
}

// EndSession ends a session.
func (e *Engine) EndSession(now int64, c Caller, agentID, sessionID string) (int, []Wakeup, error) {
	return 0, nil, errTODO
}

// Revoke ends a lease (admin).
func (e *Engine) Revoke(now int64, c Caller, leaseID string) (bool, []Wakeup, error) {
	return false, nil, errTODO
}

// Freeze freezes a resource (admin).
func (e *Engine) Freeze(now int64, c Caller, typ, path string) (bool, []Wakeup, error) {
	return false, nil, errTODO
}

// Thaw thaws a resource (admin).
func (e *Engine) Thaw(now int64, c Caller, typ, path string) (bool, error) { return false, errTODO }

// Cancel drops a queued request.
func (e *Engine) Cancel(now int64, w WaiterID) []Wakeup { return nil }

// CancelAll drops every queued request.
func (e *Engine) CancelAll(now int64) []WaiterID { return nil }

// NextDeadline returns the earliest lease expiry or waiter deadline.
func (e *Engine) NextDeadline() (int64, bool) { return 0, false }

// Expire removes due leases and times out waiters.
func (e *Engine) Expire(now int64) (int, []Wakeup) { return 0, nil }

// EvictExpired is the evict_expired op.
func (e *Engine) EvictExpired(now int64) (int, []Wakeup) { return 0, nil }

// ActiveLeaseCount counts active leases.
func (e *Engine) ActiveLeaseCount(now int64) int { return 0 }

// ListLeases lists active leases.
func (e *Engine) ListLeases(now int64, f LeaseFilter) ([]Lease, bool, error) {
	return nil, false, errTODO
}

// ListAgents lists agents.
func (e *Engine) ListAgents(now int64, limit int) ([]Agent, bool, error) {
	return nil, false, errTODO
}

// Stats returns counters.
func (e *Engine) Stats() Stats { return Stats{} }

// Apply replays one record.
func (e *Engine) Apply(r Record) error { return errTODO }

// Snapshot returns the whole state.
func (e *Engine) Snapshot() *State { return &State{} }

// Restore loads a state.
func (e *Engine) Restore(s *State) error { return errTODO }
