package engine

import (
	"cmp"
	"slices"
	"strings"

	"github.com/klockd/klock/protocol"
)

// This file holds the primitive state changes shared by the live calls and
// by Apply: they update every index and never write records.

// addLease inserts a granted lease into every index. The lease's agent must
// exist (possibly as a leftover); r is the lease's resource and key its id
// as bytes, when the caller knows them.
func (e *Engine) addLease(l Lease, r *resource, key *leaseKey) (*lease, *Error) {
	var k leaseKey
	if key != nil {
		k = *key
	} else if pk, ok := parseLeaseKey(l.ID); ok {
		k = pk
	} else {
		return nil, errorf(protocol.CodeInternal, "klock: lease id %q is not a canonical UUID", l.ID)
	}
	a := e.agents[l.AgentID]
	if a == nil {
		return nil, errorf(protocol.CodeInternal, "klock: lease %s for unknown agent %q", l.ID, l.AgentID)
	}
	if l.Predicate < Provides || l.Predicate > Renames { // it has 3 bits in lease.bits
		return nil, errorf(protocol.CodeInternal, "klock: lease %s has predicate %d", l.ID, l.Predicate)
	}
	var x *lease
	if n := len(e.freeLeases); n > 0 {
		x = e.freeLeases[n-1]
		e.freeLeases[n-1] = nil
		e.freeLeases = e.freeLeases[:n-1]
	} else {
		x = new(lease)
	}
	if !e.leases.put(k, x) {
		e.freeLeases = append(e.freeLeases, x)
		return nil, errorf(protocol.CodeInternal, "klock: lease %s is granted twice or names a taken slot", l.ID)
	}
	if r == nil {
		r = e.resourceFor(l.Resource)
	}
	sl := a.session(l.SessionID)
	var bp *boundProc
	var bound *Process
	if l.Bound != nil {
		bp = e.procFor(*l.Bound)
		bound = &bp.proc
	}
	// The id is in key, and the lease keeps no strings of the caller's
	// (a request's strings share the bytes of its whole frame).
	*x = lease{res: r, own: sl.ownerFor(l.OwnerUID, l.OwnerPID, l.TTL, bound),
		AcquiredAt: l.AcquiredAt, ExpiresAt: l.ExpiresAt, Fence: l.Fence, key: k,
		heapIdx: -1, bits: uint32(l.Predicate) << predShift}
	if l.ClientPath != "" {
		if e.clientPaths == nil {
			e.clientPaths = make(map[*lease]string)
		}
		e.clientPaths[x] = strings.Clone(l.ClientPath)
		x.bits |= hasPathBit
	}
	r.hold(x)
	a.nLeases++
	sl.add(x) // x's owner is sl's, through which x knows its agent
	if l.ExpiresAt != Never {
		e.leaseDeadlines.push(x)
	}
	if bp != nil {
		e.bindLease(x, bp)
	}
	e.holdBelow(x)
	if l.Fence > e.fence {
		e.fence = l.Fence
	}
	return x, nil
}

// removeLease takes a lease out of every index and marks the queues it may
// have held up (its key's, and those of keys overlapping it) to be decided
// again.
func (e *Engine) removeLease(x *lease) {
	e.leases.del(x.key)
	if x.heapIdx >= 0 {
		e.leaseDeadlines.remove(int(x.heapIdx))
	}
	if x.own.bound != nil {
		e.unbindLease(x)
	}
	e.unholdBelow(x)

	r := x.res
	r.unhold(x)

	a := x.agent()
	a.nLeases--
	if x.idem != nil { // before its session's list drops it: see idemEntry.remove
		x.idem.remove(x)
		if en := x.idem; en.n == 0 && a.idem[en.key] == en {
			delete(a.idem, en.key)
			*en = idemEntry{} // no lease points at it any more
			e.spareIdem = en
		}
		x.idem = nil
	}
	sl := x.sess()
	sl.remove(x)
	if sl.n == 0 {
		a.sessionEmptied()
	}

	if x.hasPath() {
		delete(e.clientPaths, x)
	}
	e.markOverlapping(r, nil)
	e.dropIfIdle(r)
	e.dropLeftover(a)
	if len(e.freeLeases) < maxFreeLeases {
		*x = lease{}
		e.freeLeases = append(e.freeLeases, x)
	}
}

// maxFreeLeases bounds the removed lease structs kept for reuse.
const maxFreeLeases = 1024

// remove takes a lease out of the entry, while the lease is still in its
// session's list: when it was the first, the next one is after it there,
// past no more nils than the entry has leases.
func (en *idemEntry) remove(x *lease) {
	en.n--
	switch {
	case en.n == 0:
		en.first = nil
	case x == en.first:
		ls := x.sess().ls
		i := x.sessIdx + 1
		for ls[i] == nil {
			i++
		}
		en.first = ls[i]
	}
}

// bindIdem files the n leases of one grant, first and those after it in
// its session's list, under an idempotency key of their agent; leases
// still filed under that key (all ended) lose it.
func (e *Engine) bindIdem(a *agent, key string, first *lease, n int) {
	if key == "" || n == 0 {
		return
	}
	if old := a.idem[key]; old != nil {
		for l := range old.all() {
			l.idem = nil
		}
	}
	if a.idem == nil {
		a.idem = make(map[string]*idemEntry)
	}
	en := e.spareIdem
	if en == nil {
		en = new(idemEntry)
	}
	e.spareIdem = nil
	*en = idemEntry{key: strings.Clone(key), first: first, n: n} // outlives the request
	for l := range en.all() {
		l.idem = en
	}
	a.idem[en.key] = en
}

// bindIdemRead is bindIdem for leases read back (Apply, Restore), in
// fence order. They were one grant's unless the state was made by hand:
// leases that are not together in one session's list are not filed (an
// engine never wrote such a state).
func (e *Engine) bindIdemRead(key string, xs []*lease) {
	if len(xs) == 0 {
		return
	}
	s, i := xs[0].sess(), xs[0].sessIdx
	for _, x := range xs {
		for int(i) < len(s.ls) && s.ls[i] == nil {
			i++
		}
		if x.sess() != s || int(i) == len(s.ls) || s.ls[i] != x {
			return
		}
		i++
	}
	e.bindIdem(xs[0].agent(), key, xs[0], len(xs))
}

// endSession removes the session's leases and marks it ended (see
// endedSessions.add); it returns how many of them were active.
func (e *Engine) endSession(now int64, a *agent, session string) int {
	var ended []*lease
	if sl := a.sessions[session]; sl != nil {
		ended = sl.oldest(sl.n)
	}
	n, _ := e.removeInFenceOrder(now, ended, false, EvRelease)
	a.ended.add(session)
	return n
}

// removeInFenceOrder sorts ls, leases the caller collected from an index,
// by fence and removes them in that order; it returns how many were active
// and, when withIDs, their ids in that order. Watchers are told of each:
// an active lease as kind, one already expired as expire. The order an index holds them in depends on earlier removals, which an
// engine restored from a snapshot does not know, and the removal order
// decides which queue is decided again first: replicas must agree on it.
func (e *Engine) removeInFenceOrder(now int64, ls []*lease, withIDs bool, kind EventKind) (int, []string) {
	slices.SortFunc(ls, func(x, y *lease) int { return cmp.Compare(x.Fence, y.Fence) })
	n := 0
	var ids []string
	for _, l := range ls {
		if l.ExpiresAt > now {
			n++
			e.emitLeaseOf(kind, now, l)
		} else {
			e.emitLeaseOf(EvExpire, now, l) // expired, not yet removed by the timer
		}
		if withIDs {
			ids = append(ids, l.id())
		}
		e.removeLease(l) // may recycle l
	}
	return n, ids
}
