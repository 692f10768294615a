package server

import (
	"context"
	"errors"
	"runtime/debug"
	"runtime/trace"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// handle decodes one request body and answers it on c. A panic while
// serving it is logged with its stack and answered INTERNAL; the
// connection and the daemon keep serving.
func (s *Server) handle(c *conn, body []byte) {
	req := &c.req
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic while serving a request", "op", req.Op, "id", req.ID,
				"uid", c.caller.UID, "panic", r, "stack", string(debug.Stack()))
			c.appendError(req.ID, protocol.CodeInternal, "klock: internal error; the daemon logged it and keeps serving", 0)
		}
	}()
	if err := protocol.DecodeRequest(body, req); err != nil {
		var pe *protocol.Error
		if !errors.As(err, &pe) {
			pe = &protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()}
		}
		c.appendError(req.ID, pe.Code, pe.Message, 0)
		return
	}
	if s.logRequests {
		s.log.Debug("request", "op", req.Op, "id", req.ID, "uid", c.caller.UID, "pid", c.caller.PID)
	}
	if trace.IsEnabled() {
		// klockd --trace: each request is a region named by its op.
		defer trace.StartRegion(context.Background(), req.Op).End()
	}
	if s.shutting.Load() {
		c.appendError(req.ID, errShuttingDown.Code, errShuttingDown.Message, 0)
		return
	}
	if s.cfg.ObserveRequest == nil {
		s.dispatch(c, req)
		return
	}
	start := time.Now()
	s.dispatch(c, req)
	s.cfg.ObserveRequest(req.Op, time.Since(start))
}

// dispatch serves a decoded request.
func (s *Server) dispatch(c *conn, req *protocol.Request) {
	a := &req.Args
	switch req.Op {
	case protocol.OpHello:
		if a.Client != "" {
			s.log.Debug("hello", "client", a.Client, "uid", c.caller.UID, "pid", c.caller.PID)
		}
		c.appendResult(req.ID, &protocol.HelloResult{
			Server:    "klockd " + s.cfg.Version,
			Protocol:  protocol.Version,
			PID:       pid,
			MaxFrame:  s.cfg.MaxFrame,
			StartedAt: s.startedAt.UnixMilli(),
		}, 0)
	case protocol.OpActiveLeaseCount:
		s.activeLeaseCount(c, req.ID)
	case protocol.OpListLeases:
		s.listLeases(c, req.ID, a)
	case protocol.OpListAgents:
		s.listAgents(c, req.ID, a)
	case protocol.OpStats:
		s.stats(c, req.ID)
	case protocol.OpAcquire, protocol.OpAcquireMany:
		// The one path too, once a bound acquire has named its process.
		s.acquire(c, req.ID, c.newChange(req.Op, a))
	case protocol.OpRegisterAgent, protocol.OpUnregisterAgent,
		protocol.OpRelease, protocol.OpHeartbeat, protocol.OpEndSession, protocol.OpEvictExpired,
		protocol.OpRevoke, protocol.OpFreeze, protocol.OpThaw:
		// Every state change takes the one path.
		s.commit(c, req.ID, c.newChange(req.Op, a))
	case protocol.OpExplain:
		s.explain(c, req.ID, a)
	case protocol.OpListWaiters:
		s.listWaiters(c, req.ID, a)
	case protocol.OpWatch:
		s.watch(c, req.ID, a)
	case protocol.OpUnwatch:
		s.unwatch(c, req.ID, a)
	default:
		c.appendError(req.ID, protocol.CodeUnknownOp, unknownOpMessage(req.Op), 0)
	}
}

// newChange returns the change a request of c asks for. A single daemon
// has made and answered it before c's reader decodes the next request
// (commit), so c's own is reused, arguments and room included. In
// cluster mode a change lives until the log applies it, and a long one is
// proposed again for each step from the log's callback (proposeStep),
// while c's reader decodes further requests into a: each change is a new
// one, with its own copy of the arguments.
func (c *conn) newChange(op string, a *protocol.Args) *change {
	if c.s.rep.log != nil {
		own := *a
		own.Intents = slices.Clone(a.Intents)
		return &change{op: op, args: &own, caller: c.caller}
	}
	c.ch = change{op: op, args: a, caller: c.caller, room: &c.room}
	return &c.ch
}

// errShuttingDown answers requests that arrive while the server stops.
var errShuttingDown = &protocol.Error{Code: protocol.CodeShuttingDown, Message: "klock: the daemon is shutting down; retry after reconnecting"}

// answerErr answers an engine (or other) error with its code.
func (c *conn) answerErr(id uint64, err error, seq uint64) {
	var ee *engine.Error
	if errors.As(err, &ee) {
		c.appendError(id, ee.Code, ee.Message, seq)
		return
	}
	var pe *protocol.Error
	if errors.As(err, &pe) {
		c.appendError(id, pe.Code, pe.Message, seq)
		return
	}
	c.s.log.Error("unexpected error from the engine", "id", id, "err", err)
	c.appendError(id, protocol.CodeInternal, "klock: internal error; the daemon logged it", seq)
}

// grant converts an engine lease to its wire form.
func grant(l *engine.Lease) protocol.Grant {
	return protocol.Grant{
		Success:    true,
		LeaseID:    l.ID,
		AgentID:    l.AgentID,
		SessionID:  l.SessionID,
		Resource:   l.Resource,
		Predicate:  l.Predicate.String(),
		AcquiredAt: l.AcquiredAt,
		ExpiresAt:  wireExpiry(l.ExpiresAt),
		Fence:      l.Fence,
		BoundPID:   boundPID(l),
	}
}

// boundPID is the pid a lease is bound to, 0 when it is not bound.
func boundPID(l *engine.Lease) int32 {
	if l.Bound == nil {
		return 0
	}
	return l.Bound.PID
}

// acquireAnswer converts an engine acquire result (not Queued) to its wire
// form: a Grant, an AcquireManyGrant or a Denial.
func acquireAnswer(r *engine.Result, many bool) any {
	switch {
	case r.Granted && many:
		g := &protocol.AcquireManyGrant{Success: true, Leases: make([]protocol.Grant, len(r.Leases))}
		for i := range r.Leases {
			g.Leases[i] = grant(&r.Leases[i])
		}
		return g
	case r.Granted && len(r.Leases) > 0:
		g := grant(&r.Leases[0])
		return &g
	default:
		return &protocol.Denial{
			Reason:   r.Denial.Reason,
			WaitTime: r.Denial.WaitTime,
			HeldBy:   r.Denial.HeldBy,
			Message:  r.Denial.Message,
			HeldPath: r.Denial.HeldPath,
		}
	}
}

// quote bounds and quotes a client-supplied name for an error message. The
// result is valid UTF-8 whatever s holds (a message is a msgpack str):
// bytes that are not UTF-8, control characters, quotes and backslashes
// become '?', and a name over 64 bytes is cut at a character boundary.
func quote(s string) string {
	b := make([]byte, 0, min(len(s), 64)+5)
	b = append(b, '"')
	for i, r := range s {
		if i >= 64 {
			b = append(b, "..."...)
			break
		}
		if r == utf8.RuneError || unicode.IsControl(r) || r == '"' || r == '\\' {
			r = '?'
		}
		b = utf8.AppendRune(b, r)
	}
	return string(append(b, '"'))
}

// unknownOpMessage is the UNKNOWN_OP message for op.
func unknownOpMessage(op string) string {
	return "klock: unknown op " + quote(op) + "; see protocol/README.md for the operations"
}
