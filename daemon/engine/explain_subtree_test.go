package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/klockd/klock/protocol"
)

// explainProbe explains a random request on the history's keys and checks
// its holders and queue against a scan of every lease and queued request
// (overlap by protocol.Overlaps, knowing nothing of the trie): every
// active lease on an overlapping key, above or below, by fence, marked
// conflicting unless the matrix allows it or it is the requester's own
// session; every queued request on an overlapping key, by priority then
// arrival then key, marked conflicting unless the matrix allows it or it
// is the requester's agent's.
func (m *treeModel) explainProbe() {
	req := ExplainRequest{SessionID: rapid.SampledFrom(m.sessions).Draw(m.t, "x session")}
	if rapid.IntRange(0, 4).Draw(m.t, "x new agent?") > 0 {
		req.AgentID = rapid.SampledFrom(m.agents).Draw(m.t, "x agent")
	}
	in := m.intent()
	req.ResourceType, req.ResourcePath, req.Predicate = in.ResourceType, in.ResourcePath, in.Predicate
	x, err := m.e.Explain(m.now, req)
	if a := m.e.agents[req.AgentID]; req.AgentID != "" && (a == nil || a.unregistered) {
		require.Equal(m.t, protocol.CodeUnknownAgent, codeOf(err))
		return
	}
	require.NoError(m.t, err)
	key, pred := x.Resource, x.Predicate
	a := m.e.agents[req.AgentID] // nil for a new agent

	var want []string
	var active []*lease
	m.e.leases.each(func(l *lease) {
		if l.ExpiresAt > m.now && protocol.Overlaps(l.resource(), key) {
			active = append(active, l)
		}
	})
	slices.SortFunc(active, func(p, q *lease) int { return cmp.Compare(p.Fence, q.Fence) })
	for _, l := range active {
		own := a != nil && l.agent() == a && l.sessionID() == req.SessionID
		want = append(want, fmt.Sprintf("%s %s %s/%s conflicts=%v", l.id(), l.resource(), l.agentID(), l.sessionID(), !own && Conflicts(l.pred(), pred)))
	}
	var got []string
	for _, h := range x.Holders {
		got = append(got, fmt.Sprintf("%s %s %s/%s conflicts=%v", h.ID, h.Resource, h.AgentID, h.SessionID, h.Conflicts))
	}
	if !slices.Equal(want, got) {
		m.t.Fatalf("explain %s %s for %q/%s: holders\n%s\nthe scan finds\n%s", pred, key, req.AgentID, req.SessionID,
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	type entry struct {
		w   *waiter
		key string
		p   Predicate
	}
	var queued []entry
	for _, w := range m.e.waiters {
		for _, u := range w.targets {
			if protocol.Overlaps(u.key, key) {
				queued = append(queued, entry{w, u.key, u.pred})
			}
		}
	}
	slices.SortFunc(queued, func(p, q entry) int {
		return cmp.Or(cmp.Compare(p.w.priority, q.w.priority), cmp.Compare(p.w.id, q.w.id), strings.Compare(p.key, q.key), cmp.Compare(p.p, q.p))
	})
	want, got = nil, nil
	for _, q := range queued {
		want = append(want, fmt.Sprintf("%s/%s %s %s conflicts=%v", q.w.agent.id, q.w.session, q.p, q.key, q.w.agent != a && Conflicts(q.p, pred)))
	}
	for _, w := range x.Queue {
		got = append(got, fmt.Sprintf("%s/%s %s %s conflicts=%v", w.AgentID, w.SessionID, w.Predicate, w.Resource, w.Conflicts))
	}
	if !slices.Equal(want, got) {
		m.t.Fatalf("explain %s %s for %q/%s: queue\n%s\nthe scan finds\n%s", pred, key, req.AgentID, req.SessionID,
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestExplainListsOverlapping: on random histories of plain and subtree
// keys, explain lists every holder and queued request of every key
// overlapping the one explained, above and below, marking those that
// conflict (explainProbe).
func TestExplainListsOverlapping(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := newTreeModel(t, Config{MaxTTL: 1000})
		for i, n := 0, rapid.IntRange(1, 80).Draw(t, "steps"); i < n; i++ {
			m.step()
			for j := rapid.IntRange(0, 3).Draw(t, "explains"); j > 0; j-- {
				m.explainProbe()
			}
		}
	})
}

// TestSubtreeExplainQueue: explain on a key lists the requests queued on
// keys above it and below it, and marks which conflict: not the
// requester's own agent's, nor those the matrix lets coexist.
func TestSubtreeExplainQueue(t *testing.T) {
	e := New(Config{})
	for id, prio := range map[string]int64{"a3": 1, "a1": 2, "a2": 3, "young": 9} {
		mustRegister(t, e, id, prio)
	}
	mustGrant(t, e, t0, "young", "y", "/src/x/deep.ts", "MUTATES")
	mustGrant(t, e, t0, "young", "y", "/other.ts", "MUTATES")
	park := func(agent, path, pred string) {
		t.Helper()
		r, err := e.Acquire(t0, alice, AcquireRequest{AgentID: agent, SessionID: "s", TTL: 1000, WaitTimeout: 1000,
			Intents: []Intent{{ResourceType: "FILE", ResourcePath: path, Predicate: pred}}})
		require.NoError(t, err)
		require.True(t, r.Queued, "%s on %s: %+v", agent, path, r.Denial)
	}
	// Youngest first: a queued senior would make a junior DIE.
	park("a2", "/", "MUTATES")               // above /src/
	park("a1", "/src/x/deep.ts", "CONSUMES") // below
	park("a3", "/src/x/", "CONSUMES")        // below, a subtree key
	park("a1", "/other.ts", "MUTATES")       // elsewhere: not listed

	x, err := e.Explain(t0, ExplainRequest{AgentID: "a3", SessionID: "t", ResourceType: "FILE", ResourcePath: "/src/", Predicate: "MUTATES"})
	require.NoError(t, err)
	var got []string
	for _, w := range x.Queue {
		got = append(got, fmt.Sprintf("%s %s %s %v", w.AgentID, w.Predicate, w.Resource, w.Conflicts))
	}
	require.Equal(t, []string{
		"a3 CONSUMES FILE:/src/x/ false", // the requester's own agent never conflicts
		"a1 CONSUMES FILE:/src/x/deep.ts true",
		"a2 MUTATES FILE:/ true",
	}, got, "by priority")
	// a3 and a1 wait for the holder below; a2, decided again now, would
	// DIE for a3, older and queued after it: its verdict is about to change.
	require.Equal(t, []string{"young", "young", ""}, []string{x.Queue[0].WaitsFor, x.Queue[1].WaitsFor, x.Queue[2].WaitsFor})
	require.Len(t, x.Holders, 1)
	require.Equal(t, "FILE:/src/x/deep.ts", x.Holders[0].Resource)
	require.True(t, x.Holders[0].Conflicts)

	// A reader explained on the file itself: the queued readers coexist
	// with it, the queued writer above does not.
	x, err = e.Explain(t0, ExplainRequest{ResourceType: "FILE", ResourcePath: "/src/x/deep.ts", Predicate: "CONSUMES"})
	require.NoError(t, err)
	got = got[:0]
	for _, w := range x.Queue {
		got = append(got, fmt.Sprintf("%s %s %s %v", w.AgentID, w.Predicate, w.Resource, w.Conflicts))
	}
	require.Equal(t, []string{
		"a3 CONSUMES FILE:/src/x/ false",
		"a1 CONSUMES FILE:/src/x/deep.ts false",
		"a2 MUTATES FILE:/ true",
	}, got)
}
