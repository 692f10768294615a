package engine

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// model drives an engine with random operations at random times and checks
// the invariants of issue 2 after each step.
type model struct {
	t        *rapid.T
	e        *Engine
	now      int64
	prompt   bool // the daemon's timer fires on time (Expire before each op)
	agents   []string
	sessions []string
	paths    []string
	leaseIDs []string
	waiters  []WaiterID
	recs     []Record
	procs    []Process // processes requests may be bound to; one that ends is replaced
}

func (m *model) caller() Caller { return Caller{UID: 0} }

func (m *model) agent() string   { return rapid.SampledFrom(m.agents).Draw(m.t, "agent") }
func (m *model) session() string { return rapid.SampledFrom(m.sessions).Draw(m.t, "session") }
func (m *model) intent() Intent {
	return Intent{
		ResourceType: "FILE",
		ResourcePath: rapid.SampledFrom(m.paths).Draw(m.t, "path"),
		Predicate:    Predicate(rapid.IntRange(1, 6).Draw(m.t, "pred")).String(),
	}
}

func (m *model) wake(ws []Wakeup) {
	for _, w := range ws {
		require.False(m.t, w.Result.Queued)
		if w.Result.Granted {
			m.granted(w.Result.Leases)
		}
	}
}

func (m *model) granted(ls []Lease) {
	if slices.Contains(m.leaseIDs, ls[0].ID) {
		return // an idem key answered with leases granted before
	}
	for _, l := range ls {
		m.leaseIDs = append(m.leaseIDs, l.ID)
	}
	m.checkNotOvertaken(ls)
}

func (m *model) step() {
	m.now += int64(rapid.IntRange(0, 40).Draw(m.t, "dt"))
	if at, ok := m.e.NextDeadline(); ok && m.prompt && at <= m.now {
		_, ws := m.e.Expire(m.now)
		m.wake(ws)
		m.check()
	}
	if rapid.IntRange(0, 15).Draw(m.t, "process ends?") == 0 {
		i := rapid.IntRange(0, len(m.procs)-1).Draw(m.t, "process")
		_, ws := m.e.ProcessEnded(m.now, m.procs[i])
		m.wake(ws)
		require.False(m.t, m.e.ProcessBound(m.procs[i]))
		// Its pid is reused by a new process.
		m.procs[i].Start += 1000
	}
	switch rapid.IntRange(0, 13).Draw(m.t, "op") {
	case 0, 1, 2, 3:
		req := AcquireRequest{AgentID: m.agent(), SessionID: m.session(), TTL: int64(rapid.IntRange(1, 100).Draw(m.t, "ttl")),
			Intents: []Intent{m.intent()}}
		if rapid.Bool().Draw(m.t, "wait") {
			req.WaitTimeout = int64(rapid.IntRange(1, 100).Draw(m.t, "wait_timeout"))
		}
		if rapid.IntRange(0, 3).Draw(m.t, "idem?") == 0 {
			req.Idem = rapid.SampledFrom([]string{"k1", "k2"}).Draw(m.t, "idem")
		}
		m.acquire(req, true)
	case 4:
		req := AcquireRequest{AgentID: m.agent(), SessionID: m.session(), TTL: int64(rapid.IntRange(1, 100).Draw(m.t, "ttl"))}
		for n := rapid.IntRange(1, 3).Draw(m.t, "n"); n > 0; n-- {
			req.Intents = append(req.Intents, m.intent())
		}
		if rapid.Bool().Draw(m.t, "wait") {
			req.WaitTimeout = int64(rapid.IntRange(1, 100).Draw(m.t, "wait_timeout"))
		}
		if rapid.IntRange(0, 3).Draw(m.t, "idem?") == 0 {
			req.Idem = rapid.SampledFrom([]string{"k1", "k2"}).Draw(m.t, "idem")
		}
		m.acquire(req, false)
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
				require.Equal(m.t, "NOT_FOUND", string(codeOf(err)))
			}
		}
	case 8:
		if len(m.leaseIDs) > 0 {
			_, ws, err := m.e.Revoke(m.now, m.caller(), rapid.SampledFrom(m.leaseIDs).Draw(m.t, "lease"))
			require.NoError(m.t, err)
			m.wake(ws)
		}
	case 9:
		if rapid.IntRange(0, 3).Draw(m.t, "end?") == 0 {
			// In steps of 0 (all at once) to 2 leases, checking the
			// invariants between steps, as the daemon lets other calls in.
			agent, session, max := m.agent(), m.session(), rapid.IntRange(0, 2).Draw(m.t, "end step")
			for more := true; more; {
				var ws []Wakeup
				var err error
				_, ws, more, err = m.e.EndSessionStep(m.now, m.caller(), agent, session, max)
				if err != nil {
					require.Equal(m.t, "UNKNOWN_AGENT", string(codeOf(err)))
				}
				m.wake(ws)
				if more {
					m.check()
				}
			}
		}
	case 10:
		path := rapid.SampledFrom(m.paths).Draw(m.t, "path")
		if rapid.Bool().Draw(m.t, "freeze") {
			_, ws, err := m.e.Freeze(m.now, m.caller(), "FILE", path)
			require.NoError(m.t, err)
			m.wake(ws)
		} else {
			_, err := m.e.Thaw(m.now, m.caller(), "FILE", path)
			require.NoError(m.t, err)
		}
	case 11:
		if len(m.waiters) > 0 {
			m.wake(m.e.Cancel(m.now, rapid.SampledFrom(m.waiters).Draw(m.t, "waiter")))
		}
	case 12:
		max := rapid.IntRange(0, 2).Draw(m.t, "expire step")
		for more := true; more; {
			var ws []Wakeup
			_, ws, more = m.e.ExpireStep(m.now, max)
			m.wake(ws)
		}
	case 13:
		var err error
		switch rapid.IntRange(0, 3).Draw(m.t, "reg") {
		case 0, 1:
			_, err = m.e.Register(m.now, m.caller(), m.agent(), int64(rapid.IntRange(1, 5).Draw(m.t, "prio")), true)
		case 2:
			_, err = m.e.Register(m.now, m.caller(), m.agent(), 0, false)
		case 3:
			_, err = m.e.Unregister(m.now, m.caller(), m.agent())
		}
		if err != nil {
			require.Equal(m.t, "PRIORITY_CONFLICT", string(codeOf(err)))
		}
	}
	m.recs = append(m.recs, m.e.Records()...)
	m.check()
}

func (m *model) acquire(req AcquireRequest, single bool) {
	if rapid.IntRange(0, 2).Draw(m.t, "bind?") == 0 {
		p := rapid.SampledFrom(m.procs).Draw(m.t, "bind")
		req.Bind = &p
		if rapid.Bool().Draw(m.t, "no ttl") {
			req.TTL = 0
		}
	}
	var r Result
	var err error
	if single {
		r, err = m.e.Acquire(m.now, m.caller(), req)
	} else {
		r, err = m.e.AcquireMany(m.now, m.caller(), req)
	}
	if err != nil {
		// Only an unregistered agent, an acquire_many whose intents
		// conflict with each other (one resource twice with conflicting
		// predicates), or an idem key reused for a different request, is
		// refused.
		if codeOf(err) == "UNKNOWN_AGENT" {
			return
		}
		require.Equal(m.t, "INVALID_ARGUMENT", string(codeOf(err)), err.Error())
		if !selfConflicting(req.Intents) {
			require.NotEmpty(m.t, req.Idem)
		}
		return
	}
	require.False(m.t, selfConflicting(req.Intents), "intents %v conflict with each other", req.Intents)
	switch {
	case r.Granted:
		require.Len(m.t, r.Leases, len(req.Intents))
		m.granted(r.Leases)
	case r.Queued:
		m.waiters = append(m.waiters, r.Waiter)
	}
}

// check verifies the invariants that hold after every call.
func (m *model) check() {
	e, now := m.e, m.now
	// (a) safety: no two active conflicting leases on one key from
	// different (agent, session).
	for r := range e.resources.all() {
		key := r.key
		for i, x := range r.holders() {
			require.Equal(m.t, key, x.resource())
			require.NotContains(m.t, r.holders()[i+1:], x, "%s: a lease listed twice in its resource's leases", key)
			for _, y := range r.holders()[i+1:] {
				if x.ExpiresAt <= now || y.ExpiresAt <= now || !Conflicts(x.pred(), y.pred()) {
					continue
				}
				if x.agentID() != y.agentID() || x.sessionID() != y.sessionID() {
					m.t.Fatalf("unsafe: %s holds %s (%s/%s) and %s (%s/%s)", key,
						x.pred(), x.agentID(), x.sessionID(), y.pred(), y.agentID(), y.sessionID())
				}
			}
		}
	}
	// (b) every queued WAIT points from a lower priority value to higher
	// ones only — when the daemon's timer is prompt (nothing due now).
	if at, ok := e.NextDeadline(); m.prompt && (!ok || at > now) {
		for _, w := range e.waiters {
			for i, t := range w.targets {
				for _, l := range w.res[i].holders() {
					if l.ExpiresAt <= now || !Conflicts(l.pred(), t.pred) ||
						(l.agent() == w.agent && l.sessionID() == w.session) {
						continue
					}
					if l.agent() == w.agent || l.agent().priority <= w.priority {
						m.t.Fatalf("waiter %s (priority %d) waits for %s (priority %d) on %s",
							w.agent.id, w.priority, l.agentID(), l.agent().priority, t.key)
					}
				}
			}
		}
	}
	// (c) the count equals the length of the list.
	ls, trunc, err := e.ListLeases(now, LeaseFilter{Limit: MaxLimit})
	require.NoError(m.t, err)
	require.False(m.t, trunc)
	require.Equal(m.t, len(ls), e.ActiveLeaseCount(now))
	// Indexes agree.
	n, filed := 0, 0
	for _, a := range e.agents {
		n += a.nLeases
		for key, en := range a.idem {
			require.Equal(m.t, key, en.key)
			require.Positive(m.t, en.n, "idem %q has no leases", key)
			k, fence := 0, uint64(0)
			for l := range en.all() {
				require.Same(m.t, en, l.idem, "idem %q lists a lease filed elsewhere", key)
				require.Same(m.t, en.first.sess(), l.sess())
				require.Greater(m.t, l.Fence, fence)
				k, fence = k+1, l.Fence
			}
			require.Equal(m.t, en.n, k)
			filed += k
		}
		require.Len(m.t, a.ended.set, len(a.ended.order))
		require.LessOrEqual(m.t, len(a.ended.order), maxEndedSessions)
		a.ended.each(func(s string) { require.True(m.t, a.ended.has(s)) })
	}
	require.Equal(m.t, e.leases.len(), n)
	withTTL, bound, withIdem := 0, 0, 0
	e.leases.each(func(l *lease) {
		if l.idem != nil {
			withIdem++
		}
		if l.ExpiresAt != Never {
			withTTL++
		}
		if b := l.Bound(); b != nil {
			bound++
			bp := e.procs[*b]
			require.NotNil(m.t, bp, "lease bound to %+v, which is not in the table", *b)
			require.Same(m.t, l, bp.leases[l.procIdx()])
			require.Equal(m.t, bp.proc, *b)
		}
		// What shares a word with procIdx, and the session in the owner.
		require.True(m.t, l.pred() >= Provides && l.pred() <= Renames, "lease %s has predicate %d", l.id(), l.pred())
		_, hasPath := e.clientPaths[l]
		require.Equal(m.t, hasPath, l.hasPath(), "lease %s: hasPath", l.id())
		require.Same(m.t, l.sess(), l.agent().sessions[l.sessionID()])
		require.Same(m.t, l, l.sess().ls[l.sessIdx])
	})
	require.Equal(m.t, withTTL, len(e.leaseDeadlines))
	require.Equal(m.t, withIdem, filed, "leases filed under an idem key that is not their agent's")
	boundWaiters := 0
	for _, w := range e.waiters {
		if w.bind != nil {
			boundWaiters++
			require.Contains(m.t, e.procs[*w.bind].waiters, w)
		}
	}
	for p, bp := range e.procs {
		require.Equal(m.t, p, bp.proc)
		if bp == e.spareProc {
			require.Zero(m.t, len(bp.leases)+len(bp.waiters), "the spare process entry has something bound")
		} else {
			require.NotZero(m.t, len(bp.leases)+len(bp.waiters), "process %+v kept with nothing bound", p)
		}
		bound -= len(bp.leases)
		boundWaiters -= len(bp.waiters)
	}
	require.Zero(m.t, bound, "bound leases and the process table disagree")
	require.Zero(m.t, boundWaiters, "bound waiters and the process table disagree")
	require.Equal(m.t, len(e.waiters), len(e.waiterDeadlines))
	checkOrders(m.t, e)
}

// checkNotOvertaken is (e): no request still queued on a granted key, of
// another agent, conflicting and at least as senior as the grantee.
func (m *model) checkNotOvertaken(ls []Lease) {
	for _, l := range ls {
		r := m.e.resources.get(l.Resource)
		if r == nil {
			continue
		}
		p := m.e.agents[l.AgentID].priority
		for _, q := range r.queue() {
			if q.w.agent.id != l.AgentID && Conflicts(q.pred, l.Predicate) && q.w.priority <= p {
				m.t.Fatalf("%s (priority %d) granted %s on %s past queued %s (priority %d)",
					l.AgentID, p, l.Predicate, l.Resource, q.w.agent.id, q.w.priority)
			}
		}
	}
}

// newModel returns a model over a fresh engine with 2..5 registered
// agents, 2 sessions and 3 paths.
func newModel(t *rapid.T) *model {
	m := &model{
		t:        t,
		e:        New(Config{Journal: true, MaxTTL: 1000}),
		now:      t0,
		prompt:   rapid.Bool().Draw(t, "prompt"),
		sessions: []string{"s1", "s2"},
		paths:    []string{"/a", "/b", "/c"},
		procs:    []Process{{PID: 10, Boot: 1, Start: 1}, {PID: 11, Boot: 1, Start: 2}},
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

func TestProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := newModel(t)
		for i, n := 0, rapid.IntRange(1, 150).Draw(t, "steps"); i < n; i++ {
			m.step()
		}
		m.recs = append(m.recs, m.e.Records()...)
		// (d) replaying the records on a fresh engine gives the same state,
		// and so does restoring a snapshot.
		f := New(Config{})
		for i, r := range m.recs {
			require.NoErrorf(t, f.Apply(r), "record %d %+v", i, r)
		}
		require.Equal(t, m.e.Snapshot(), f.Snapshot())
		g := New(Config{})
		require.NoError(t, g.Restore(m.e.Snapshot()))
		require.Equal(t, m.e.Snapshot(), g.Snapshot())
		require.Equal(t, m.e.ActiveLeaseCount(m.now), g.ActiveLeaseCount(m.now))
	})
}

// selfConflicting reports whether two intents name one resource with
// conflicting predicates (the paths here are plain and already clean).
func selfConflicting(in []Intent) bool {
	for i := range in {
		for j := i + 1; j < len(in); j++ {
			p, _ := ParsePredicate(in[i].Predicate)
			q, _ := ParsePredicate(in[j].Predicate)
			if in[i].ResourceType == in[j].ResourceType && in[i].ResourcePath == in[j].ResourcePath && Conflicts(p, q) {
				return true
			}
		}
	}
	return false
}
