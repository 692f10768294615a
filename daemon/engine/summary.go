package engine

import (
	"cmp"
	"math"
	"slices"
	"strings"
)

// This file keeps, for every subtree key, a summary of what is held and
// queued strictly below it, so that a request on a subtree is decided
// from the summary in O(depth) instead of visiting the leases under it
// (issue 14). Leases and requests are summed up per agent (and session),
// never listed: a summary grows with the agents below a key, not with
// their leases.

// class groups the predicates that conflict with the same predicates:
// the matrix has three kinds of rows.
type class uint8

const (
	classShared    class = iota // CONSUMES, DEPENDS_ON
	classProvides               // PROVIDES
	classExclusive              // MUTATES, DELETES, RENAMES
	numClasses
)

// classOf returns the class of a valid predicate.
func classOf(p Predicate) class {
	switch p {
	case Consumes, DependsOn:
		return classShared
	case Provides:
		return classProvides
	}
	return classExclusive
}

// classMember is one predicate of each class, to read the matrix with.
var classMember = [numClasses]Predicate{classShared: Consumes, classProvides: Provides, classExclusive: Mutates}

// conflictsClass reports whether predicate p conflicts with the predicates
// of class c. It reads Conflicts, the one copy of the matrix; a test checks
// that every member of a class answers alike.
func conflictsClass(p Predicate, c class) bool { return Conflicts(p, classMember[c]) }

// summary is what is held and queued strictly below one subtree key.
type summary struct {
	held   [numClasses][]*heldBy         // sorted by heldOrder
	latest [numClasses]expHeap[byLatest] // the same entries by their latest expiry
	soft   []*heldBy                     // the soft entries of every class, each at its softIdx (see setExp)
	queued [numClasses][]queuedBy        // sorted by agent priority, agent id
}

func (s *summary) empty() bool {
	for c := range s.held {
		if len(s.held[c]) > 0 || len(s.queued[c]) > 0 {
			return false
		}
	}
	return true
}

// heldBy sums up the leases of one class that one agent session holds
// strictly below one subtree key: its leases on the key's children, and
// the heldBy of the same agent session and class at child subtree keys
// (kids), each in a max-heap by expiry. latest() is the later of the two
// tops, and following the tops down reaches the lease that has it. Each
// lease costs its parent's heldBy one 16-byte item, whatever its depth.
//
// An entry whose last lease below has gone is soft: it stays where it is
// (in its summary, in its parent's kids), with latest() = math.MinInt64,
// which every decision skips, until the same agent session holds something
// below it again, or the summary has too many soft entries and drops one
// (see setExp). Taking and releasing one file again and again, as many
// agents do side by side, then moves no entry in or out of the summaries
// above it.
type heldBy struct {
	agent   *agent
	session string
	node    *resource // the subtree key whose summary lists it
	up      *heldBy   // the same agent, session and class at node's parent (nil at a root)
	leases  expHeap[*lease]
	kids    expHeap[*heldBy]
	prio    int64 // the agent's priority when the entry was made: its place in the summary
	exp     int64 // latest() as last filed in node's latest heap and up.kids
	upIdx   int32 // index in up.kids
	expIdx  int32 // index in node.below.latest[class]
	softIdx int32 // index in node.below.soft while soft
	class   class
}

// queuedBy counts the requests of one class that one agent has queued on
// keys strictly below one subtree key (a request of several intents counts
// once per intent).
type queuedBy struct {
	agent *agent
	n     int32
}

// latest returns the latest expiry of the leases summed up: any of them
// is active at now exactly when latest() > now.
func (h *heldBy) latest() int64 {
	return max(h.leases.top(), h.kids.top())
}

// soft reports whether the entry sums up no lease.
func (h *heldBy) soft() bool { return h.latest() == math.MinInt64 }

// agentOrder orders agents by priority, then id: the order of queued
// summaries.
func agentOrder(a, b *agent) int {
	if c := cmp.Compare(a.priority, b.priority); c != 0 {
		return c
	}
	return strings.Compare(a.id, b.id)
}

// heldOrder orders the entries of a summary: by priority (as filed), agent
// struct (a soft entry may outlive its agent, and an agent registered
// again with that id is another struct), session.
func heldOrder(h *heldBy, prio int64, a *agent, session string) int {
	switch {
	case h.prio != prio:
		return cmp.Compare(h.prio, prio)
	case h.agent != a:
		return cmp.Compare(h.agent.seq, a.seq)
	}
	return strings.Compare(h.session, session)
}

// findHeld returns the index of the entry of (a, session), filed at a's
// priority, in a summary's list, or where it would go. Most lists hold a
// few entries: those are scanned.
func findHeld(list []*heldBy, a *agent, session string) (int, bool) {
	if len(list) > 8 {
		return slices.BinarySearchFunc(list, a, func(h *heldBy, a *agent) int { return heldOrder(h, a.priority, a, session) })
	}
	for i, h := range list {
		if h.agent == a && h.session == session && h.prio == a.priority {
			return i, true
		}
		if heldOrder(h, a.priority, a, session) > 0 {
			return i, false
		}
	}
	return len(list), false
}

// maxFreeHeld bounds the heldBy structs kept for reuse.
const maxFreeHeld = 1024

// heldAt returns the heldBy of (a, session, c) at the subtree key n,
// making it, and those above it, when missing.
func (e *Engine) heldAt(n *resource, a *agent, session string, c class) *heldBy {
	s := e.summaryOf(n)
	list := s.held[c]
	i, ok := findHeld(list, a, session)
	if ok {
		return list[i]
	}
	var h *heldBy
	if k := len(e.freeHeld); k > 0 {
		h = e.freeHeld[k-1]
		e.freeHeld[k-1] = nil
		e.freeHeld = e.freeHeld[:k-1]
	} else {
		h = new(heldBy)
	}
	// Not soft yet, though empty: the caller gives it an item at once.
	h.agent, h.session, h.node, h.class, h.prio, h.exp = a, session, n, c, a.priority, math.MinInt64
	s.held[c] = slices.Insert(list, i, h)
	s.latest[c].push(byLatest{h})
	if n.parent != nil {
		h.up = e.heldAt(n.parent, a, session, c)
		h.up.kids.push(h) // at h.exp, math.MinInt64: raised by propagate
	}
	return h
}

// holdBelow files a new lease in the summaries of the subtree keys above
// it. The lease's agent remembers the entry it went in (agent.held): an
// agent that takes and releases one file again and again, or several in
// one directory, finds its entry there instead of searching a list that
// holds one for every agent below the directory.
func (e *Engine) holdBelow(x *lease) {
	p := x.res.parent
	if p == nil {
		return
	}
	a, c := x.agent(), classOf(x.pred())
	h := a.held
	if !h.is(p, a, x.sess().name, c) {
		h = e.heldAt(p, a, x.sess().name, c)
		a.held = h
	}
	h.leases.push(x)
	e.propagate(h)
}

// is reports whether h (nil or not) is the entry of (a, session, c) at
// the subtree key n, filed at a's priority: a summary lists one such
// entry at most, and a dropped entry's fields are cleared.
func (h *heldBy) is(n *resource, a *agent, session string, c class) bool {
	return h != nil && h.node == n && h.agent == a && h.class == c && h.prio == a.priority && h.session == session
}

// upOf returns the summary entry that lists a lease: its agent session's,
// of its class, at its key's parent (nil at a root). Looking it up instead
// of keeping a pointer in every lease saves the lease 16 bytes (its size
// class); it is mostly the one its agent remembers (see holdBelow).
func upOf(x *lease) *heldBy {
	p := x.res.parent
	if p == nil {
		return nil
	}
	a, c := x.agent(), classOf(x.pred())
	if h := a.held; h.is(p, a, x.sess().name, c) {
		return h
	}
	list := p.below().held[c]
	i, _ := findHeld(list, a, x.sess().name)
	a.held = list[i]
	return list[i]
}

// unholdBelow takes a lease out of the summaries above it.
func (e *Engine) unholdBelow(x *lease) {
	if h := upOf(x); h != nil {
		h.leases.remove(int(x.upIdx))
		e.propagate(h)
	}
}

// reholdBelow updates the summaries above a lease whose expiry changed.
func (e *Engine) reholdBelow(x *lease) {
	if h := upOf(x); h != nil {
		h.leases.fix(int(x.upIdx))
		e.propagate(h)
	}
}

// propagate carries h's latest expiry, after its items changed, to its
// summary's latest heap and up to the heldBy above it, as far as it
// changes anything.
func (e *Engine) propagate(h *heldBy) {
	for {
		m := h.latest()
		if m == h.exp {
			return
		}
		e.setExp(h, m)
		if h.up == nil {
			return
		}
		h.up.kids.fix(int(h.upIdx)) // h.exp is m
		h = h.up
	}
}

// setExp files h's new latest expiry m in its summary. An entry that goes
// soft joins the summary's soft entries, and while they are more than
// maxSoft, the first of them other than h is dropped: the one that went
// soft first, unless one that came back since moved the last into its
// place. Going soft lowers maxSoft by two, so up to three may go.
func (e *Engine) setExp(h *heldBy, m int64) {
	s := h.node.below()
	if h.exp == math.MinInt64 && s.isSoft(h) {
		s.unsoft(h)
	}
	h.exp = m
	s.latest[h.class].fix(int(h.expIdx))
	if m == math.MinInt64 {
		h.softIdx = int32(len(s.soft))
		s.soft = append(s.soft, h)
		for len(s.soft) > s.maxSoft() { // then len(s.soft) > numClasses
			o := s.soft[0]
			if o == h { // moved there by an earlier drop
				o = s.soft[1]
			}
			e.dropHeld(o)
		}
	}
}

// maxSoft bounds a summary's soft entries: twice its other entries, plus
// one per class. So soft entries at most triple what the entries of the
// active leases below a key cost, and a key with nothing active below
// keeps as many as before (one per class); yet with many agents each
// taking and releasing a file below the key in turn, as klock-bench's
// workers do, the entry of an agent that released stays until it takes
// its next file, instead of being dropped and made again (issue 18).
func (s *summary) maxSoft() int {
	n := 0
	for c := range s.held {
		n += len(s.held[c])
	}
	return 2*(n-len(s.soft)) + int(numClasses)
}

// isSoft reports whether h is one of the summary's soft entries.
func (s *summary) isSoft(h *heldBy) bool {
	return int(h.softIdx) < len(s.soft) && s.soft[h.softIdx] == h
}

// unsoft takes h out of the summary's soft entries, moving the last one
// into its place.
func (s *summary) unsoft(h *heldBy) {
	i, last := h.softIdx, len(s.soft)-1
	s.soft[i] = s.soft[last]
	s.soft[i].softIdx = i
	s.soft[last] = nil
	s.soft = s.soft[:last]
}

// dropHeld removes a soft entry, and the soft entries under it, from the
// summaries and their parents' kids, and keeps the structs for reuse.
// Taking out an entry with nothing below changes no expiry above it.
func (e *Engine) dropHeld(h *heldBy) {
	for len(h.kids) > 0 {
		e.dropHeld(h.kids[len(h.kids)-1]) // takes itself out of h.kids
	}
	if h.up != nil {
		h.up.kids.remove(int(h.upIdx))
	}
	s := h.node.below()
	list := s.held[h.class]
	if i, ok := slices.BinarySearchFunc(list, h, func(x, h *heldBy) int { return heldOrder(x, h.prio, h.agent, h.session) }); ok {
		s.held[h.class] = slices.Delete(list, i, i+1)
	}
	s.latest[h.class].remove(int(h.expIdx))
	if s.isSoft(h) {
		s.unsoft(h)
	}
	e.dropIfEmpty(h.node)
	if len(e.freeHeld) < maxFreeHeld {
		*h = heldBy{leases: h.leases[:0], kids: h.kids[:0]}
		e.freeHeld = append(e.freeHeld, h)
	} else {
		*h = heldBy{} // its agent may still point to it (agent.held)
	}
}

// dropSoft drops the entries of a subtree key that is being forgotten:
// nothing is held or queued below it any more, so they are all soft.
func (e *Engine) dropSoft(n *resource) {
	if s := n.below(); s != nil {
		for len(s.soft) > 0 {
			e.dropHeld(s.soft[len(s.soft)-1]) // the last drop may put s in freeSummaries, emptied
		}
	}
}

// queueBelow counts (delta +1) or uncounts (-1) one intent of a queued
// request on r in the summaries of the subtree keys above r.
func (e *Engine) queueBelow(r *resource, a *agent, c class, delta int32) {
	for n := r.parent; n != nil; n = n.parent {
		s := e.summaryOf(n)
		list := s.queued[c]
		i, ok := slices.BinarySearchFunc(list, a, func(q queuedBy, a *agent) int { return agentOrder(q.agent, a) })
		switch {
		case !ok:
			s.queued[c] = slices.Insert(list, i, queuedBy{agent: a, n: delta})
		case list[i].n+delta == 0:
			s.queued[c] = slices.Delete(list, i, i+1)
		default:
			list[i].n += delta
		}
		e.dropIfEmpty(n)
	}
}

// maxFreeSummaries bounds the emptied summaries kept for reuse (with their
// slices: a key whose summary comes and goes costs no allocation).
const maxFreeSummaries = 256

// summaryOf returns n's summary, giving it one when it has none.
func (e *Engine) summaryOf(n *resource) *summary {
	x := n.extra()
	if x.below == nil {
		if k := len(e.freeSummaries); k > 0 {
			x.below = e.freeSummaries[k-1]
			e.freeSummaries[k-1] = nil
			e.freeSummaries = e.freeSummaries[:k-1]
		} else {
			x.below = new(summary)
		}
	}
	return x.below
}

// dropIfEmpty takes away n's summary when nothing is left in it.
func (e *Engine) dropIfEmpty(n *resource) {
	if s := n.below(); s != nil && s.empty() {
		n.x.below = nil
		if len(e.freeSummaries) < maxFreeSummaries {
			e.freeSummaries = append(e.freeSummaries, s)
		}
	}
}

// reindexAgent takes an agent's leases out of the summaries and files them
// again: summaries are sorted by priority, which is about to change (an
// agent whose leases have all expired may change it before they are
// removed). With out false it files them back.
func (e *Engine) reindexAgent(a *agent, out bool) {
	a.eachLease(func(x *lease) {
		if out {
			e.unholdBelow(x)
		} else {
			e.holdBelow(x)
		}
	})
}

// expHeap is a max-heap by expiry, each item knowing its index in it: a
// heldBy's leases and kids (their upIdx), and a summary's heldBy entries
// of one class by their latest expiry (expIdx, through byLatest), whose
// top two give the latest expiry below a key excluding any one session.
//
// An item is only a pointer, and its expiry is read from it (a lease's
// ExpiresAt, an entry's exp): with the expiry inline too, each lease cost
// its parent's entry 16 bytes, not 8. A sift writes each item it moves
// (its index) anyway, so reading the expiry there costs little more. The
// owner of an item changes its expiry and calls fix at once.
type expHeap[T heapItem] []T

type heapItem interface {
	setHeapIdx(int32)
	heapExp() int64
}

func (x *lease) setHeapIdx(i int32)  { x.upIdx = i }
func (x *lease) heapExp() int64      { return x.ExpiresAt }
func (h *heldBy) setHeapIdx(i int32) { h.upIdx = i }
func (h *heldBy) heapExp() int64     { return h.exp }

// byLatest files a heldBy in its summary's latest heap, where its index
// is expIdx (upIdx being its index in its parent's kids).
type byLatest struct{ *heldBy }

func (b byLatest) setHeapIdx(i int32) { b.expIdx = i }

// top returns the latest expiry in the heap, or math.MinInt64.
func (q expHeap[T]) top() int64 {
	if len(q) == 0 {
		return math.MinInt64
	}
	return q[0].heapExp()
}

func (q *expHeap[T]) push(v T) {
	*q = append(*q, v)
	q.siftUp(len(*q) - 1)
}

// remove takes out the item at index i.
func (q *expHeap[T]) remove(i int) {
	s := *q
	last := len(s) - 1
	if i != last {
		s[i] = s[last]
	}
	var zero T
	s[last] = zero
	*q = shrink(s[:last])
	if i != last {
		q.fix(i)
	}
}

func (q expHeap[T]) fix(i int) {
	if len(q) == 1 {
		q[0].setHeapIdx(0)
		return
	}
	if !q.siftDown(i) {
		q.siftUp(i)
	}
}

func (q expHeap[T]) siftUp(i int) {
	it := q[i]
	exp := it.heapExp()
	for i > 0 {
		p := (i - 1) / 2
		if q[p].heapExp() >= exp {
			break
		}
		q[i] = q[p]
		q[i].setHeapIdx(int32(i))
		i = p
	}
	q[i] = it
	it.setHeapIdx(int32(i))
}

func (q expHeap[T]) siftDown(i int) bool {
	it := q[i]
	exp := it.heapExp()
	start, n := i, len(q)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		ce := q[c].heapExp()
		if c+1 < n {
			if e1 := q[c+1].heapExp(); e1 > ce {
				c, ce = c+1, e1
			}
		}
		if ce <= exp {
			break
		}
		q[i] = q[c]
		q[i].setHeapIdx(int32(i))
		i = c
	}
	q[i] = it
	it.setHeapIdx(int32(i))
	return i > start
}
