package engine

import (
	crand "crypto/rand"
	"iter"
	"math/rand/v2"

	"github.com/google/btree"
	"github.com/google/uuid"
)

// Engine is the lease engine. Create it with New; it is not safe for
// concurrent use.
type Engine struct {
	cfg Config

	agents        map[string]*agent
	leases        leaseTable
	resources     resTable                 // keys with leases, waiters or a freeze (and a few idle ones)
	byKey         *btree.BTreeG[*resource] // the same resources, sorted by key (order.go)
	byPriority    *btree.BTreeG[*agent]    // registered agents by priority, then id (order.go)
	idle          []*resource              // parked idle resources, oldest first
	keyBuf        []byte                   // scratch for building resource keys
	freeLeases    []*lease                 // removed lease structs for reuse
	spareProc     *boundProc               // an entry of procs with nothing bound, kept for its process's next lease
	spareIdem     *idemEntry               // an idempotency entry dropped, for reuse
	freeHeld      []*heldBy                // emptied summary entries for reuse
	freeSummaries []*summary               // emptied summaries for reuse

	leaseDeadlines  leaseHeap
	waiterDeadlines waiterHeap
	waiters         map[WaiterID]*waiter
	procs           map[Process]*boundProc // processes leases or waiters are bound to
	clientPaths     map[*lease]string      // the ClientPath of the leases that have one (lease.hasPath)

	fence      uint64 // last fencing token issued
	lastAuto   int64  // last priority assigned from the clock
	nextWaiter WaiterID
	registered int    // agents registered (not counting leftovers)
	agentSeq   uint64 // agent structs made, for agent.seq

	grants, waits, dies, expirations, exitReleases uint64
	conflicts, locked, sessionExpired              uint64 // the other denials, by reason
	releases, revocations                          uint64 // leases ended by release (or end_session) and revoke

	eventsOn bool    // SetEvents: build Events for watchers
	events   []Event // produced since the last Events call

	ids *rand.ChaCha8 // lease id generator (see newLeaseID)

	records  []Record
	dirty    []*resource // keys whose queue must be decided again
	settleAt int64       // when dirty keys became due (NextDeadline)
	pass     uint64      // settle passes, so a request is decided once per pass (a grant starts a new one)

	settled func(now int64, w *waiter, v *verdict) // test hook: each decision settle makes, before it acts on it
}

// agent is a registered agent with its indexes.
type agent struct {
	id           string
	seq          uint64 // tells this struct from an earlier agent of the same id (summaries sort by it)
	priority     int64
	registeredAt int64
	uid          uint32
	unregistered bool // kept only for leases not yet removed

	nLeases       int                       // present leases (expired ones too, until removed)
	sessions      map[string]*sessionLeases // those leases by session, in fence order (order.go)
	emptySessions int                       // lists in sessions that are empty
	waiters       []*waiter                 // queued requests
	idem          map[string]*idemEntry
	ended         endedSessions // the last maxEndedSessions sessions ended
	held          *heldBy       // the summary entry last found for one of its leases (see holdBelow)
}

// lease is a lease with its places in the indexes. It keeps only what is
// its own: its id lives in key, its agent, session and resource key are
// those of its owner's session and of res, what the leases of a grant
// share (session, owner uid and pid, ttl, binding) is in one owner they
// point to, its predicate and whether it has a ClientPath share one word
// with its index in its process's list (bits), it keeps no index in its
// resource's list (see resource.unhold), and the rare ClientPath is kept
// aside (Engine.clientPaths), so a lease is 80 bytes (with the public
// Lease embedded, its four strings made it 208; an agent pointer of its
// own and its index in an agent-wide list made it 128; the owner's fields
// of its own, 112; its session pointer, its index among its resource's
// holders and two bytes of its own, 96). public makes the Lease callers
// see.
type lease struct {
	res  *resource
	idem *idemEntry
	own  *owner // its session, uid, pid, ttl and binding, shared with the leases granted alongside

	AcquiredAt int64 // as in Lease
	ExpiresAt  int64
	Fence      uint64
	key        leaseKey
	// The indexes are int32 and together, with no padding between them.
	heapIdx int32  // index in Engine.leaseDeadlines; -1 without a ttl
	upIdx   int32  // index in the items of its agent session's summary entry at res.parent (see upOf)
	sessIdx int32  // index in its session's ls
	bits    uint32 // its index in its boundProc's leases, predicate and hasPath: see procIdx, pred, hasPath
}

// A lease's bits: its index in its boundProc's leases, when Bound, in the
// low 28 (a process never has 2^28 leases at once: that many would take
// over 50 GB; see setProcIdx), whether it has a ClientPath in the next,
// its predicate (1 to 6) in the top 3.
const (
	procIdxBits = 28
	procIdxMask = 1<<procIdxBits - 1
	hasPathBit  = 1 << procIdxBits
	predShift   = procIdxBits + 1
)

// procIdx returns the lease's index in its boundProc's leases.
func (x *lease) procIdx() int32 { return int32(x.bits & procIdxMask) }

// setProcIdx sets the lease's index in its boundProc's leases. An index
// that does not fit stops the daemon rather than corrupt the lease's other
// bits.
func (x *lease) setProcIdx(i int32) {
	if uint32(i) > procIdxMask {
		panic("klock: a process has 2^28 leases")
	}
	x.bits = x.bits&^procIdxMask | uint32(i)
}

// pred returns the lease's predicate.
func (x *lease) pred() Predicate { return Predicate(x.bits >> predShift) }

// hasPath reports whether the lease's ClientPath is in Engine.clientPaths.
func (x *lease) hasPath() bool { return x.bits&hasPathBit != 0 }

// owner is what a lease shares with the others its session was granted
// under the same caller, ttl and binding: a batch of acquire_many, or the
// leases one process takes one at a time, point at one owner (each
// session keeps the last it made, see sessionLeases.ownerFor). It is never
// changed once made: a heartbeat that changes a lease's ttl gives it
// another. A lease granted alone under an owner of its own pays 32 bytes
// for it: with its 80, 112 bytes (120 when the session pointer was the
// lease's).
type owner struct {
	sess  *sessionLeases // the leases' session's list, which knows the agent; kept once they are removed
	bound *Process       // as Lease.Bound: a process table entry's Process (that entry's or an earlier one's for the same process)
	ttl   int64          // as Lease.TTL
	uid   uint32         // as Lease.OwnerUID
	pid   int32          // as Lease.OwnerPID
}

// Bound returns the process the lease is bound to, nil when none.
func (x *lease) Bound() *Process { return x.own.bound }

// TTL returns the lease's ttl, 0 for none.
func (x *lease) TTL() int64 { return x.own.ttl }

// sess returns the lease's session's list.
func (x *lease) sess() *sessionLeases { return x.own.sess }

// agent returns the lease's agent.
func (x *lease) agent() *agent { return x.own.sess.agent }

// id returns the lease's id as text.
func (x *lease) id() string { return uuid.UUID(x.key).String() }

// agentID returns the id of the lease's agent.
func (x *lease) agentID() string { return x.own.sess.agent.id }

// sessionID returns the lease's session.
func (x *lease) sessionID() string { return x.own.sess.name }

// resource returns the lease's resource key.
func (x *lease) resource() string { return x.res.key }

// clientPath returns the path the holder named, if not the key's.
func (e *Engine) clientPath(x *lease) string {
	if !x.hasPath() {
		return ""
	}
	return e.clientPaths[x]
}

// public returns the lease as callers see it.
func (e *Engine) public(x *lease) Lease {
	return Lease{
		ID: x.id(), AgentID: x.own.sess.agent.id, SessionID: x.own.sess.name, Resource: x.res.key,
		Predicate: x.pred(), AcquiredAt: x.AcquiredAt, ExpiresAt: x.ExpiresAt, TTL: x.own.ttl,
		Fence: x.Fence, OwnerUID: x.own.uid, OwnerPID: x.own.pid, Bound: x.own.bound,
		ClientPath: e.clientPath(x),
	}
}

// idemEntry is the set of leases granted under one idempotency key: those
// of one grant, which has consecutive fences in one session, so that its
// present leases are together in their session's list (sessionLeases.ls),
// in intent order, with only the nils of its removed ones between them.
// The entry keeps the first and their number, not a list of its own: that
// cost 8 bytes a lease (a million leases taken by acquire_many under idem
// keys held 8 MB of lists), and a lease taken alone one 8-byte array more.
type idemEntry struct {
	key   string
	first *lease // the present lease with the lowest fence; nil once none
	n     int    // present leases
}

// all yields the entry's present leases, in intent order.
func (en *idemEntry) all() iter.Seq[*lease] {
	return func(yield func(*lease) bool) {
		if en.n == 0 {
			return
		}
		ls := en.first.sess().ls
		for i, k := en.first.sessIdx, 0; k < en.n; i++ {
			if l := ls[i]; l != nil {
				k++
				if !yield(l) {
					return
				}
			}
		}
	}
}

// resource is one resource key: its present leases, its queue and whether
// it is frozen; for a subtree key, also the summary of what is below it
// (see trie.go).
//
// A resource is 48 bytes (it was 64, and 96 before that): what most keys
// never have, a queue, a summary of keys below, or more than one lease at
// once, is in one resExtra behind x; a key's single holder is in one,
// with no allocation (see holders). With a key per lease, as when a
// million files are held, the resource costs a lease as much as the
// lease's own struct but for its key.
type resource struct {
	key     string
	one     [1]*lease // the lease, while the key has never had two at once (many is false)
	parent  *resource // the subtree key just above, nil at a root
	x       *resExtra // nil until the key first needs one (see extra)
	kids    int32     // resources whose parent this is
	many    bool      // the key has had two leases at once: they are in x.more
	frozen  bool
	isDirty bool
	parked  bool // in Engine.idle
}

// resExtra is what a resource rarely has. Once made it stays with the
// resource (a key that had a queue or two leases is likely to again).
type resExtra struct {
	more  []*lease // the leases once the key has had two at once (resource.many)
	q     []queued // the queue (see queue)
	below *summary // what is held and queued strictly below; nil when nothing
}

// extra returns r's resExtra, making it.
func (r *resource) extra() *resExtra {
	if r.x == nil {
		r.x = new(resExtra)
	}
	return r.x
}

// below returns the summary of what is held and queued strictly below r,
// nil when nothing is.
func (r *resource) below() *summary {
	if r.x == nil {
		return nil
	}
	return r.x.below
}

// holders returns r's present leases (expired ones too, until removed).
func (r *resource) holders() []*lease {
	if r.many {
		return r.x.more
	}
	if r.one[0] != nil {
		return r.one[:]
	}
	return nil
}

// hold adds a lease to r's leases.
func (r *resource) hold(x *lease) {
	switch {
	case r.many:
		r.x.more = append(r.x.more, x)
	case r.one[0] == nil:
		r.one[0] = x
	default:
		more := make([]*lease, 2, 4)
		more[0], more[1] = r.one[0], x
		r.one[0] = nil
		r.extra().more, r.many = more, true
	}
}

// unhold takes a lease out of r's leases. A key with more than one is
// searched, from the newest: a lease keeps no index of its own there (4
// bytes each, and the last 4 of the 16 that brought a lease into the
// 80-byte size class), since every decision on the key visits all its
// leases anyway (decision.atKey), so ending one costs no more than any
// acquire on the key.
func (r *resource) unhold(x *lease) {
	if !r.many {
		r.one[0] = nil
		return
	}
	ls := r.x.more
	last := len(ls) - 1
	i := last
	for ls[i] != x {
		i--
	}
	ls[i] = ls[last]
	ls[last] = nil
	r.x.more = ls[:last]
}

// queue returns the requests queued on r, sorted by priority, then
// arrival.
func (r *resource) queue() []queued {
	if r.x == nil {
		return nil
	}
	return r.x.q
}

// New returns an empty engine with the given limits.
func New(cfg Config) *Engine {
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	// Lease ids come from ChaCha8, a cryptographically strong generator
	// seeded once from crypto/rand: about half the cost of uuid.New even
	// with uuid.EnableRandPool (70 against 140 ns per id on this machine).
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	return &Engine{
		ids:        rand.NewChaCha8(seed),
		cfg:        cfg,
		agents:     make(map[string]*agent),
		resources:  newResTable(),
		byKey:      newResourceOrder(),
		byPriority: newAgentOrder(),
		waiters:    make(map[WaiterID]*waiter),
	}
}
