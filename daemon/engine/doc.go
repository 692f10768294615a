// Package engine is klock's lease engine: the conflict matrix, the Wait-Die
// decision, leases with fencing tokens, queued waiters, expiry and the
// records and snapshots that make its state durable.
//
// The engine is pure. It does no I/O, starts no goroutines and never reads
// the clock: every call takes the current time as Unix milliseconds, so the
// same calls at the same times always reach the same state. Effects that a
// call has on other requests (a queued request granted because a lease
// ended, a waiter timed out) are returned as values (Wakeup); the engine
// never calls out.
//
// The engine is not safe for concurrent use; the daemon holds one mutex
// around every call.
//
// Durability: with Config.Journal set, every state change is appended as a
// Record (drained with Records). Applying those records in order to a fresh
// engine (Apply) reaches the identical state; Snapshot and Restore save and
// load the whole state at once. Both are plain structs with msgpack tags,
// serialised by daemon/store.
package engine
