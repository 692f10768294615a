// Package server serves the klock wire protocol on a Unix socket: it owns
// the listener (socket path rules, mode, group, stale-socket check), one
// reader goroutine per connection, peer credentials, dispatch of requests to
// the lease engine under one mutex, parked waiters and their wake-ups, the
// expiry timer, limits, and graceful shutdown.
//
// Every state change, a client's or the daemon's own (expiry, a closed
// connection's parked acquires), is a change value (change.go) run by one
// driver, commitLocked (commit.go): engine call, journal, parked acquires,
// wake-ups, expiry timer. Every read goes through read.
//
// The API follows net/http: New, Serve, Shutdown, Close and ErrServerClosed.
//
// Lock order: Server.mu (the engine and everything keyed by waiter) before
// conn.outMu (one connection's output buffer) and before Server.lnMu (the
// listeners and connections). No goroutine writes to a
// socket while holding Server.mu.
package server
