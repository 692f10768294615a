package engine

import (
	"cmp"
	"math"
	"slices"

	"github.com/klockd/klock/protocol"
)

// This file is the decision: the five steps of DESIGN.md "Semantics", run
// over every lease and queued request whose key overlaps the requested one
// (issue 14): the key itself, the subtree keys above it (its parent chain)
// and, for a subtree key, everything below it, read from its summary. It
// changes nothing, so a dry run (explain) calls it as acquire does.

// verdict is the decision for one request: reason "" is a grant. by* name
// the lease, queued request or freeze that decided it, step the rule that
// did.
type verdict struct {
	reason    protocol.Reason
	step      Step
	key       string    // the requested key
	pred      Predicate // the requested predicate on key
	byKey     string    // the key of what decided it: key, a subtree key above it, or a key below it
	by        *agent
	bySession string
	byPred    Predicate
	byQueued  bool
	byExpires int64  // expiry of the deciding lease (0 for a queued request)
	byPath    string // the deciding lease's ClientPath ("" for a queued request)
	maxExpiry int64  // latest expiry of the conflicting active leases seen
}

// Step names the rule of DESIGN.md "Deciding an acquire" that reached a
// verdict: its number, then what applied.
type Step string

// The steps a verdict can come from.
const (
	StepFrozen           Step = "1:frozen"             // RESOURCE_LOCKED: the key, or a subtree key covering it, is frozen
	StepSessionEnded     Step = "1:session-ended"      // SESSION_EXPIRED: the requester's session was ended
	StepOwnAgent         Step = "3:own-agent"          // CONFLICT: the requester's agent holds an overlapping key in another session
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
		v := e.decideOne(now, a, session, prio, targets[i], self)
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

// decideOne decides one target. Its cost is O(depth of the key) plus the
// leases and queue on the key and on the subtree keys above it (as on one
// key before subtrees), plus, for a subtree key, O(log agents below it):
// never the number of leases below it, except to break a tie between
// agents of equal priority (see oldestBelow).
func (e *Engine) decideOne(now int64, a *agent, session string, prio int64, t target, self *waiter) verdict {
	v := verdict{key: t.key, pred: t.pred, step: StepNoConflict}
	r := t.res
	var above *resource
	if r != nil {
		above = r.parent
	} else {
		above = e.nodeAbove(t.key)
	}
	// Step 1: a freeze of the key, or of a subtree key covering it.
	if r != nil && r.frozen {
		v.reason, v.step, v.byKey = protocol.ReasonResourceLocked, StepFrozen, r.key
		return v
	}
	for n := above; n != nil; n = n.parent {
		if n.frozen {
			v.reason, v.step, v.byKey = protocol.ReasonResourceLocked, StepFrozen, n.key
			return v
		}
	}
	// Steps 2-5 over everything overlapping the key.
	d := decision{now: now, a: a, session: session, pred: t.pred, self: self, paths: e.clientPaths}
	if r != nil {
		d.atKey(r)
	}
	for n := above; n != nil; n = n.parent {
		d.atKey(n)
	}
	if r != nil && r.below() != nil {
		d.below(r)
	}
	v.maxExpiry = d.maxExpiry
	switch {
	case d.conflict.agent != nil:
		v.reason, v.step = protocol.ReasonConflict, StepOwnAgent
		d.conflict.into(&v)
	case d.holder.agent != nil && d.holder.agent.priority <= prio:
		v.reason, v.step = protocol.ReasonDie, StepSeniorHolder
		d.holder.into(&v)
	case d.queued.agent != nil && d.queued.agent.priority <= prio:
		// A junior never barges past a senior queued on an overlapping key.
		v.reason, v.step, v.byQueued = protocol.ReasonDie, StepSeniorQueued, true
		d.queued.into(&v)
	case d.holder.agent != nil:
		v.reason, v.step = protocol.ReasonWait, StepOlderThanHolders
		d.holder.into(&v)
	}
	return v
}

// decision gathers, over the keys overlapping a request, what decides it.
type decision struct {
	now     int64
	a       *agent
	session string
	pred    Predicate
	self    *waiter
	paths   map[*lease]string // Engine.clientPaths

	conflict  candidate // an active conflicting lease of the requester's agent in another session
	holder    candidate // the oldest active conflicting lease of another agent
	queued    candidate // the oldest conflicting request of another agent, queued
	maxExpiry int64     // latest expiry of the active conflicting leases, the requester's session's aside
}

// candidate is a lease or a queued request that may decide a verdict.
// Among several, the oldest (lowest priority value) decides; a tie is
// broken by key order, then by fence (or, for queued requests, arrival).
type candidate struct {
	agent   *agent
	session string
	pred    Predicate
	key     string
	order   uint64
	expires int64  // of a lease; 0 for a queued request
	path    string // of a lease: its ClientPath
}

func (c *candidate) improve(o candidate) {
	if c.agent == nil || o.agent.priority < c.agent.priority ||
		o.agent.priority == c.agent.priority && (o.key < c.key || o.key == c.key && o.order < c.order) {
		*c = o
	}
}

func (c *candidate) into(v *verdict) {
	v.by, v.bySession, v.byPred, v.byKey, v.byExpires, v.byPath = c.agent, c.session, c.pred, c.key, c.expires, c.path
}

func (d *decision) leaseCandidate(l *lease) candidate {
	c := candidate{agent: l.agent(), session: l.sess().name, pred: l.pred(), key: l.res.key, order: l.Fence, expires: l.ExpiresAt}
	if l.hasPath() {
		c.path = d.paths[l]
	}
	return c
}

// atKey takes in the leases and the queue on one key that overlaps the
// request: the key itself or a subtree key above it.
func (d *decision) atKey(r *resource) {
	for _, l := range r.holders() {
		if l.ExpiresAt <= d.now || !Conflicts(l.pred(), d.pred) {
			continue
		}
		if l.agent() == d.a {
			if l.sess().name == d.session {
				continue // re-entrant
			}
			if d.conflict.agent == nil {
				d.conflict = d.leaseCandidate(l)
			}
		} else {
			d.holder.improve(d.leaseCandidate(l))
		}
		d.maxExpiry = max(d.maxExpiry, l.ExpiresAt)
	}
	// The queue is sorted oldest first: the first conflicting request of
	// another agent is the oldest here.
	for _, q := range r.queue() {
		if q.w == d.self || q.w.agent == d.a || !Conflicts(q.pred, d.pred) {
			continue
		}
		d.queued.improve(candidate{agent: q.w.agent, session: q.w.session, pred: q.pred, key: r.key, order: uint64(q.w.id)})
		break
	}
}

// below takes in what is held and queued strictly below the subtree key r,
// from r's summary.
func (d *decision) below(r *resource) {
	s := r.below()
	var oldest *heldBy // an active entry of the oldest other agent holding below
	tied := false      // another agent of the same priority holds below too
	for c := range numClasses {
		if !conflictsClass(d.pred, c) {
			continue
		}
		list := s.held[c]
		// The requester's own entries: one of another session is CONFLICT.
		i, _ := slices.BinarySearchFunc(list, d.a, func(h *heldBy, a *agent) int { return heldOrder(h, a.priority, a, "") })
		for ; i < len(list) && list[i].agent == d.a && d.conflict.agent == nil; i++ {
			if h := list[i]; h.session != d.session && h.exp > d.now {
				d.conflict = d.leaseCandidate(h.latestLease())
			}
		}
		// Other agents, in priority order. The entries skipped are the
		// requester's (one per session), those whose leases have all
		// expired but are not removed yet, and the oldest agent's own.
		for _, h := range list {
			if h.agent == d.a || h.exp <= d.now {
				continue
			}
			p := h.prio
			if oldest != nil && p > oldest.prio {
				break
			}
			if oldest == nil || p < oldest.prio {
				oldest, tied = h, false
				continue
			}
			if h.agent != oldest.agent {
				tied = true
				break
			}
		}
		if m := latestExcept(s.latest[c], d.a, d.session); m > d.now {
			d.maxExpiry = max(d.maxExpiry, m)
		}
	}
	switch {
	case oldest == nil:
	case tied:
		d.oldestBelow(r, oldest.prio)
	default:
		// Any of its leases will do: keys above r (compared before) sort
		// before every key below it, and no other agent ties with it.
		d.holder.improve(d.leaseCandidate(oldest.latestLease()))
	}
	d.queuedBelow(r)
}

// oldestBelow breaks a tie between agents of priority prio holding below
// r by key order: it visits the active conflicting leases of their entries
// for the first key (then fence). This is the one part of a decision that
// visits leases below a key, and only when agents of equal priority tie
// for the oldest holder there.
func (d *decision) oldestBelow(r *resource, prio int64) {
	for c := range numClasses {
		if !conflictsClass(d.pred, c) {
			continue
		}
		list := r.below().held[c]
		i, _ := slices.BinarySearchFunc(list, prio, func(h *heldBy, p int64) int { return cmp.Compare(h.prio, p) })
		for ; i < len(list) && list[i].prio == prio; i++ {
			if h := list[i]; h.agent != d.a && h.exp > d.now {
				d.holder.improve(d.leaseCandidate(h.firstLease(d.now, nil)))
			}
		}
	}
}

// queuedBelow takes in the oldest conflicting request of another agent
// queued below r: the agents of the lowest priority value that r's summary
// lists, and among their queued requests the first by key, then arrival.
func (d *decision) queuedBelow(r *resource) {
	var buf [4]*agent
	oldest := buf[:0]
	for c := range numClasses {
		if !conflictsClass(d.pred, c) {
			continue
		}
		for _, q := range r.below().queued[c] {
			if q.agent == d.a {
				continue
			}
			if len(oldest) > 0 && q.agent.priority > oldest[0].priority {
				break
			}
			if len(oldest) > 0 && q.agent.priority < oldest[0].priority {
				oldest = oldest[:0]
			}
			if !slices.Contains(oldest, q.agent) {
				oldest = append(oldest, q.agent)
			}
		}
	}
	for _, g := range oldest {
		for _, w := range g.waiters {
			for _, t := range w.targets {
				if isBelow(t.key, r.key) && Conflicts(t.pred, d.pred) {
					d.queued.improve(candidate{agent: g, session: w.session, pred: t.pred, key: t.key, order: uint64(w.id)})
				}
			}
		}
	}
}

// latestLease returns the lease with h's latest expiry, following the
// tops of the heaps down.
func (h *heldBy) latestLease() *lease {
	for h.kids.top() > h.leases.top() {
		h = h.kids[0]
	}
	return h.leases[0]
}

// firstLease returns the first active lease below h by key, then fence,
// or best when it comes first. Entries whose leases have all expired are
// skipped, and so are the subtree keys that sort after best.
func (h *heldBy) firstLease(now int64, best *lease) *lease {
	for _, l := range h.leases {
		if l.ExpiresAt > now && (best == nil || l.res.key < best.res.key || l.res == best.res && l.Fence < best.Fence) {
			best = l
		}
	}
	for _, k := range h.kids {
		// Every key under k's node sorts after the node's key.
		if k.exp > now && (best == nil || k.node.key < best.res.key) {
			best = k.firstLease(now, best)
		}
	}
	return best
}

// latestExcept returns the latest expiry of the heap's entries other than
// (a, session)'s, or math.MinInt64.
func latestExcept(q expHeap[byLatest], a *agent, session string) int64 {
	m := int64(math.MinInt64)
	for i := 0; i < len(q) && i < 3; i++ {
		if h := q[i].heldBy; (h.agent != a || h.session != session) && h.exp > m {
			m = h.exp
			if i == 0 {
				break
			}
		}
	}
	return m
}
