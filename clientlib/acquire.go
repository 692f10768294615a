package clientlib

import (
	"context"
	"fmt"
	"time"

	"github.com/klockd/klock/protocol"
)

// Intent is one resource asked for: its type (FILE, SYMBOL, API_ENDPOINT,
// DATABASE_TABLE, CONFIG_KEY), its path, and the predicate (PROVIDES,
// CONSUMES, MUTATES, DELETES, DEPENDS_ON, RENAMES).
type Intent = protocol.Intent

// Bind says what else a lease's life follows besides its TTL (protocol
// "Leases bound to a process").
type Bind string

const (
	// BindProcess binds the lease to this process: klockd ends it the
	// moment the process exits, however it exits, as a release would; it
	// does not end when the connection drops while the process lives. It is
	// the default (the zero Bind means it too). klockd refuses it with
	// ErrBindUnavailable where it cannot watch this process (another pid
	// namespace, no pidfds).
	BindProcess Bind = "process"
	// BindNone leaves the lease unbound: it lives until released or its
	// TTL passes, whether this process lives or not. Use it for leases that
	// must outlive the process that takes them.
	BindNone Bind = "none"
)

// wire returns the bind argument to send.
func (b Bind) wire() string {
	if b == "" {
		return string(BindProcess)
	}
	return string(b)
}

// AcquireRequest asks for one lease (AcquireOnce, Acquire with one intent)
// or several at once, all or nothing (AcquireMany, Acquire with several).
type AcquireRequest struct {
	AgentID   string
	SessionID string
	Intents   []Intent
	// TTL is the lease lifetime; Acquire renews it at TTL/3. With the
	// default binding (BindProcess) it may be 0: the lease then has no ttl
	// and lasts until it is released or this process exits, and Acquire
	// does not renew it.
	TTL time.Duration
	// WaitTimeout: on a WAIT verdict, let the daemon hold the request up to
	// this long and answer when it is decided (0 = answer at once). Acquire
	// uses it as the longest single wait (default 30 s) and waits again
	// until its context ends.
	WaitTimeout time.Duration
	// Idem is the idempotency key; "" lets the client generate one per
	// call, which is what makes resending an acquire after a reconnect safe.
	Idem string
	// NoWait makes Acquire ask once and answer at once: a denial is a
	// *DenialError, with no wait in the daemon and no retry.
	NoWait bool
	// Bind is BindProcess (the default, also when empty) or BindNone.
	Bind Bind
}

// AcquireResult is the answer to an acquire: a grant (Success, with the
// lease's fields) or a denial (Reason, WaitTime, HeldBy, Message). A denial
// is a normal result, not an error.
type AcquireResult struct {
	Success    bool
	LeaseID    string
	AgentID    string
	SessionID  string
	Resource   string // the resource key, e.g. "FILE:/src/auth.ts"
	Predicate  string
	AcquiredAt time.Time
	ExpiresAt  time.Time // zero for a lease without a ttl (bound to its process)
	Fence      uint64    // grows with every grant the daemon makes, across restarts
	BoundPID   int       // the process the lease ends with, as klockd sees it; 0 when unbound

	Reason   string        // DIE, WAIT, CONFLICT, RESOURCE_LOCKED, SESSION_EXPIRED
	WaitTime time.Duration // suggested delay before retrying
	HeldBy   string        // the agent whose lease or queued request decided it
	HeldPath string        // the path that lease's holder named, when not the key's (a git worktree)
	Message  string
}

// AcquireManyResult is the answer to AcquireMany: on grant one lease per
// intent in order; on denial the worst verdict over all intents.
type AcquireManyResult struct {
	Success  bool
	Leases   []AcquireResult
	Reason   string
	WaitTime time.Duration
	HeldBy   string
	HeldPath string
	Message  string
}

func grantResult(g *protocol.Grant) AcquireResult {
	return AcquireResult{
		Success: true, LeaseID: g.LeaseID, AgentID: g.AgentID, SessionID: g.SessionID,
		Resource: g.Resource, Predicate: g.Predicate, AcquiredAt: fromMillis(g.AcquiredAt),
		ExpiresAt: fromMillis(g.ExpiresAt), Fence: g.Fence, BoundPID: int(g.BoundPID),
	}
}

// AcquireLease tries once to take a lease, as the seed SDK's acquire_lease:
// the answer comes at once, granted or denied. The lease is bound to this
// process (BindProcess), so it ends when the process does, even if it
// never releases it; use AcquireOnce with BindNone for a lease that must
// outlive the process.
func (c *Client) AcquireLease(ctx context.Context, agentID, sessionID, resourceType, resourcePath, predicate string, ttl time.Duration) (*AcquireResult, error) {
	return c.AcquireOnce(ctx, AcquireRequest{
		AgentID: agentID, SessionID: sessionID, TTL: ttl,
		Intents: []Intent{{ResourceType: resourceType, ResourcePath: resourcePath, Predicate: predicate}},
	})
}

// AcquireOnce sends one acquire for req's single intent. A FILE path is
// first resolved as ResolveFile does (made absolute against the working
// directory, cleaned, mapped out of a linked git worktree). With a
// WaitTimeout, a WAIT verdict is held in the daemon up to that long. The
// request carries an idempotency key (req.Idem or a generated one), so if
// it is resent after a reconnect it returns the lease already granted.
func (c *Client) AcquireOnce(ctx context.Context, req AcquireRequest) (*AcquireResult, error) {
	if len(req.Intents) != 1 {
		return nil, &Error{Code: protocol.CodeInvalidArgument, Message: fmt.Sprintf(
			"AcquireOnce takes exactly 1 intent, got %d; use AcquireMany for several", len(req.Intents))}
	}
	intents, err := resolveIntents(req.Intents)
	if err != nil {
		return nil, err
	}
	in := intents[0]
	args := protocol.Args{
		AgentID: req.AgentID, SessionID: req.SessionID, ResourceType: in.ResourceType,
		ResourcePath: in.ResourcePath, Predicate: in.Predicate, TTL: millis(req.TTL),
	}
	args.Set(protocol.ArgAgentID | protocol.ArgSessionID | protocol.ArgResourceType |
		protocol.ArgResourcePath | protocol.ArgPredicate | protocol.ArgTTL)
	if in.ClientPath != "" {
		args.ClientPath = in.ClientPath
		args.Set(protocol.ArgClientPath)
	}
	c.setWaitAndIdem(&args, req)
	var res protocol.AcquireResult
	if err := c.do(ctx, protocol.OpAcquire, &args, &res); err != nil {
		return nil, err
	}
	if res.Success {
		r := grantResult(&protocol.Grant{
			LeaseID: res.LeaseID, AgentID: res.AgentID, SessionID: res.SessionID,
			Resource: res.Resource, Predicate: res.Predicate, AcquiredAt: res.AcquiredAt,
			ExpiresAt: res.ExpiresAt, Fence: res.Fence, BoundPID: res.BoundPID,
		})
		return &r, nil
	}
	return &AcquireResult{
		Reason: string(res.Reason), WaitTime: time.Duration(res.WaitTime) * time.Millisecond,
		HeldBy: res.HeldBy, HeldPath: res.HeldPath, Message: res.Message,
	}, nil
}

// AcquireMany takes a lease on every intent (1 to 64) or none, in one
// request; otherwise as AcquireOnce.
func (c *Client) AcquireMany(ctx context.Context, req AcquireRequest) (*AcquireManyResult, error) {
	intents, err := resolveIntents(req.Intents)
	if err != nil {
		return nil, err
	}
	args := protocol.Args{
		AgentID: req.AgentID, SessionID: req.SessionID, TTL: millis(req.TTL), Intents: intents,
	}
	args.Set(protocol.ArgAgentID | protocol.ArgSessionID | protocol.ArgTTL | protocol.ArgIntents)
	c.setWaitAndIdem(&args, req)
	var res protocol.AcquireResult
	if err := c.do(ctx, protocol.OpAcquireMany, &args, &res); err != nil {
		return nil, err
	}
	if !res.Success {
		return &AcquireManyResult{
			Reason: string(res.Reason), WaitTime: time.Duration(res.WaitTime) * time.Millisecond,
			HeldBy: res.HeldBy, HeldPath: res.HeldPath, Message: res.Message,
		}, nil
	}
	out := &AcquireManyResult{Success: true, Leases: make([]AcquireResult, len(res.Leases))}
	for i := range res.Leases {
		out.Leases[i] = grantResult(&res.Leases[i])
	}
	return out, nil
}

// setWaitAndIdem sets the arguments every acquire shares: wait_timeout,
// idem (generated when req has none) and bind.
func (c *Client) setWaitAndIdem(args *protocol.Args, req AcquireRequest) {
	args.Bind = req.Bind.wire()
	args.Set(protocol.ArgBind)
	if req.WaitTimeout != 0 {
		args.WaitTimeout = millis(req.WaitTimeout)
		args.Set(protocol.ArgWaitTimeout)
	}
	args.Idem = req.Idem
	if args.Idem == "" {
		args.Idem = c.newIdem()
	}
	args.Set(protocol.ArgIdem)
}
