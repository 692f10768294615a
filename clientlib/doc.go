// Package clientlib is the Go client of klockd, the klock lease daemon.
//
// A Client holds one Unix-socket connection that many goroutines share:
// requests are pipelined and answers matched by id, so a Client should be
// created once and reused. When only one call is in flight, the calling
// goroutine writes its request and reads its own answer straight from the
// socket (no hand-off to a reader goroutine); when many are in flight, their
// writes are coalesced and whichever caller holds the reader role delivers the
// others' answers.
//
// If the connection breaks (the daemon restarted, was upgraded), the Client
// redials with capped exponential backoff and jitter and resends every request
// still in flight, so the application sees no error: acquires carry an
// idempotency key generated per logical call, so a resent acquire returns the
// lease it already obtained, never a second one; release, heartbeat and
// register are idempotent. A request the daemon refuses with SHUTTING_DOWN
// (it is stopping for a restart) is likewise resent once reconnected. One
// refused with UNAVAILABLE (the daemon cannot make changes durable: a full
// or failing disk; nothing was changed) is resent on the same connection
// with backoff while the call's context and Options.UnavailableWait allow,
// and then returned as an error matching ErrUnavailable.
//
// The calls mirror the wire operations of protocol/README.md, with the seed
// SDK's names for the seed's calls (RegisterAgent, AcquireLease,
// ReleaseLease, ActiveLeaseCount, EvictExpired). Acquire adds what most
// callers want: it blocks until the lease is granted (waiting in the daemon on
// WAIT, retrying after the suggested delay on DIE) and keeps the lease alive
// until Lease.Release, reporting on Lease.Lost if a renewal fails. The
// keep-alive measures a lease on this process's monotonic clock (from when
// it sent the request that granted or renewed it, plus the ttl), never by
// the daemon's expires_at, and before it declares a lease lost for want of
// a connection it makes one immediate redial and renewal.
//
// Typical use by an agent:
//
//	c, err := clientlib.Dial(ctx, clientlib.Options{}) // $KLOCK_SOCKET or the default socket
//	if err != nil {
//		return err // names the socket and how to start klockd
//	}
//	defer c.Close()
//	if err := c.RegisterAgent(ctx, "agent-1", 100); err != nil {
//		return err
//	}
//	lease, err := c.Acquire(ctx, clientlib.AcquireRequest{
//		AgentID: "agent-1", SessionID: "task-42", TTL: 30 * time.Second,
//		Intents: []clientlib.Intent{{ResourceType: "FILE", ResourcePath: "/src/auth.ts", Predicate: "MUTATES"}},
//	})
//	if err != nil {
//		return err
//	}
//	defer lease.Release(ctx)
//	// ... work on /src/auth.ts, checking lease.Lost() (or lease.Err()) before
//	// each step that must not run without the lease; pass lease.Fence() to
//	// anything that can reject stale writers.
//
// Leases are bound to the calling process by default (AcquireRequest.Bind,
// BindProcess): klockd ends them the moment the process exits, however it
// exits, so a crashed agent frees its files at once rather than a TTL
// later; they survive reconnects and daemon restarts while the process
// lives. With the default binding the TTL may be 0 (the lease lasts until
// released or the process exits, and is not renewed). BindNone opts out,
// for a lease that must outlive the process. A bound acquire fails with
// ErrBindUnavailable where klockd cannot watch the process (another pid
// namespace, no pidfds): use BindNone and a TTL there.
//
// Remote errors are *Error values with the protocol code; they match the
// sentinels (ErrInvalidArgument, ErrNotFound, ...) with errors.Is. Transport
// failures are distinct: ErrClosed for every closed-connection flavour and
// ErrDaemonUnreachable when no daemon answers on the socket.
//
// The package depends on protocol only, never on the daemon.
package clientlib
