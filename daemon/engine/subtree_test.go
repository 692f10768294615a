package engine

import (
	"fmt"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
)

// The examples of issue 14, one by one; subtree_property_test.go checks
// random histories against a brute-force reference.

// oldYoung registers old (100) and young (300).
func oldYoung(t *testing.T) *Engine {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "young", 300)
	return e
}

func TestSubtreeCovers(t *testing.T) {
	tests := []struct {
		held, asked string
		overlap     bool
	}{
		{"/src/", "/src/", true},
		{"/src/", "/src/a.ts", true},
		{"/src/", "/src/x/y.ts", true},
		{"/src/", "/src/x/", true},
		{"/src/", "/srcfoo.ts", false},
		{"/src/", "/src", false}, // a plain key
		{"/src", "/src/a.ts", false},
		{"/src/a.ts", "/src/", true}, // from below
		{"/src/x/y.ts", "/src/", true},
		{"/src/x/y.ts", "/", true}, // the whole tree
		{"/", "/anything", true},
		{"/src/x/", "/src/y/", false},
		{"/src/x/", "/src/", true},
	}
	for _, tt := range tests {
		t.Run(tt.held+" "+tt.asked, func(t *testing.T) {
			e := oldYoung(t)
			mustGrant(t, e, t0, "old", "o", tt.held, "MUTATES")
			r := mustAcquire(t, e, t0, "young", "y", tt.asked, "MUTATES")
			require.Equalf(t, !tt.overlap, r.Granted, "young asks %s while old holds %s: %+v", tt.asked, tt.held, r.Denial)
			if tt.overlap {
				require.Equal(t, protocol.ReasonDie, r.Denial.Reason)
				require.Equal(t, "old", r.Denial.HeldBy)
			}
		})
	}
}

func TestSubtreeDieAndWait(t *testing.T) {
	e := oldYoung(t)
	old := mustGrant(t, e, t0, "old", "o", "/src/auth/login.ts", "MUTATES")
	// A younger agent's subtree request is refused by an older holder of
	// a file under it.
	d := mustDeny(t, e, t0+10, "young", "y", "/src/", "MUTATES", protocol.ReasonDie)
	require.Equal(t, "old", d.HeldBy)
	require.Equal(t, int64(maxWaitTime), d.WaitTime) // a minute left, capped
	require.Equal(t, "FILE:/src/auth/login.ts (under FILE:/src/) is held by old (MUTATES, priority 100); "+
		"young (priority 300) is younger and must die and retry", d.Message)
	_, err := e.Heartbeat(t0, alice, old.ID, 500)
	require.NoError(t, err)
	d = mustDeny(t, e, t0+10, "young", "y", "/src/", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, int64(490), d.WaitTime, "wait_time follows the conflicting lease below")
	_, _, err = e.Release(t0, alice, old.ID)
	require.NoError(t, err)

	// An older agent's subtree request parks behind a younger holder of a
	// file under it, and is granted when that lease ends.
	young := mustGrant(t, e, t0, "young", "y", "/src/a.ts", "MUTATES")
	w := mustQueue(t, e, t0, waitReq("old", "o", "/src/", "MUTATES", 60_000, 5_000))
	r := mustAcquire(t, e, t0, "old", "o2", "/", "MUTATES") // the whole tree: WAIT too
	require.Equal(t, protocol.ReasonWait, r.Denial.Reason)
	require.Equal(t, "young", r.Denial.HeldBy)
	require.Equal(t, "FILE:/src/a.ts (under FILE:/) is held by young (MUTATES, priority 300); old (priority 100) is older and may wait",
		r.Denial.Message)
	ok, wake, err := e.Release(t0+20, alice, young.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.True(t, wake[0].Result.Granted)
	require.Equal(t, "FILE:/src/", wake[0].Result.Leases[0].Resource)
	// Now the subtree lease covers the files under it.
	d = mustDeny(t, e, t0+20, "young", "y", "/src/b/c.ts", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, "FILE:/src/ (which covers FILE:/src/b/c.ts) is held by old (MUTATES, priority 100); "+
		"young (priority 300) is younger and must die and retry", d.Message)
	mustGrant(t, e, t0+20, "young", "y", "/srcfoo.ts", "MUTATES")
	mustGrant(t, e, t0+20, "young", "y", "/src", "MUTATES")
	replayEqual(t, e, e.Records())
}

// TestSubtreeWaiterBehindMany: a subtree waiter behind many leases under
// it is granted when the last of them ends, and not before.
func TestSubtreeWaiterBehindMany(t *testing.T) {
	e := oldYoung(t)
	var ids []string
	for i := 0; i < 50; i++ {
		ids = append(ids, mustGrant(t, e, t0, "young", "y", fmt.Sprintf("/src/d%d/f%d.ts", i%7, i), "MUTATES").ID)
	}
	w := mustQueue(t, e, t0, waitReq("old", "o", "/src/", "DELETES", 60_000, 5_000))
	for i, id := range ids {
		ok, wake, err := e.Release(t0+int64(i), alice, id)
		require.NoError(t, err)
		require.True(t, ok)
		if i < len(ids)-1 {
			require.Empty(t, wake, "granted after %d of %d releases", i+1, len(ids))
			continue
		}
		require.Len(t, wake, 1)
		require.Equal(t, w, wake[0].Waiter)
		require.True(t, wake[0].Result.Granted)
	}
	require.Zero(t, liveResources(e)-1, "only FILE:/src/ holds something")
	replayEqual(t, e, e.Records())
}

func TestSubtreeReentrancyAndConflict(t *testing.T) {
	e := oldYoung(t)
	mustGrant(t, e, t0, "young", "y", "/src/a.ts", "MUTATES")
	mustGrant(t, e, t0, "young", "y", "/src/", "MUTATES") // the same session: re-entrant
	mustGrant(t, e, t0, "young", "y", "/src/b/", "MUTATES")
	d := mustDeny(t, e, t0, "young", "other", "/src/b/c", "CONSUMES", protocol.ReasonConflict)
	require.Equal(t, "young", d.HeldBy)
	d = mustDeny(t, e, t0, "young", "other", "/", "CONSUMES", protocol.ReasonConflict)
	require.Equal(t, "young", d.HeldBy)
	require.Contains(t, d.Message, "(under FILE:/) is held by young in session \"y\"")
	// Compatible predicates share a subtree.
	mustGrant(t, e, t0, "old", "o", "/lib/", "CONSUMES")
	mustGrant(t, e, t0, "young", "y", "/lib/x.go", "DEPENDS_ON")
	mustGrant(t, e, t0, "young", "y", "/lib/x.go", "PROVIDES") // compatible with CONSUMES above, re-entrant with its own
	d = mustDeny(t, e, t0, "young", "y", "/lib/x.go", "MUTATES", protocol.ReasonDie)
	require.Equal(t, "old", d.HeldBy)
	replayEqual(t, e, e.Records())
}

func TestSubtreeFreeze(t *testing.T) {
	e := oldYoung(t)
	l := mustGrant(t, e, t0, "young", "y", "/src/x/a.ts", "MUTATES")
	w := mustQueue(t, e, t0, waitReq("old", "o", "/src/x/a.ts", "MUTATES", 60_000, 5_000))
	ok, wake, err := e.Freeze(t0, root, "FILE", "/src/")
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, wake, 1, "the request queued under the frozen subtree is answered")
	require.Equal(t, w, wake[0].Waiter)
	require.Equal(t, protocol.ReasonResourceLocked, wake[0].Result.Denial.Reason)
	require.Equal(t, "FILE:/src/ (which covers FILE:/src/x/a.ts) is frozen by an operator; no lease on it can be acquired until it is thawed",
		wake[0].Result.Denial.Message)
	mustDeny(t, e, t0, "old", "o", "/src/y", "CONSUMES", protocol.ReasonResourceLocked)
	mustDeny(t, e, t0, "old", "o", "/src/", "CONSUMES", protocol.ReasonResourceLocked)
	mustGrant(t, e, t0, "old", "o", "/srcfoo", "CONSUMES")
	// Freezing a single key affects only that key.
	_, err = e.Thaw(t0, root, "FILE", "/src/")
	require.NoError(t, err)
	_, _, err = e.Freeze(t0, root, "FILE", "/lib/a.go")
	require.NoError(t, err)
	mustDeny(t, e, t0, "old", "o", "/lib/a.go", "CONSUMES", protocol.ReasonResourceLocked)
	mustGrant(t, e, t0, "old", "o", "/lib/", "CONSUMES")
	// The lease held under the frozen subtree kept running.
	_, err = e.Heartbeat(t0, alice, l.ID, 0)
	require.NoError(t, err)
	replayEqual(t, e, e.Records())
}

func TestSubtreeAcquireMany(t *testing.T) {
	e := oldYoung(t)
	many := func(pairs ...string) AcquireRequest {
		r := AcquireRequest{AgentID: "old", SessionID: "o", TTL: 1000}
		for i := 0; i < len(pairs); i += 2 {
			r.Intents = append(r.Intents, Intent{ResourceType: "FILE", ResourcePath: pairs[i], Predicate: pairs[i+1]})
		}
		return r
	}
	// Levels may be mixed...
	r, err := e.AcquireMany(t0, alice, many("/src/", "CONSUMES", "/src/a.ts", "DEPENDS_ON", "/lib/", "MUTATES", "/src", "MUTATES"))
	require.NoError(t, err)
	require.True(t, r.Granted)
	// ... but not with intents that conflict with each other.
	for _, req := range []AcquireRequest{
		many("/src/", "MUTATES", "/src/a.ts", "CONSUMES"),
		many("/x", "CONSUMES", "/a/b/c", "PROVIDES", "/a/", "PROVIDES"),
		many("/x", "MUTATES", "/x", "MUTATES"),
	} {
		_, err := e.AcquireMany(t0, alice, req)
		requireCode(t, err, protocol.CodeInvalidArgument, "overlap with conflicting predicates")
	}
	_, err = e.AcquireMany(t0, alice, many("/src/", "MUTATES", "/src/a.ts", "CONSUMES"))
	require.EqualError(t, err, "klock: intents[0] (MUTATES FILE:/src/) and intents[1] (CONSUMES FILE:/src/a.ts) "+
		"overlap with conflicting predicates; ask for the one that covers the other, or for compatible predicates")
	// A younger agent's many-intent request dies on any level.
	r, err = e.AcquireMany(t0, alice, AcquireRequest{AgentID: "young", SessionID: "y", TTL: 1000,
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: "/other", Predicate: "MUTATES"},
			{ResourceType: "FILE", ResourcePath: "/lib/deep/er", Predicate: "CONSUMES"}}})
	require.NoError(t, err)
	require.Equal(t, protocol.ReasonDie, r.Denial.Reason)
	require.Contains(t, r.Denial.Message, "FILE:/lib/ (which covers FILE:/lib/deep/er) is held by old")
}

// TestSubtreeTieByKeyOrder: among holders of equal priority, the one whose
// key comes first decides.
func TestSubtreeTieByKeyOrder(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "b-agent", 5)
	mustRegister(t, e, "a-agent", 5)
	mustRegister(t, e, "asker", 9)
	mustGrant(t, e, t0, "a-agent", "s", "/src/z.ts", "MUTATES")
	mustGrant(t, e, t0, "b-agent", "s", "/src/m/n.ts", "MUTATES")
	d := mustDeny(t, e, t0, "asker", "s", "/src/", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, "b-agent", d.HeldBy, "FILE:/src/m/n.ts sorts before FILE:/src/z.ts")
	mustGrant(t, e, t0, "a-agent", "s", "/src/a/", "MUTATES")
	d = mustDeny(t, e, t0, "asker", "s", "/src/", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, "a-agent", d.HeldBy)
	// A holder above the key sorts before every holder below it.
	e = newTestEngine(t)
	mustRegister(t, e, "b-agent", 5)
	mustRegister(t, e, "c-agent", 5)
	mustRegister(t, e, "asker", 9)
	mustGrant(t, e, t0, "c-agent", "s", "/", "PROVIDES")
	mustGrant(t, e, t0, "b-agent", "s", "/src/a", "CONSUMES")
	d = mustDeny(t, e, t0, "asker", "s", "/src/", "MUTATES", protocol.ReasonDie)
	require.Equal(t, "c-agent", d.HeldBy)
}

// TestSubtreeQueuedBelow: a junior cannot barge past a senior queued on a
// key under the subtree it asks for.
func TestSubtreeQueuedBelow(t *testing.T) {
	e, _ := threeAgents(t) // young holds /x
	mustGrant(t, e, t0, "young", "y", "/src/a", "MUTATES")
	mustQueue(t, e, t0, waitReq("old", "o", "/src/a", "MUTATES", 1000, 5000))
	d := mustDeny(t, e, t0, "mid", "m", "/src/", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, "old", d.HeldBy)
	require.Equal(t, "FILE:/src/a (under FILE:/src/) is awaited by old (MUTATES, priority 100), queued first; "+
		"mid (priority 200) is younger and must die and retry", d.Message)
	// And a subtree request queued above blocks juniors below it.
	mustQueue(t, e, t0, waitReq("old", "o2", "/", "MUTATES", 1000, 5000))
	d = mustDeny(t, e, t0, "mid", "m", "/lib/x", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, "old", d.HeldBy)
}

// TestSubtreeExpiredBelowDoesNotBlock: a lease below that has expired
// blocks nothing, even before the timer removes it.
func TestSubtreeExpiredBelowDoesNotBlock(t *testing.T) {
	e := oldYoung(t)
	mustGrantReq(t, e, t0, req1("old", "o", "FILE", "/src/a", "MUTATES", 10))
	mustDeny(t, e, t0+9, "young", "y", "/src/", "MUTATES", protocol.ReasonDie)
	mustGrant(t, e, t0+10, "young", "y", "/src/", "MUTATES")
}

func TestSubtreeOtherTypes(t *testing.T) {
	e := oldYoung(t)
	mustGrantReq(t, e, t0, req1("old", "o", "SYMBOL", "auth/", "MUTATES", 1000))
	r, err := e.Acquire(t0, alice, req1("young", "y", "SYMBOL", "auth/Login", "CONSUMES", 1000))
	require.NoError(t, err)
	require.Equal(t, protocol.ReasonDie, r.Denial.Reason)
	// Another type never overlaps.
	mustGrantReq(t, e, t0, req1("young", "y", "CONFIG_KEY", "auth/Login", "MUTATES", 1000))
	mustGrantReq(t, e, t0, req1("young", "y", "SYMBOL", "authx", "MUTATES", 1000))
}

func TestSubtreeExplain(t *testing.T) {
	e := oldYoung(t)
	mustGrant(t, e, t0, "old", "o", "/src/a/b.ts", "MUTATES")
	mustGrant(t, e, t0, "young", "y", "/lib/c.ts", "CONSUMES")
	mustGrant(t, e, t0, "old", "o", "/", "CONSUMES")
	x, err := e.Explain(t0, ExplainRequest{AgentID: "young", SessionID: "y", ResourceType: "FILE", ResourcePath: "/src/", Predicate: "MUTATES"})
	require.NoError(t, err)
	require.Equal(t, protocol.ReasonDie, x.Reason)
	require.Equal(t, "old", x.HeldBy)
	var keys []string
	for _, h := range x.Holders {
		keys = append(keys, h.Resource)
	}
	require.Equal(t, []string{"FILE:/src/a/b.ts", "FILE:/"}, keys, "the holders above and below, by fence")
	require.Contains(t, x.Message, "FILE:/ (which covers FILE:/src/) is held by old")
}

func TestParentKey(t *testing.T) {
	tests := []struct{ key, parent string }{
		{"FILE:/src/a.ts", "FILE:/src/"},
		{"FILE:/src/", "FILE:/"},
		{"FILE:/src", "FILE:/"},
		{"FILE:/", ""},
		{"SYMBOL:a/b/", "SYMBOL:a/"},
		{"SYMBOL:a/", ""},
		{"SYMBOL:a", ""},
		{"API_ENDPOINT:GET /users/:id", "API_ENDPOINT:GET /users/"},
		{"CONFIG_KEY:x//y", "CONFIG_KEY:x//"},
		{"CONFIG_KEY:x//", "CONFIG_KEY:x/"},
	}
	for _, tt := range tests {
		got, ok := parentKey(tt.key)
		if got != tt.parent || ok != (tt.parent != "") {
			t.Errorf("parentKey(%q) = %q, %v; want %q", tt.key, got, ok, tt.parent)
		}
	}
}

// TestSubtreeNodesForgotten: the subtree keys above keys nobody uses any
// more are forgotten with them.
func TestSubtreeNodesForgotten(t *testing.T) {
	e := New(Config{})
	mustRegister(t, e, "a", 1)
	for i := 0; i < 3*maxIdleResources; i++ {
		l := mustGrant(t, e, t0, "a", "s", fmt.Sprintf("/d%d/e/f%d", i, i), "MUTATES")
		ok, _, err := e.Release(t0, alice, l.ID)
		require.NoError(t, err)
		require.True(t, ok)
	}
	// Each key kept idle keeps its two subtree keys and the root.
	require.LessOrEqual(t, e.resources.len(), 3*(maxIdleResources+1)+1)
	checkIndex(t, e)
}
