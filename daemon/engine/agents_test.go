package engine

import (
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
)

// TestMaxAgents: a new agent beyond Config.MaxAgents is RESOURCE_EXHAUSTED
// naming the limit and the flag; registering an existing agent again is
// always allowed; unregistering frees a slot at once, even while expired
// leases keep the agent as a leftover.
func TestMaxAgents(t *testing.T) {
	e := New(Config{MaxAgents: 2, Journal: true})
	mustRegister(t, e, "a", 1)
	mustRegister(t, e, "b", 2)
	_, err := e.Register(t0, alice, "c", 3, true)
	requireCode(t, err, protocol.CodeResourceExhausted, "agent limit (2)", "--max-agents")
	_, err = e.Register(t0, alice, "c", 0, false)
	requireCode(t, err, protocol.CodeResourceExhausted, "agent limit (2)")

	// At the limit, the registered agents may still register again, with
	// or without a new priority.
	mustRegister(t, e, "a", 1)
	got := mustRegister(t, e, "a", 5)
	require.Equal(t, int64(5), got.Priority)
	_, err = e.Register(t0, bob, "b", 0, false)
	requireCode(t, err, protocol.CodePermissionDenied) // not RESOURCE_EXHAUSTED

	// b's expired lease keeps it as a leftover after it is unregistered;
	// the leftover does not hold a slot, but registering b again is a new
	// agent and needs one.
	mustGrantReq(t, e, t0, req1("b", "s", "FILE", "/x", "MUTATES", 10))
	ok, err := e.Unregister(t0+10, alice, "b")
	require.NoError(t, err)
	require.True(t, ok)
	require.Contains(t, e.agents, "b", "b kept as a leftover until the sweep")
	mustRegister(t, e, "c", 3)
	_, err = e.Register(t0+10, alice, "b", 2, true)
	requireCode(t, err, protocol.CodeResourceExhausted, "agent limit (2)")
	ok, err = e.Unregister(t0+10, alice, "c")
	require.NoError(t, err)
	require.True(t, ok)
	_, err = e.Register(t0+10, alice, "b", 2, true)
	require.NoError(t, err)
	require.Equal(t, 2, e.Stats().Agents)
	replayEqual(t, e, e.Records())
}

// TestMaxAgentsBindsLiveRequestsOnly: a log or snapshot with more agents
// than the limit (written under a higher one) loads in full; only new live
// registrations are refused until the count is below the limit.
func TestMaxAgentsBindsLiveRequestsOnly(t *testing.T) {
	e := newTestEngine(t)
	for i, id := range []string{"a", "b", "c", "d", "e"} {
		mustRegister(t, e, id, int64(i+1))
	}
	recs := e.Records()

	replayed := New(Config{MaxAgents: 2})
	for i, r := range recs {
		require.NoErrorf(t, replayed.Apply(r), "Apply(record %d) under a lower limit", i)
	}
	require.Equal(t, e.Snapshot(), replayed.Snapshot())

	restored := New(Config{MaxAgents: 2})
	require.NoError(t, restored.Restore(e.Snapshot()))
	require.Equal(t, e.Snapshot(), restored.Snapshot())

	for _, g := range []*Engine{replayed, restored} {
		require.Equal(t, 5, g.Stats().Agents)
		_, err := g.Register(t0, alice, "f", 6, true)
		requireCode(t, err, protocol.CodeResourceExhausted, "agent limit (2)")
		mustRegister(t, g, "a", 10) // existing agents keep working
		for _, id := range []string{"b", "c", "d"} {
			_, err := g.Unregister(t0, alice, id)
			require.NoError(t, err)
		}
		_, err = g.Register(t0, alice, "f", 6, true)
		requireCode(t, err, protocol.CodeResourceExhausted, "agent limit (2)")
		_, err = g.Unregister(t0, alice, "e")
		require.NoError(t, err)
		mustRegister(t, g, "f", 6)
	}
}
