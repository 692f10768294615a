package engine

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// This file checks the engine's decisions on overlapping keys (issue 14)
// against a brute-force reference that knows nothing of the trie or the
// summaries: it scans every present lease and queued request and tests
// overlap by prefix (protocol.Covers). Random histories mix plain and
// subtree keys at depths 0-6 with all six predicates, both orders of
// agents, equal priorities, expiry, release, freezes and parked requests.
// Checked: every acquire's verdict, held_by and wait_time; the same for
// random dry-run decisions; every decision settle makes for a parked
// request; that no parked request is left that should have been answered;
// safety; the summaries against the leases; and replay.

// refVerdict is the reference's answer.
type refVerdict struct {
	reason protocol.Reason
	heldBy string
	maxExp int64
}

// refCandidate is a lease or queued request that may decide, with the
// order the rules give: priority, then key, then fence or arrival.
type refCandidate struct {
	agent string
	prio  int64
	key   string
	order uint64
}

func (c refCandidate) before(o refCandidate) bool {
	return cmp.Or(cmp.Compare(c.prio, o.prio), strings.Compare(c.key, o.key), cmp.Compare(c.order, o.order)) < 0
}

// refDecide is DESIGN.md's five steps over every overlapping lease and
// queued request, found by scanning them all.
func refDecide(e *Engine, now int64, a *agent, session string, prio int64, ts []target, self *waiter) refVerdict {
	var worst refVerdict
	var maxExp int64
	for _, t := range ts {
		v := refDecideOne(e, now, a, session, prio, t, self)
		maxExp = max(maxExp, v.maxExp)
		if rank(v.reason) > rank(worst.reason) {
			worst = v
		}
	}
	if worst.reason != protocol.ReasonResourceLocked && a.ended.has(session) {
		worst = refVerdict{reason: protocol.ReasonSessionExpired}
	}
	worst.maxExp = maxExp
	return worst
}

func refDecideOne(e *Engine, now int64, a *agent, session string, prio int64, t target, self *waiter) refVerdict {
	for r := range e.resources.all() {
		if r.frozen && protocol.Covers(r.key, t.key) {
			return refVerdict{reason: protocol.ReasonResourceLocked}
		}
	}
	var v refVerdict
	conflict := false
	var holder, queued *refCandidate
	e.leases.each(func(l *lease) {
		if l.ExpiresAt <= now || !Conflicts(l.pred(), t.pred) || !protocol.Overlaps(l.resource(), t.key) {
			return
		}
		if l.agent() == a && l.sessionID() == session {
			return
		}
		v.maxExp = max(v.maxExp, l.ExpiresAt)
		if l.agent() == a {
			conflict = true
			return
		}
		c := refCandidate{l.agentID(), l.agent().priority, l.resource(), l.Fence}
		if holder == nil || c.before(*holder) {
			holder = &c
		}
	})
	for _, w := range e.waiters {
		if w == self || w.agent == a {
			continue
		}
		for _, u := range w.targets {
			if Conflicts(u.pred, t.pred) && protocol.Overlaps(u.key, t.key) {
				c := refCandidate{w.agent.id, w.priority, u.key, uint64(w.id)}
				if queued == nil || c.before(*queued) {
					queued = &c
				}
			}
		}
	}
	switch {
	case conflict:
		v.reason, v.heldBy = protocol.ReasonConflict, a.id
	case holder != nil && holder.prio <= prio:
		v.reason, v.heldBy = protocol.ReasonDie, holder.agent
	case queued != nil && queued.prio <= prio:
		v.reason, v.heldBy = protocol.ReasonDie, queued.agent
	case holder != nil:
		v.reason, v.heldBy = protocol.ReasonWait, holder.agent
	}
	return v
}

// refWaitTime is the wait_time a denial with the reference's maxExp has.
func refWaitTime(now, maxExp int64) int64 {
	if maxExp > 0 {
		return min(maxWaitTime, max(1, maxExp-now))
	}
	return maxWaitTime
}

// treeModel drives an engine with random operations on overlapping keys.
type treeModel struct {
	t        *rapid.T
	e        *Engine
	now      int64
	prompt   bool // the daemon's timer fires on time
	agents   []string
	sessions []string
	keys     [][2]string // resource type and path
	leaseIDs []string
	waiters  []WaiterID
	recs     []Record
}

// drawKeys draws the resources of one history: FILE paths at depths 0-6
// ("/" is depth 0), plain or subtree, over a tiny alphabet so that they
// nest and share prefixes ("/a/" covers "/a/b", not "/ab"), and a few
// SYMBOL keys, relative, with the same subtree rule.
func drawKeys(t *rapid.T) [][2]string {
	elems := []string{"a", "b", "ab"}
	n := rapid.IntRange(2, 8).Draw(t, "keys")
	keys := make([][2]string, 0, n)
	for i := 0; i < n; i++ {
		depth := rapid.IntRange(0, 6).Draw(t, "depth")
		parts := make([]string, depth)
		for j := range parts {
			parts[j] = rapid.SampledFrom(elems).Draw(t, "elem")
		}
		subtree := rapid.Bool().Draw(t, "subtree")
		p := strings.Join(parts, "/")
		if rapid.IntRange(0, 9).Draw(t, "symbol?") == 0 {
			if p == "" {
				p = "a"
			}
			if subtree {
				p += "/"
			}
			keys = append(keys, [2]string{"SYMBOL", p})
			continue
		}
		p = "/" + p
		if subtree && depth > 0 {
			p += "/"
		}
		keys = append(keys, [2]string{"FILE", p})
	}
	return keys
}

func (m *treeModel) caller() Caller { return Caller{UID: 0} }

func (m *treeModel) intent() Intent {
	k := rapid.SampledFrom(m.keys).Draw(m.t, "key")
	return Intent{ResourceType: k[0], ResourcePath: k[1], Predicate: Predicate(rapid.IntRange(1, 6).Draw(m.t, "pred")).String()}
}

// targets parses intents the way a client's key reaches the engine, with
// the resource each key has (nil when none), as checkAcquire finds them.
func (m *treeModel) targets(in []Intent) []target {
	ts := make([]target, len(in))
	for i, x := range in {
		key, err := ResourceKey(x.ResourceType, x.ResourcePath)
		require.NoError(m.t, err)
		p, err := ParsePredicate(x.Predicate)
		require.NoError(m.t, err)
		ts[i] = target{key: key, pred: p, res: m.e.resources.get(key)}
	}
	return ts
}

func (m *treeModel) wake(ws []Wakeup) {
	for _, w := range ws {
		require.False(m.t, w.Result.Queued)
		if w.Result.Granted {
			for _, l := range w.Result.Leases {
				m.leaseIDs = append(m.leaseIDs, l.ID)
			}
		}
	}
}

// requireVerdict compares a decision with the reference. (Plain
// comparisons: require's helpers walk the stack on every call, which made
// most of this test's time.)
func (m *treeModel) requireVerdict(what func() string, ref refVerdict, v *verdict) {
	by := ""
	if v.by != nil {
		by = v.by.id
	}
	if ref.reason != v.reason || ref.heldBy != by || ref.maxExp != v.maxExpiry {
		m.e.leases.each(func(l *lease) {
			m.t.Logf("state: lease %s %s %s/%s exp %d", l.resource(), l.pred(), l.agentID(), l.sessionID(), l.ExpiresAt)
		})
		for r := range m.e.resources.all() {
			if r.below() != nil {
				for c := range r.below().held {
					for _, h := range r.below().held[c] {
						m.t.Logf("state: below %s class %d: %s/%s prio %d exp %d items %d soft %v", r.key, c, h.agent.id, h.session, h.prio, h.exp, len(h.leases)+len(h.kids), r.below().isSoft(h))
					}
				}
			}
		}
		m.t.Fatalf("%s: got %s held_by %q latest %d (%s); the reference says %s held_by %q latest %d",
			what(), v.reason, by, v.maxExpiry, message(&agent{id: "?"}, "?", v), ref.reason, ref.heldBy, ref.maxExp)
	}
}

func (m *treeModel) acquire(single bool) {
	req := AcquireRequest{
		AgentID: rapid.SampledFrom(m.agents).Draw(m.t, "agent"), SessionID: rapid.SampledFrom(m.sessions).Draw(m.t, "session"),
		TTL: int64(rapid.IntRange(1, 100).Draw(m.t, "ttl")),
	}
	n := 1
	if !single {
		n = rapid.IntRange(1, 3).Draw(m.t, "n")
	}
	for ; n > 0; n-- {
		req.Intents = append(req.Intents, m.intent())
	}
	if rapid.Bool().Draw(m.t, "wait") {
		req.WaitTimeout = int64(rapid.IntRange(1, 100).Draw(m.t, "wait_timeout"))
	}
	ts := m.targets(req.Intents)
	a := m.e.agents[req.AgentID]
	var ref refVerdict
	decided := a != nil && !a.unregistered && checkOverlap(ts) == nil
	if decided {
		ref = refDecide(m.e, m.now, a, req.SessionID, a.priority, ts, nil)
	}
	var r Result
	var err error
	if single {
		r, err = m.e.Acquire(m.now, m.caller(), req)
	} else {
		r, err = m.e.AcquireMany(m.now, m.caller(), req)
	}
	what := fmt.Sprintf("acquire %+v at %d", req, m.now)
	if !decided {
		require.Error(m.t, err, what)
		if checkOverlap(ts) != nil { // checked before the agent is looked up
			require.Equal(m.t, protocol.CodeInvalidArgument, codeOf(err))
			require.Contains(m.t, err.Error(), "overlap with conflicting predicates")
		} else {
			require.Equal(m.t, protocol.CodeUnknownAgent, codeOf(err))
		}
		return
	}
	require.NoError(m.t, err, what)
	if r.Granted {
		require.Equalf(m.t, protocol.Reason(""), ref.reason, "%s: granted; reference %+v", what, ref)
		for _, l := range r.Leases {
			m.leaseIDs = append(m.leaseIDs, l.ID)
		}
		return
	}
	require.Equalf(m.t, ref.reason, r.Denial.Reason, "%s: %s", what, r.Denial.Message)
	require.Equalf(m.t, ref.heldBy, r.Denial.HeldBy, "%s: held_by (%s)", what, r.Denial.Message)
	require.Equalf(m.t, refWaitTime(m.now, ref.maxExp), r.Denial.WaitTime, "%s: wait_time", what)
	require.Equal(m.t, ref.reason == protocol.ReasonWait && req.WaitTimeout > 0, r.Queued, what)
	if r.Queued {
		m.waiters = append(m.waiters, r.Waiter)
	}
}

// probe compares a dry-run decision for a random request with the
// reference.
func (m *treeModel) probe() {
	a := m.e.agents[rapid.SampledFrom(m.agents).Draw(m.t, "probe agent")]
	if a == nil {
		return
	}
	session := rapid.SampledFrom(m.sessions).Draw(m.t, "probe session")
	ts := m.targets([]Intent{m.intent()})
	v := m.e.decide(m.now, a, session, a.priority, ts, nil)
	m.requireVerdict(func() string {
		return fmt.Sprintf("probe %s/%s %s %s at %d", a.id, session, ts[0].pred, ts[0].key, m.now)
	},
		refDecide(m.e, m.now, a, session, a.priority, ts, nil), &v)
}

func (m *treeModel) step() {
	m.now += int64(rapid.IntRange(0, 40).Draw(m.t, "dt"))
	if at, ok := m.e.NextDeadline(); ok && m.prompt && at <= m.now {
		_, ws := m.e.Expire(m.now)
		m.wake(ws)
		m.check()
	}
	switch rapid.IntRange(0, 13).Draw(m.t, "op") {
	case 0, 1, 2, 3:
		m.acquire(true)
	case 4:
		m.acquire(false)
	case 5, 6:
		if len(m.leaseIDs) > 0 {
			_, ws, err := m.e.Release(m.now, m.caller(), rapid.SampledFrom(m.leaseIDs).Draw(m.t, "lease"))
			require.NoError(m.t, err)
			m.wake(ws)
		}
	case 7:
		if len(m.leaseIDs) > 0 {
			_, err := m.e.Heartbeat(m.now, m.caller(), rapid.SampledFrom(m.leaseIDs).Draw(m.t, "lease"), int64(rapid.IntRange(0, 100).Draw(m.t, "ttl")))
			if err != nil {
				require.Equal(m.t, protocol.CodeNotFound, codeOf(err))
			}
		}
	case 8:
		if len(m.leaseIDs) > 0 {
			_, ws, err := m.e.Revoke(m.now, m.caller(), rapid.SampledFrom(m.leaseIDs).Draw(m.t, "lease"))
			require.NoError(m.t, err)
			m.wake(ws)
		}
	case 9:
		_, ws, err := m.e.EndSession(m.now, m.caller(), rapid.SampledFrom(m.agents).Draw(m.t, "agent"), rapid.SampledFrom(m.sessions).Draw(m.t, "session"))
		if err != nil {
			require.Equal(m.t, protocol.CodeUnknownAgent, codeOf(err))
		}
		m.wake(ws)
	case 10:
		k := rapid.SampledFrom(m.keys).Draw(m.t, "key")
		if rapid.IntRange(0, 2).Draw(m.t, "freeze") == 0 {
			_, ws, err := m.e.Freeze(m.now, m.caller(), k[0], k[1])
			require.NoError(m.t, err)
			m.wake(ws)
		} else {
			_, err := m.e.Thaw(m.now, m.caller(), k[0], k[1])
			require.NoError(m.t, err)
		}
	case 11:
		if len(m.waiters) > 0 {
			m.wake(m.e.Cancel(m.now, rapid.SampledFrom(m.waiters).Draw(m.t, "waiter")))
		}
	case 12:
		_, ws := m.e.Expire(m.now)
		m.wake(ws)
	case 13:
		id := rapid.SampledFrom(m.agents).Draw(m.t, "agent")
		var err error
		switch rapid.IntRange(0, 3).Draw(m.t, "reg") {
		case 0, 1:
			_, err = m.e.Register(m.now, m.caller(), id, int64(rapid.IntRange(1, 5).Draw(m.t, "prio")), true)
		case 2:
			_, err = m.e.Register(m.now, m.caller(), id, 0, false)
		case 3:
			_, err = m.e.Unregister(m.now, m.caller(), id)
		}
		if err != nil {
			require.Equal(m.t, protocol.CodePriorityConflict, codeOf(err))
		}
	}
	for i := rapid.IntRange(0, 2).Draw(m.t, "probes"); i > 0; i-- {
		m.probe()
	}
	m.recs = append(m.recs, m.e.Records()...)
	m.check()
}

// check verifies what holds after every call.
func (m *treeModel) check() {
	e, now := m.e, m.now
	// Safety: no two active leases that conflict and overlap, unless one
	// agent session holds both.
	var active []*lease
	e.leases.each(func(l *lease) {
		if l.ExpiresAt > now {
			active = append(active, l)
		}
	})
	for i, x := range active {
		for _, y := range active[i+1:] {
			if Conflicts(x.pred(), y.pred()) && protocol.Overlaps(x.resource(), y.resource()) &&
				(x.agent() != y.agent() || x.sessionID() != y.sessionID()) {
				m.t.Fatalf("unsafe: %s %s (%s/%s) and %s %s (%s/%s) both active", x.pred(), x.resource(), x.agentID(), x.sessionID(),
					y.pred(), y.resource(), y.agentID(), y.sessionID())
			}
		}
	}
	// Parked requests: once the daemon's timer has done what is due, every
	// one still parked is one the rules say must wait.
	if at, ok := e.NextDeadline(); m.prompt && (!ok || at > now) {
		for _, w := range e.waiters {
			if ref := refDecide(e, now, w.agent, w.session, w.priority, w.targets, w); ref.reason != protocol.ReasonWait {
				m.t.Fatalf("waiter %d of %s (priority %d) on %v is still parked; the reference says %+v",
					w.id, w.agent.id, w.priority, targetKeys(w.targets), ref)
			}
		}
	}
	checkIndex(m.t, e)
}

func targetKeys(ts []target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.pred.String() + " " + t.key
	}
	return out
}

// checkIndex checks the trie and the summaries against the leases and
// queued requests they sum up.
func checkIndex(t interface{ Fatalf(string, ...any) }, e *Engine) {
	kids := make(map[*resource]int32)
	for r := range e.resources.all() {
		key := r.key
		if key != r.key {
			t.Fatalf("resource %s filed under %s", r.key, key)
		}
		pk, ok := parentKey(key)
		switch {
		case ok && (r.parent == nil || e.resources.get(pk) != r.parent):
			t.Fatalf("the parent of %s is not the resource of %s", key, pk)
		case !ok && r.parent != nil:
			t.Fatalf("root %s has parent %s", key, r.parent.key)
		case ok:
			kids[r.parent]++
		}
	}
	type sumKey struct {
		node    *resource
		agent   *agent
		session string
		class   class
	}
	latest := make(map[sumKey]int64)
	e.leases.each(func(l *lease) {
		for n := l.res.parent; n != nil; n = n.parent {
			k := sumKey{n, l.agent(), l.sessionID(), classOf(l.pred())}
			if v, ok := latest[k]; !ok || l.ExpiresAt > v {
				latest[k] = l.ExpiresAt
			}
		}
	})
	type qKey struct {
		node  *resource
		agent *agent
		class class
	}
	queued := make(map[qKey]int32)
	for _, w := range e.waiters {
		for i, r := range w.res {
			for n := r.parent; n != nil; n = n.parent {
				queued[qKey{n, w.agent, classOf(w.targets[i].pred)}]++
			}
		}
	}
	nHeld, nQueued := 0, 0
	for r := range e.resources.all() {
		if kids[r] != r.kids {
			t.Fatalf("%s counts %d kids, has %d", r.key, r.kids, kids[r])
		}
		if r.below() == nil {
			continue
		}
		if r.below().empty() {
			t.Fatalf("empty summary kept at %s", r.key)
		}
		nSoft := 0
		for c := range numClasses {
			list, heap := r.below().held[c], r.below().latest[c]
			if !slices.IsSortedFunc(list, func(x, y *heldBy) int { return heldOrder(x, y.prio, y.agent, y.session) }) || len(heap) != len(list) {
				t.Fatalf("summary of %s class %d: unsorted, or %d entries against %d in the heap", r.key, c, len(list), len(heap))
			}
			if i := brokenAt(heap, func(b byLatest) int32 { return b.expIdx }); i >= 0 {
				t.Fatalf("latest heap of %s class %d broken at %d", r.key, c, i)
			}
			for _, h := range list {
				if (r.parent == nil) != (h.up == nil) || h.up != nil && h.up.kids[h.upIdx] != h {
					t.Fatalf("entry %s/%s class %d below %s is not in its parent's kids", h.agent.id, h.session, c, r.key)
				}
				if i := brokenAt(h.kids, func(k *heldBy) int32 { return k.upIdx }); i >= 0 {
					t.Fatalf("kids heap of %s/%s class %d below %s broken at %d", h.agent.id, h.session, c, r.key, i)
				}
				if i := brokenAt(h.leases, func(l *lease) int32 { return l.upIdx }); i >= 0 {
					t.Fatalf("lease heap of %s/%s class %d below %s broken at %d", h.agent.id, h.session, c, r.key, i)
				}
				if h.soft() {
					if !r.below().isSoft(h) || h.exp != math.MinInt64 || len(h.leases) > 0 {
						t.Fatalf("entry %s/%s class %d below %s holds nothing but is not a soft entry (exp %d, leases %d, kids %d, listed %v, idx %d of %d)", h.agent.id, h.session, c, r.key, h.exp, len(h.leases), len(h.kids), r.below().isSoft(h), h.softIdx, len(r.below().soft))
					}
					nSoft++
					continue
				}
				if h.prio != h.agent.priority || r.below().isSoft(h) {
					t.Fatalf("entry %s/%s class %d below %s: filed at priority %d (agent's %d), soft %v, up %v",
						h.agent.id, h.session, c, r.key, h.prio, h.agent.priority, r.below().isSoft(h), h.up != nil)
				}
				want, ok := latest[sumKey{r, h.agent, h.session, c}]
				if !ok || h.latest() != want || h.exp != want || h.node != r {
					t.Fatalf("entry %s/%s class %d below %s: latest %d (filed %d), want %d (%v)", h.agent.id, h.session, c, r.key,
						h.latest(), h.exp, want, ok)
				}
				nHeld++
			}
			if !slices.IsSortedFunc(r.below().queued[c], func(x, y queuedBy) int { return agentOrder(x.agent, y.agent) }) {
				t.Fatalf("queued summary of %s class %d unsorted", r.key, c)
			}
			for _, q := range r.below().queued[c] {
				if want := queued[qKey{r, q.agent, c}]; q.n != want {
					t.Fatalf("%s has %d requests queued below %s in class %d; the summary says %d", q.agent.id, want, r.key, c, q.n)
				}
				nQueued++
			}
		}
		if s := r.below(); nSoft != len(s.soft) || nSoft > s.maxSoft() {
			t.Fatalf("summary of %s has %d soft entries, lists %d, allows %d", r.key, nSoft, len(s.soft), s.maxSoft())
		}
	}
	if len(latest) != nHeld || len(queued) != nQueued {
		t.Fatalf("summaries have %d held and %d queued entries; want %d and %d", nHeld, nQueued, len(latest), len(queued))
	}
}

// subtreeRunsCalls is how many times TestSubtreeProperties runs rapid's
// default number of checks (100, or 20 with -short): 20,000 histories in
// a plain go test run. Under the race detector, subtreeRunsCalls is 10
// (race_test.go): the same code runs ten times slower there.
var subtreeRunsCalls = 200

func TestSubtreeProperties(t *testing.T) {
	for i := 0; i < subtreeRunsCalls; i++ {
		rapid.Check(t, checkSubtreeHistory)
	}
}

// newTreeModel starts a history: an engine with cfg, its keys, and two to
// five registered agents.
func newTreeModel(t *rapid.T, cfg Config) *treeModel {
	m := &treeModel{
		t:        t,
		e:        New(cfg),
		now:      t0,
		prompt:   rapid.Bool().Draw(t, "prompt"),
		sessions: []string{"s1", "s2"},
		keys:     drawKeys(t),
	}
	for i, n := 0, rapid.IntRange(2, 5).Draw(t, "agents"); i < n; i++ {
		id := fmt.Sprintf("agent%d", i)
		m.agents = append(m.agents, id)
		// Small priorities: equal ones happen.
		_, err := m.e.Register(m.now, m.caller(), id, int64(rapid.IntRange(1, 5).Draw(t, "prio")), true)
		require.NoError(t, err)
	}
	return m
}

func checkSubtreeHistory(t *rapid.T) {
	m := newTreeModel(t, Config{Journal: true, MaxTTL: 1000})
	m.e.settled = func(now int64, w *waiter, v *verdict) {
		m.requireVerdict(func() string {
			return fmt.Sprintf("settle waiter %d of %s on %v at %d", w.id, w.agent.id, targetKeys(w.targets), now)
		}, refDecide(m.e, now, w.agent, w.session, w.priority, w.targets, w), v)
	}
	for i, n := 0, rapid.IntRange(1, 100).Draw(t, "steps"); i < n; i++ {
		m.step()
	}
	m.recs = append(m.recs, m.e.Records()...)
	f := New(Config{})
	for i, r := range m.recs {
		require.NoErrorf(t, f.Apply(r), "record %d %+v", i, r)
	}
	require.Equal(t, m.e.Snapshot(), f.Snapshot())
	checkIndex(t, f)
	g := New(Config{})
	require.NoError(t, g.Restore(m.e.Snapshot()))
	checkIndex(t, g)
	// The restored engine (without the queued requests, which are not
	// durable) decides by the rules too.
	m.e = g
	for i := 0; i < 5; i++ {
		m.probe()
	}
}

// TestClassesReadTheMatrix checks that the predicate classes the summaries
// use answer Conflicts exactly.
func TestClassesReadTheMatrix(t *testing.T) {
	for p := Provides; p <= Renames; p++ {
		for q := Provides; q <= Renames; q++ {
			require.Equalf(t, Conflicts(p, q), conflictsClass(p, classOf(q)), "%s against %s", p, q)
		}
	}
	require.Equal(t, math.MinInt64, int((&heldBy{}).latest()))
}

// brokenAt returns the first index of q whose item does not know its
// index (idx) or expires after its parent, or -1.
func brokenAt[T heapItem](q expHeap[T], idx func(T) int32) int {
	for i, it := range q {
		if int(idx(it)) != i || i > 0 && it.heapExp() > q[(i-1)/2].heapExp() {
			return i
		}
	}
	return -1
}
