package engine

import (
	"fmt"

	"github.com/klockd/klock/protocol"
)

// Acquire decides a request for one resource (exactly one intent) by the
// Wait-Die rule of DESIGN.md "Semantics". A grant or a denial is a Result;
// errors are for requests that are invalid (INVALID_ARGUMENT, checked
// before anything is looked up), for an unregistered agent
// (UNKNOWN_AGENT), a caller who may not act for the agent
// (PERMISSION_DENIED) or a reached limit (RESOURCE_EXHAUSTED). With
// WaitTimeout > 0 a WAIT verdict parks the request (Result.Queued); its
// answer comes later as a Wakeup. With Bind set, the lease is bound to that
// process (see ProcessEnded) and TTL may be 0 (no ttl).
func (e *Engine) Acquire(now int64, c Caller, req AcquireRequest) (Result, error) {
	r, err := e.acquire(now, c, &req, true)
	if err != nil {
		return Result{}, err
	}
	return r, nil
}

// AcquireMany decides 1..64 intents all or nothing: it grants one lease
// per intent, in order, or none. A denial carries the worst verdict over
// the intents (RESOURCE_LOCKED, SESSION_EXPIRED, CONFLICT, DIE, then
// WAIT). Errors and queueing are as for Acquire.
func (e *Engine) AcquireMany(now int64, c Caller, req AcquireRequest) (Result, error) {
	r, err := e.acquire(now, c, &req, false)
	if err != nil {
		return Result{}, err
	}
	return r, nil
}

// CheckAcquire checks req's arguments as Acquire (many false) or
// AcquireMany would, and returns the INVALID_ARGUMENT error they would
// return first, or nil. It decides and changes nothing.
func (e *Engine) CheckAcquire(req AcquireRequest, many bool) error {
	var buf [1]target
	if _, err := e.checkAcquire(&req, !many, buf[:0]); err != nil {
		return err
	}
	return nil
}

func (e *Engine) acquire(now int64, c Caller, req *AcquireRequest, single bool) (Result, *Error) {
	var buf [1]target
	targets, err := e.checkAcquire(req, single, buf[:0])
	if err != nil {
		return Result{}, err
	}
	a := e.agents[req.AgentID]
	if a == nil || a.unregistered {
		return Result{}, unknownAgent(req.AgentID)
	}
	if !mayActFor(c, a) {
		return Result{}, permissionDenied(c, "acquire for agent "+quote(a.id)+", which belongs to another uid")
	}
	if req.Idem != "" {
		if en := a.idem[req.Idem]; en != nil && en.active(now) {
			return e.idemAnswer(en, req.Idem, targets, req.Bind)
		}
	}
	v := e.decide(now, a, req.SessionID, a.priority, targets, nil)
	if v.reason == "" {
		if e.cfg.MaxLeases > 0 && e.leases.len()+len(targets) > e.cfg.MaxLeases &&
			e.leases.len()-e.leaseDeadlines.countDue(now)+len(targets) > e.cfg.MaxLeases {
			return Result{}, limitReached("lease", e.cfg.MaxLeases, "release leases", "max-leases")
		}
		ls := e.grant(now, c.UID, c.PID, a, req.SessionID, targets, req.TTL, req.Idem, req.Bind)
		e.requeue(now, targets, nil)
		return Result{Granted: true, Leases: ls}, nil
	}
	if v.reason == protocol.ReasonWait && req.WaitTimeout > 0 {
		if e.cfg.MaxWaiters > 0 && len(e.waiters) >= e.cfg.MaxWaiters {
			return Result{}, limitReached("waiter", e.cfg.MaxWaiters, "retry without wait_timeout", "max-waiters")
		}
		w := e.enqueue(now, c, a, req, targets)
		e.requeue(now, w.targets, w)
		e.emitVerdict(now, a, req.SessionID, &v)
		return Result{Denial: e.denial(now, a, req.SessionID, &v), Queued: true, Waiter: w.id}, nil
	}
	return Result{Denial: e.deny(now, a, req.SessionID, &v)}, nil
}

// deny answers a request with a denial now: it counts the denial by
// reason, tells the watchers of a WAIT or DIE (see Events), and returns
// the Denial the client sees.
func (e *Engine) deny(now int64, a *agent, session string, v *verdict) Denial {
	e.countDenial(v.reason)
	e.emitVerdict(now, a, session, v)
	return e.denial(now, a, session, v)
}

// countDenial counts one denial answered with reason r.
func (e *Engine) countDenial(r protocol.Reason) {
	switch r {
	case protocol.ReasonWait:
		e.waits++
	case protocol.ReasonDie:
		e.dies++
	case protocol.ReasonConflict:
		e.conflicts++
	case protocol.ReasonResourceLocked:
		e.locked++
	case protocol.ReasonSessionExpired:
		e.sessionExpired++
	}
}

// active reports whether any lease of the entry is still active.
func (en *idemEntry) active(now int64) bool {
	for l := range en.all() {
		if l.ExpiresAt > now {
			return true
		}
	}
	return false
}

// answer returns the entry's leases again if the request asks for the same
// resources and predicates, in order, bound to the same process (or none).
func (e *Engine) idemAnswer(en *idemEntry, key string, targets []target, bind *Process) (Result, *Error) {
	if len(targets) != en.n {
		return Result{}, invalidf("klock: idem %q is bound to %d held lease(s), not %d; use a new key for a different request",
			key, en.n, len(targets))
	}
	ls := make([]Lease, 0, len(targets))
	for l := range en.all() {
		t := targets[len(ls)]
		if l.res.key != t.key || l.pred() != t.pred {
			return Result{}, invalidf("klock: idem %q was used for %s %s, not %s %s; use a new key for a different request",
				key, l.pred(), l.res.key, t.pred, t.key)
		}
		if !sameProcess(l.Bound(), bind) {
			return Result{}, invalidf("klock: idem %q was used for a lease %s, not %s; use a new key for a different request",
				key, bindingText(l.Bound()), bindingText(bind))
		}
		ls = append(ls, e.public(l))
	}
	return Result{Granted: true, Leases: ls}, nil
}

// grant creates one lease per target, records them and returns them. With
// bind set, the leases are bound to that process, and ttl 0 means none.
func (e *Engine) grant(now int64, uid uint32, pid int32, a *agent, session string, targets []target, ttl int64, idem string, bind *Process) []Lease {
	ls := make([]Lease, len(targets))
	var first *lease
	for i, t := range targets {
		e.fence++
		k, id := e.newLeaseID()
		ls[i] = Lease{
			ID: id, AgentID: a.id, SessionID: session, Resource: t.key, Predicate: t.pred,
			AcquiredAt: now, ExpiresAt: expiry(now, ttl), TTL: ttl, Fence: e.fence, OwnerUID: uid, OwnerPID: pid,
			Bound: bind, ClientPath: t.clientPath,
		}
		x, err := e.addLease(ls[i], t.res, &k)
		if err != nil {
			panic(err) // fresh ids of a registered agent: cannot happen
		}
		targets[i].res = x.res    // for requeue
		ls[i].Bound = x.own.bound // the engine's Process, not the request's
		if i == 0 {
			first = x
		}
		e.emitLease(EvGrant, now, &ls[i])
	}
	e.bindIdem(a, idem, first, len(targets))
	e.grants++
	e.record(Record{Kind: RecGrant, Time: now, Leases: ls, Idem: idem})
	return ls
}

// expiry returns when a lease taken or renewed at now with ttl expires:
// Never for ttl 0 (a bound lease without a ttl).
func expiry(now, ttl int64) int64 {
	if ttl == 0 {
		return Never
	}
	return now + ttl
}

// sameProcess reports whether two bindings name the same process (or are
// both unbound).
func sameProcess(a, b *Process) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// bindingText describes a binding for messages.
func bindingText(p *Process) string {
	if p == nil {
		return "not bound to a process"
	}
	return fmt.Sprintf("bound to process %d", p.PID)
}
