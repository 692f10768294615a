package engine

import (
	"maps"
	"slices"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
)

// TestIdemAfterItsFirstLeaseGoes checks that an idempotency key's leases,
// found from the first present one in their session's list, are still
// found once the first and others are released, with leases of the same
// session on either side, and after a snapshot is restored.
func TestIdemAfterItsFirstLeaseGoes(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	mustGrant(t, e, t0, "a", "s", "/before", "MUTATES")
	paths := func(ps ...string) []Intent {
		var in []Intent
		for _, p := range ps {
			in = append(in, Intent{ResourceType: "FILE", ResourcePath: p, Predicate: "MUTATES"})
		}
		return in
	}
	req := AcquireRequest{AgentID: "a", SessionID: "s", TTL: 60_000, Idem: "k", Intents: paths("/w", "/x", "/y", "/z")}
	r, err := e.AcquireMany(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r.Granted)
	mustGrant(t, e, t0, "a", "s", "/after", "MUTATES")
	release := func(l Lease) {
		ok, _, err := e.Release(t0, alice, l.ID)
		require.NoError(t, err)
		require.True(t, ok)
	}
	release(r.Leases[0])
	release(r.Leases[2])

	_, err = e.AcquireMany(t0, alice, req)
	requireCode(t, err, protocol.CodeInvalidArgument, `idem "k" is bound to 2 held lease(s), not 4`)
	again := req
	again.Intents = paths("/x", "/z")
	want := []Lease{r.Leases[1], r.Leases[3]}
	for _, eng := range []*Engine{e, restored(t, e), restoredEngine(t, e)} {
		got, err := eng.AcquireMany(t0+1, alice, again)
		require.NoError(t, err)
		require.Equal(t, want, got.Leases)
	}

	release(r.Leases[1])
	again.Intents = paths("/z")
	got, err := e.AcquireMany(t0+1, alice, again)
	require.NoError(t, err)
	require.Equal(t, want[1:], got.Leases)
	release(r.Leases[3])
	require.Empty(t, e.agents["a"].idem)
}

// restored returns a new engine restored from e's snapshot.
func restored(t *testing.T, e *Engine) *Engine {
	t.Helper()
	r := newTestEngine(t)
	require.NoError(t, r.Restore(e.Snapshot()))
	return r
}

// An entry whose leases are all gone is reused for the next key: the old
// key then names nothing, and the new one its own grant only.
func TestIdemEntryReusedForTheNextKey(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	req := req1("a", "s", "FILE", "/x", "MUTATES", 60_000)
	acquire := func(idem string) Lease {
		req.Idem = idem
		return mustGrantReq(t, e, t0, req)
	}
	one := acquire("k1")
	ok, _, err := e.Release(t0, alice, one.ID)
	require.NoError(t, err)
	require.True(t, ok)
	two := acquire("k2")
	require.NotEqual(t, one.ID, two.ID)
	require.Equal(t, two, acquire("k2"), "k2 answers its grant again")
	three := acquire("k1") // a new grant, not k2's
	require.NotEqual(t, two.ID, three.ID)
	require.Equal(t, []string{"k1", "k2"}, slices.Sorted(maps.Keys(e.agents["a"].idem)))
	require.Equal(t, three, acquire("k1"))
}
