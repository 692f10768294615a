package engine

import "github.com/klockd/klock/protocol"

// Release ends an active lease and returns true, plus the wake-ups of the
// requests queued on its resource that this decides. It returns false (and
// changes nothing) when the lease is unknown, released or expired. Only the
// lease's owner uid, its agent's uid or root may release it.
func (e *Engine) Release(now int64, c Caller, leaseID string) (bool, []Wakeup, error) {
	l, err := e.leaseFor(c, "release", leaseID)
	if err != nil {
		return false, nil, err
	}
	if l == nil || l.ExpiresAt <= now {
		return false, nil, nil
	}
	e.emitLeaseOf(EvRelease, now, l)
	e.removeLease(l)
	e.releases++
	e.recordLease(RecRelease, now, leaseID, 0)
	return true, e.settle(now, nil), nil
}

// leaseFor validates a lease id and looks the lease up (nil when unknown),
// checking that the caller may act on it.
func (e *Engine) leaseFor(c Caller, op, leaseID string) (*lease, *Error) {
	if err := checkText("lease_id", leaseID, MaxIDLen); err != nil {
		return nil, err
	}
	l := e.lookup(leaseID)
	if l == nil {
		return nil, nil
	}
	if c.UID != 0 && c.UID != l.own.uid && c.UID != l.agent().uid {
		return nil, permissionDenied(c, op+" lease "+leaseID+" of agent "+quote(l.agent().id)+", which belongs to another uid")
	}
	return l, nil
}

// Heartbeat extends an active lease to now + ttl and returns it. With ttl 0
// the lease keeps its ttl (a bound lease without one stays without, and
// nothing is recorded); otherwise ttl (1..MaxTTL) becomes its ttl. A lease
// that is not active is NOT_FOUND. Permissions are as for Release.
func (e *Engine) Heartbeat(now int64, c Caller, leaseID string, ttl int64) (Lease, error) {
	if ttl != 0 {
		if err := e.checkTTL("ttl", ttl); err != nil {
			return Lease{}, err
		}
	}
	l, err := e.leaseFor(c, "heartbeat", leaseID)
	if err != nil {
		return Lease{}, err
	}
	if l == nil || l.ExpiresAt <= now {
		return Lease{}, errorf(protocol.CodeNotFound, "klock: lease %s is not active (unknown, released or expired); acquire a new one", leaseID)
	}
	if ttl == 0 {
		ttl = l.own.ttl
	}
	if ttl == 0 {
		return e.public(l), nil // a bound lease without a ttl: nothing to extend
	}
	e.heartbeat(l, now, ttl)
	e.recordLease(RecHeartbeat, now, leaseID, ttl)
	return e.public(l), nil
}

// heartbeat sets a lease's ttl and extends it to now + ttl; a lease that
// had no ttl (bound) joins the expiry queue.
func (e *Engine) heartbeat(l *lease, now, ttl int64) {
	if o := l.own; o.ttl != ttl {
		l.own = l.sess().ownerFor(o.uid, o.pid, ttl, o.bound)
	}
	l.ExpiresAt = expiry(now, ttl)
	switch {
	case l.heapIdx >= 0 && l.ExpiresAt == Never:
		e.leaseDeadlines.remove(int(l.heapIdx))
	case l.heapIdx >= 0:
		e.leaseDeadlines.fix(int(l.heapIdx))
	case l.ExpiresAt != Never:
		e.leaseDeadlines.push(l)
	}
	e.reholdBelow(l)
}

// Revoke ends an active lease now, as if it expired (admin: root or
// Config.AdminUID). It returns false when the lease was not active.
func (e *Engine) Revoke(now int64, c Caller, leaseID string) (bool, []Wakeup, error) {
	if err := checkText("lease_id", leaseID, MaxIDLen); err != nil {
		return false, nil, err
	}
	if !e.isAdmin(c) {
		return false, nil, permissionDenied(c, "revoke leases (admin only)")
	}
	l := e.lookup(leaseID)
	if l == nil || l.ExpiresAt <= now {
		return false, nil, nil
	}
	e.emitLeaseOf(EvRevoke, now, l)
	e.removeLease(l)
	e.revocations++
	e.recordLease(RecRevoke, now, leaseID, 0)
	return true, e.settle(now, nil), nil
}

// EndSession releases every lease of the agent's session and marks the
// session ended: its queued requests are answered SESSION_EXPIRED, and so
// are later acquires in it. It returns how many active leases it released
// and the wake-ups. Only the agent's uid or root may end its sessions.
// However many leases the session holds, it does it all at once; the
// daemon uses EndSessionStep.
func (e *Engine) EndSession(now int64, c Caller, agentID, sessionID string) (int, []Wakeup, error) {
	n, wake, _, err := e.EndSessionStep(now, c, agentID, sessionID, 0)
	return n, wake, err
}

// EndSessionStep is EndSession in steps of bounded work. While the
// session has more than max leases, or more than max queued requests, a
// call does one step and returns more = true: it answers up to max of the
// session's queued requests SESSION_EXPIRED and releases up to max of its
// leases, oldest first, exactly as release does (one RecRelease record
// lists them, and the requests queued on their resources are decided
// again). The call that finds at most max of each left ends the session
// as EndSession does and returns more = false. The caller calls again
// until then, letting other calls in between: they may see some of the
// session's leases released and others not yet, as if its holder had been
// releasing them one by one. n counts the active leases a step released.
// max 0 means no bound: one call does it all.
func (e *Engine) EndSessionStep(now int64, c Caller, agentID, sessionID string, max int) (n int, wake []Wakeup, more bool, err error) {
	if err := checkText("agent_id", agentID, MaxIDLen); err != nil {
		return 0, nil, false, err
	}
	if err := checkText("session_id", sessionID, MaxIDLen); err != nil {
		return 0, nil, false, err
	}
	a := e.agents[agentID]
	if a == nil || a.unregistered {
		return 0, nil, false, unknownAgent(agentID)
	}
	if !mayActFor(c, a) {
		return 0, nil, false, permissionDenied(c, "end sessions of agent "+quote(agentID)+", which belongs to another uid")
	}
	if a.ended.has(sessionID) {
		return 0, nil, false, nil
	}
	sl := a.sessions[sessionID]
	held := 0
	if sl != nil {
		held = sl.n
	}
	queued := 0
	for _, w := range a.waiters {
		if w.session == sessionID {
			queued++
		}
	}
	last := max == 0 || held <= max && queued <= max
	if max == 0 {
		max = len(a.waiters) + held
	}
	for i := 0; i < len(a.waiters) && len(wake) < max; {
		w := a.waiters[i]
		if w.session != sessionID {
			i++
			continue
		}
		v := verdict{reason: protocol.ReasonSessionExpired, step: StepSessionEnded}
		e.countDenial(v.reason)
		wake = append(wake, Wakeup{Waiter: w.id, Result: Result{Denial: e.denial(now, a, sessionID, &v)}})
		e.dropWaiter(w) // moves the last waiter to i
	}
	var ls []*lease
	if sl != nil {
		ls = sl.oldest(max)
	}
	n, ids := e.removeInFenceOrder(now, ls, !last && e.cfg.Journal, EvRelease) // tells watchers of each lease, in fence order
	e.releases += uint64(n)
	if !last {
		if len(ids) > 0 {
			e.record(Record{Kind: RecRelease, Time: now, LeaseIDs: ids})
		}
		return n, e.settle(now, wake), true, nil
	}
	a.ended.add(sessionID)
	e.record(Record{Kind: RecEndSession, Time: now, AgentID: agentID, SessionID: sessionID})
	return n, e.settle(now, wake), false, nil
}

// Freeze freezes a resource (admin): every acquire on it, or for a
// subtree key on any key it covers, is then denied RESOURCE_LOCKED and the
// requests queued there are answered so; leases already held keep
// running. It returns the state after the call (true).
func (e *Engine) Freeze(now int64, c Caller, typ, path string) (bool, []Wakeup, error) {
	key, err := resourceKey(-1, typ, path)
	if err != nil {
		return false, nil, err
	}
	if !e.isAdmin(c) {
		return false, nil, permissionDenied(c, "freeze resources (admin only)")
	}
	if r := e.resources.get(key); r != nil && r.frozen {
		return true, nil, nil
	}
	r := e.resourceFor(key)
	r.frozen = true
	e.record(Record{Kind: RecFreeze, Time: now, Resource: key})
	e.emitResource(EvFreeze, now, key)
	wake := e.answerQueued(now, r, key, nil)
	var below []*resource
	e.eachQueuedBelow(r, func(o *resource) { below = append(below, o) })
	for _, o := range below {
		wake = e.answerQueued(now, o, key, wake)
	}
	return true, wake, nil
}

// Thaw ends a freeze (admin) and returns the state after the call (false).
func (e *Engine) Thaw(now int64, c Caller, typ, path string) (bool, error) {
	key, err := resourceKey(-1, typ, path)
	if err != nil {
		return false, err
	}
	if !e.isAdmin(c) {
		return false, permissionDenied(c, "thaw resources (admin only)")
	}
	r := e.resources.get(key)
	if r == nil || !r.frozen {
		return false, nil
	}
	r.frozen = false
	e.dropIfIdle(r)
	e.record(Record{Kind: RecThaw, Time: now, Resource: key})
	e.emitResource(EvThaw, now, key)
	return false, nil
}
