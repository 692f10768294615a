package engine

import (
	"cmp"
	"slices"
	"strings"

	"github.com/google/btree"
)

// The orders that let a list, an end_session or any other operation over
// many leases work on a bounded slice of them at a time, wherever it left
// off, instead of visiting (or sorting) everything under the engine lock:
//
//   - resource keys, sorted (byKey): list_leases walks them from a cursor;
//   - registered agents by priority then id (byPriority): list_agents;
//   - each session's leases by fence (sessionLeases): end_session takes
//     the oldest ones first, a bounded number per step.
//
// The two sorted sets are B-trees (github.com/google/btree): O(log n) to
// insert, delete or seek, then O(1) per entry walked. The resource set
// changes only when a key gets its first lease, waiter or freeze or is
// forgotten (idle keys are parked first, see dropIfIdle), so a key that is
// taken and released again and again costs nothing here.

// btreeDegree is the B-trees' degree: nodes of up to 2×32-1 entries, a
// few cache lines of pointers each.
const btreeDegree = 32

func resourceLess(a, b *resource) bool { return a.key < b.key }

func agentLess(a, b *agent) bool {
	if a.priority != b.priority {
		return a.priority < b.priority
	}
	return a.id < b.id
}

func newResourceOrder() *btree.BTreeG[*resource] {
	return btree.NewG(btreeDegree, resourceLess)
}

func newAgentOrder() *btree.BTreeG[*agent] {
	return btree.NewG(btreeDegree, agentLess)
}

// sessionLeases are one session's present leases in fence order (grants
// only ever raise the fence, so a new lease goes at the end). A removed
// lease leaves a nil behind, which the next removals step over or a
// compaction drops once nils are the majority: both O(1) per removal,
// amortised, and the oldest lease is always at head.
type sessionLeases struct {
	name  string
	agent *agent
	ls    []*lease // fence order; nil where a lease was removed
	head  int      // ls[:head] are nil
	n     int      // leases (non-nil entries)
	last  uint64   // the highest fence added
	own   *owner   // the last owner ownerFor made
}

// ownerFor returns an owner with these fields: the session's last one when
// it matches (leases granted alongside, or one at a time by one process,
// share it), else a new one, which becomes the session's last. Bindings
// match by value: a process whose last lease went and that takes another
// has a new table entry, but its owner's Process, never changed, is still
// the same process.
func (s *sessionLeases) ownerFor(uid uint32, pid int32, ttl int64, bound *Process) *owner {
	if o := s.own; o != nil && o.uid == uid && o.pid == pid && o.ttl == ttl && sameProcess(o.bound, bound) {
		return o
	}
	s.own = &owner{sess: s, bound: bound, ttl: ttl, uid: uid, pid: pid}
	return s.own
}

// sessionEmptied notes that one of the agent's session lists became empty.
// Empty lists are kept for a while (a session that takes and releases one
// lease again and again would otherwise allocate and hash one each time)
// and dropped together once they outnumber the others: O(1) amortised.
func (a *agent) sessionEmptied() {
	a.emptySessions++
	if a.emptySessions <= 8 || 2*a.emptySessions <= len(a.sessions) {
		return
	}
	for name, s := range a.sessions {
		if s.n == 0 {
			delete(a.sessions, name)
		}
	}
	a.emptySessions = 0
}

// session returns the agent's lease list for session, creating it.
func (a *agent) session(name string) *sessionLeases {
	s := a.sessions[name]
	if s == nil {
		if a.sessions == nil {
			a.sessions = make(map[string]*sessionLeases)
		}
		s = &sessionLeases{name: strings.Clone(name), agent: a} // outlives the request
		a.sessions[name] = s
	} else if s.n == 0 {
		a.emptySessions--
	}
	return s
}

// add appends a lease, whose owner is one of s's (see ownerFor), which
// normally has the highest fence so far; one that does not (a state not in
// fence order) is put in its place.
func (s *sessionLeases) add(x *lease) {
	s.n++
	if x.Fence > s.last || len(s.ls) == s.head {
		s.last = max(s.last, x.Fence)
		if len(s.ls) == cap(s.ls) && s.head > 0 && 2*s.head >= len(s.ls) {
			// Drop the nils before head rather than copy them into a
			// larger array: a session that always holds a lease while it
			// takes and releases others, oldest first, would otherwise
			// keep an entry for every lease it was ever granted (remove
			// compacts on the nils after head only). O(1) amortised: the
			// leases moved are at most the removals that made the nils.
			s.compact()
		}
		x.sessIdx = int32(len(s.ls))
		s.ls = append(s.ls, x)
		return
	}
	s.compact()
	i, _ := slices.BinarySearchFunc(s.ls, x.Fence, func(l *lease, f uint64) int { return cmp.Compare(l.Fence, f) })
	s.ls = slices.Insert(s.ls, i, x)
	for j := i; j < len(s.ls); j++ {
		s.ls[j].sessIdx = int32(j)
	}
}

// remove takes a lease out of the list.
func (s *sessionLeases) remove(x *lease) {
	s.ls[x.sessIdx] = nil
	s.n--
	if s.n == 0 {
		clear(s.ls)
		s.ls, s.head = shrink(s.ls[:0]), 0
		return
	}
	for s.ls[s.head] == nil {
		s.head++
	}
	if span := len(s.ls) - s.head; span >= 32 && s.n < span/2 {
		s.compact()
	}
}

// compact drops the nils, keeping the order.
func (s *sessionLeases) compact() {
	j := 0
	for _, x := range s.ls[s.head:] {
		if x != nil {
			x.sessIdx = int32(j)
			s.ls[j] = x
			j++
		}
	}
	clear(s.ls[j:])
	s.ls, s.head = shrink(s.ls[:j]), 0
}

// eachLease calls fn for each of the agent's present leases, session by
// session in name order, each session's in fence order: an order that
// depends only on the leases (an agent keeps no list of its own; that cost
// each lease 13 bytes).
func (a *agent) eachLease(fn func(*lease)) {
	names := make([]string, 0, len(a.sessions))
	for name, s := range a.sessions {
		if s.n > 0 {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		s := a.sessions[name]
		for _, x := range s.ls[s.head:] {
			if x != nil {
				fn(x)
			}
		}
	}
}

// oldest returns up to max of the session's leases, oldest first.
func (s *sessionLeases) oldest(max int) []*lease {
	out := make([]*lease, 0, min(max, s.n))
	for _, x := range s.ls[s.head:] {
		if len(out) == max {
			break
		}
		if x != nil {
			out = append(out, x)
		}
	}
	return out
}

// LeasePos is a place in list_leases' order, by resource key then fence:
// a page continues with the leases strictly after it. The zero LeasePos is
// before every lease.
type LeasePos struct {
	Resource string
	Fence    uint64
}

// after reports whether the lease at (key, fence) comes after p.
func (p LeasePos) after(key string, fence uint64) bool {
	if c := strings.Compare(key, p.Resource); c != 0 {
		return c > 0
	}
	return fence > p.Fence
}

// AgentPos is a place in list_agents' order, by priority then agent id:
// a page continues with the agents strictly after it. The zero AgentPos is
// before every agent (ids are never empty).
type AgentPos struct {
	Priority int64
	ID       string
}

// before reports whether agent a comes after p.
func (p AgentPos) before(a *agent) bool {
	return cmp.Or(cmp.Compare(a.priority, p.Priority), strings.Compare(a.id, p.ID)) > 0
}
