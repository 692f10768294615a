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
			return en.answer(req.Idem, targets, req.Bind)
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
	for _, l := range en.leases {
		if l.ExpiresAt > now {
			return true
		}
	}
	return false
}

// answer returns the entry's leases again if the request asks for the same
// resources and predicates, in order, bound to the same process (or none).
func (en *idemEntry) answer(key string, targets []target, bind *Process) (Result, *Error) {
	if len(targets) != len(en.leases) {
		return Result{}, invalidf("klock: idem %q is bound to %d held lease(s), not %d; use a new key for a different request",
			key, len(en.leases), len(targets))
	}
	ls := make([]Lease, len(targets))
	for i, t := range targets {
		l := en.leases[i]
		if l.Resource != t.key || l.Predicate != t.pred {
			return Result{}, invalidf("klock: idem %q was used for %s %s, not %s %s; use a new key for a different request",
				key, l.Predicate, l.Resource, t.pred, t.key)
		}
		if !sameProcess(l.Bound, bind) {
			return Result{}, invalidf("klock: idem %q was used for a lease %s, not %s; use a new key for a different request",
				key, bindingText(l.Bound), bindingText(bind))
		}
		ls[i] = l.Lease
	}
	return Result{Granted: true, Leases: ls}, nil
}

// verdict is the decision for one request: reason "" is a grant. by* name
// the lease or queued request that decided it, step the rule that did.
type verdict struct {
	reason    protocol.Reason
	step      Step
	key       string    // the resource that decided it
	pred      Predicate // the requested predicate on key
	by        *agent
	bySession string
	byPred    Predicate
	byQueued  bool
	byExpires int64 // expiry of the deciding lease (0 for a queued request)
	maxExpiry int64 // latest expiry of the conflicting active leases seen
}

// Step names the rule of DESIGN.md "Deciding an acquire" that reached a
// verdict: its number, then what applied.
type Step string

// The steps a verdict can come from.
const (
	StepFrozen           Step = "1:frozen"             // RESOURCE_LOCKED: the key is frozen
	StepSessionEnded     Step = "1:session-ended"      // SESSION_EXPIRED: the requester's session was ended
	StepOwnAgent         Step = "3:own-agent"          // CONFLICT: the requester's agent holds it in another session
	StepSeniorHolder     Step = "4:senior-holder"      // DIE: a conflicting holder is older or equal
	StepSeniorQueued     Step = "4:senior-queued"      // DIE: an older conflicting request is queued first
	StepNoConflict       Step = "5:no-conflict"        // grant: no conflicting holder
	StepOlderThanHolders Step = "5:older-than-holders" // WAIT: the requester is older than every holder
)

// rank orders verdicts from best (grant) to worst.
func rank(r protocol.Reason) int {
	switch r {
	case "":
		return 0
	case protocol.ReasonWait:
		return 1
	case protocol.ReasonDie:
		return 2
	case protocol.ReasonConflict:
		return 3
	case protocol.ReasonSessionExpired:
		return 4
	}
	return 5 // RESOURCE_LOCKED
}

// decide applies the five steps of DESIGN.md to every target and returns
// the worst verdict. self is the queued request being decided again (it
// does not count against itself).
func (e *Engine) decide(now int64, a *agent, session string, prio int64, targets []target, self *waiter) verdict {
	var worst verdict
	var maxExp int64
	for i := range targets {
		v := e.decideOne(now, a, session, prio, targets[i], targets[i].res, self)
		maxExp = max(maxExp, v.maxExpiry)
		if i == 0 || rank(v.reason) > rank(worst.reason) {
			worst = v
		}
	}
	if worst.reason != protocol.ReasonResourceLocked && a.ended.has(session) {
		worst = verdict{reason: protocol.ReasonSessionExpired, step: StepSessionEnded}
	}
	worst.maxExpiry = maxExp
	return worst
}

func (e *Engine) decideOne(now int64, a *agent, session string, prio int64, t target, r *resource, self *waiter) verdict {
	v := verdict{key: t.key, pred: t.pred, step: StepNoConflict}
	if r == nil {
		return v
	}
	if r.frozen {
		v.reason, v.step = protocol.ReasonResourceLocked, StepFrozen
		return v
	}
	var die, wait *lease
	for _, l := range r.leases {
		if l.ExpiresAt <= now || !Conflicts(l.Predicate, t.pred) {
			continue
		}
		if l.agent == a {
			if l.SessionID == session {
				continue // re-entrant
			}
			v.reason, v.step, v.by, v.bySession, v.byPred = protocol.ReasonConflict, StepOwnAgent, a, l.SessionID, l.Predicate
			v.byExpires = l.ExpiresAt
			v.maxExpiry = max(v.maxExpiry, l.ExpiresAt)
			return v
		}
		v.maxExpiry = max(v.maxExpiry, l.ExpiresAt)
		if p := l.agent.priority; p <= prio {
			if die == nil || p < die.agent.priority {
				die = l
			}
		} else if wait == nil || p < wait.agent.priority {
			wait = l
		}
	}
	if die != nil {
		v.reason, v.step, v.by, v.bySession, v.byPred = protocol.ReasonDie, StepSeniorHolder, die.agent, die.SessionID, die.Predicate
		v.byExpires = die.ExpiresAt
		return v
	}
	// The queue is sorted oldest first: the first conflicting request of
	// another agent decides whether a junior would barge past a senior.
	for _, q := range r.queue {
		if q.w == self || q.w.agent == a || !Conflicts(q.pred, t.pred) {
			continue
		}
		if q.w.priority <= prio {
			v.reason, v.step, v.by, v.bySession, v.byPred, v.byQueued = protocol.ReasonDie, StepSeniorQueued, q.w.agent, q.w.session, q.pred, true
			return v
		}
		break
	}
	if wait != nil {
		v.reason, v.step, v.by, v.bySession, v.byPred = protocol.ReasonWait, StepOlderThanHolders, wait.agent, wait.SessionID, wait.Predicate
		v.byExpires = wait.ExpiresAt
	}
	return v
}

// grant creates one lease per target, records them and returns them. With
// bind set, the leases are bound to that process, and ttl 0 means none.
func (e *Engine) grant(now int64, uid uint32, pid int32, a *agent, session string, targets []target, ttl int64, idem string, bind *Process) []Lease {
	ls := make([]Lease, len(targets))
	var xs []*lease
	if idem != "" {
		xs = make([]*lease, 0, len(targets))
	}
	for i, t := range targets {
		e.fence++
		k, id := e.newLeaseID()
		ls[i] = Lease{
			ID: id, AgentID: a.id, SessionID: session, Resource: t.key, Predicate: t.pred,
			AcquiredAt: now, ExpiresAt: expiry(now, ttl), TTL: ttl, Fence: e.fence, OwnerUID: uid, OwnerPID: pid,
			Bound: bind,
		}
		x, err := e.addLease(ls[i], t.res, &k)
		if err != nil {
			panic(err) // fresh ids of a registered agent: cannot happen
		}
		ls[i].Bound = x.Bound // the table's shared Process
		if idem != "" {
			xs = append(xs, x)
		}
		e.emitLease(EvGrant, now, &ls[i])
	}
	if idem != "" {
		e.bindIdem(a, idem, xs)
	}
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
