// Package engine is klock's lease engine: the conflict matrix, the Wait-Die
// decision, leases with fencing tokens, queued waiters, expiry and the
// records and snapshots that make its state durable.
//
// The engine is pure. It does no I/O, starts no goroutines and never reads
// the clock: every call takes the current time as Unix milliseconds, so the
// same calls at the same times reach the same state (lease ids are the only
// random part, and replay takes them from the records).
//
// Given a seed for its lease ids (ReseedLeaseIDs) the engine is a function
// of the calls it is fed, down to the ids, fences and waiter ids it hands
// out, and an engine restored from a ReplicaSnapshot goes on exactly as the
// one that took it. Cluster mode (daemon/cluster) relies on that: every node
// feeds its own engine the same command stream. Effects that a call
// has on other requests (a queued request granted because a lease ended, a
// waiter timed out) are returned as values (Wakeup); the engine never calls
// out.
//
// The engine is not safe for concurrent use; the daemon holds one mutex
// around every call.
//
// # Driving it
//
// After every call the daemon re-arms one timer from NextDeadline and, when
// it fires, calls Expire: that removes expired leases, times out waiters,
// and answers queued requests that an acquire made stale (a senior granted
// past a queued junior, which must now DIE). NextDeadline may be in the
// past: Expire is then due at once. Between expiry and Expire, expired
// leases already neither block nor count.
//
// # Leases bound to a process
//
// An acquire may carry AcquireRequest.Bind, the requesting process (pid,
// start time, boot) as the daemon identified it: its leases then end when
// that process ends, and may have no ttl (ExpiresAt Never). The engine
// never looks at processes; the daemon watches them and calls
// ProcessEnded, which ends their leases exactly as a release does (a
// record, and the queued requests decided again). The binding is part of
// each lease, in records and snapshots, so a restarted daemon finds the
// processes to check in BoundProcesses. Bound processes are kept in one
// table that their leases point to, so a binding costs a lease a pointer.
//
// # Durability
//
// With Config.Journal set, every state change is appended as a Record;
// the daemon drains them with Records after each call and logs them before
// replying. Applying those records in order to a fresh engine (Apply)
// reaches the identical state; Snapshot and Restore save and load the whole
// state at once. Both are plain structs with msgpack tags, serialised by
// daemon/store. Queued requests are not durable: they belong to
// connections, which do not survive a restart.
package engine
