package engine

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/protocol"
)

// kinds returns the kinds of evs, in order.
func kinds(evs []Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Kind.String())
	}
	return out
}

func TestEventsOffByDefault(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	mustGrant(t, e, t0, "a", "s", "/x", "MUTATES")
	require.Nil(t, e.Events())
	e.SetEvents(true)
	mustGrant(t, e, t0, "a", "s", "/y", "MUTATES")
	require.Len(t, e.Events(), 1)
	e.SetEvents(false)
	mustGrant(t, e, t0, "a", "s", "/z", "MUTATES")
	require.Nil(t, e.Events())
}

func TestEventsOfEveryKind(t *testing.T) {
	e := newTestEngine(t)
	e.SetEvents(true)
	mustRegister(t, e, "old", 1)
	mustRegister(t, e, "young", 9)

	held := mustGrant(t, e, t0, "young", "s", "/x", "MUTATES")
	evs := e.Events()
	require.Equal(t, []Event{{Kind: EvGrant, At: t0, Resource: "FILE:/x", AgentID: "young", SessionID: "s",
		LeaseID: held.ID, Predicate: Mutates, Fence: held.Fence, ExpiresAt: held.ExpiresAt}}, evs)

	// A junior gets DIE at once; a senior WAIT at once, then parked.
	mustDeny(t, e, t0+1, "young", "s2", "/x", "MUTATES", protocol.ReasonConflict) // not an event
	require.Empty(t, e.Events())
	mustRegister(t, e, "junior", 20)
	mustDeny(t, e, t0+1, "junior", "s", "/x", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, []Event{{Kind: EvDie, At: t0 + 1, Resource: "FILE:/x", AgentID: "junior", SessionID: "s",
		Predicate: Consumes, Reason: protocol.ReasonDie, HeldBy: "young"}}, e.Events())
	mustDeny(t, e, t0+2, "old", "s", "/x", "MUTATES", protocol.ReasonWait)
	require.Equal(t, []string{"wait"}, kinds(e.Events()))
	r, err := e.Acquire(t0+3, alice, AcquireRequest{AgentID: "old", SessionID: "s", TTL: 1000, WaitTimeout: 100,
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: "/x", Predicate: "MUTATES"}}})
	require.NoError(t, err)
	require.True(t, r.Queued)
	evs = e.Events()
	require.Equal(t, []string{"wait"}, kinds(evs))
	require.Equal(t, "young", evs[0].HeldBy)

	// Releasing hands the lease to the queued senior: release, then grant.
	ok, wakes, err := e.Release(t0+4, alice, held.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, wakes, 1)
	evs = e.Events()
	require.Equal(t, []string{"release", "grant"}, kinds(evs))
	require.Equal(t, held.ID, evs[0].LeaseID)
	require.Equal(t, "old", evs[1].AgentID)
	granted := wakes[0].Result.Leases[0]

	// Revoke, freeze, thaw.
	ok, _, err = e.Revoke(t0+5, root, granted.ID)
	require.NoError(t, err)
	require.True(t, ok)
	_, _, err = e.Freeze(t0+6, root, "FILE", "/x")
	require.NoError(t, err)
	_, err = e.Thaw(t0+7, root, "FILE", "/x")
	require.NoError(t, err)
	evs = e.Events()
	require.Equal(t, []string{"revoke", "freeze", "thaw"}, kinds(evs))
	require.Equal(t, granted.Fence, evs[0].Fence)
	require.Equal(t, Event{Kind: EvFreeze, At: t0 + 6, Resource: "FILE:/x"}, evs[1])

	// Expiry, and end_session (active leases released, an expired one
	// reported as expired).
	short := mustGrantReq(t, e, t0+10, req1("young", "s", "FILE", "/e", "MUTATES", 5))
	_, _ = e.Expire(t0 + 15)
	evs = e.Events()
	require.Equal(t, []string{"grant", "expire"}, kinds(evs))
	require.Equal(t, short.ID, evs[1].LeaseID)
	mustGrantReq(t, e, t0+20, req1("young", "s", "FILE", "/e1", "MUTATES", 5))
	mustGrantReq(t, e, t0+20, req1("young", "s", "FILE", "/e2", "MUTATES", 1000))
	e.Events()
	n, _, err := e.EndSession(t0+30, alice, "young", "s")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, []string{"expire", "release"}, kinds(e.Events()), "one event per lease, in fence order")

	// Replay produces none, end_session's included.
	f := New(Config{})
	f.SetEvents(true)
	for _, rec := range e.Records() {
		require.NoError(t, f.Apply(rec))
	}
	require.Empty(t, f.Events())
	require.Equal(t, e.Snapshot(), f.Snapshot())
}

func TestEventEndWhenTheBoundProcessEnds(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	l := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/p", "MUTATES", 0), procA))
	short := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/q", "MUTATES", 5), procA))
	e.SetEvents(true)
	n, _ := e.ProcessEnded(t0+10, procA)
	require.Equal(t, 1, n)
	evs := e.Events()
	require.ElementsMatch(t, []string{"end", "expire"}, kinds(evs))
	for _, ev := range evs {
		if ev.Kind == EvEnd {
			require.Equal(t, l.ID, ev.LeaseID)
		} else {
			require.Equal(t, short.ID, ev.LeaseID, "the lease already expired is reported as expired")
		}
	}
}

func TestEventsSurviveRestore(t *testing.T) {
	e := newTestEngine(t)
	e.SetEvents(true)
	mustRegister(t, e, "a", 1)
	require.NoError(t, e.Restore(e.Snapshot()))
	mustGrant(t, e, t0, "a", "s", "/after-restore", "MUTATES")
	require.Equal(t, []string{"grant"}, kinds(e.Events()), "a rollback (Restore) must not stop the events")
}

func TestEventKindNames(t *testing.T) {
	require.Equal(t, "invalid", EventKind(0).String())
	require.Equal(t, "invalid", EventKind(EvEnd+1).String())
	for k := EvGrant; k <= EvEnd; k++ {
		require.NotEqual(t, "invalid", k.String())
	}
}
