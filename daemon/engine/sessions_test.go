package engine

import (
	"fmt"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// endedName names the i-th session a test ends. The names run downwards, so
// that ending order and sorted order disagree: a snapshot that sorted them
// would make the restored engine forget another session first.
func endedName(i int) string { return fmt.Sprintf("s%05d", 99999-i) }

// endSessions ends sessions endedName(from) .. endedName(to-1) of agent.
func endSessions(t testing.TB, e *Engine, agent string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		_, _, err := e.EndSession(t0, alice, agent, endedName(i))
		require.NoError(t, err)
	}
}

// requireEnded checks which of sessions endedName(lo .. hi-1) of agent an
// acquire finds ended: exactly those from endedName(first) on.
func requireEnded(t testing.TB, e *Engine, agent string, lo, hi, first int) {
	t.Helper()
	for i := lo; i < hi; i++ {
		want := protocol.Reason("")
		if i >= first {
			want = protocol.ReasonSessionExpired
		}
		r := mustAcquire(t, e, t0, agent, endedName(i), "/ended-check", "CONSUMES")
		require.Equalf(t, want, r.Denial.Reason, "Acquire(%s, %s) = %+v; want %q", agent, endedName(i), r, want)
		if r.Granted {
			ok, _, err := e.Release(t0, alice, r.Leases[0].ID)
			require.NoError(t, err)
			require.True(t, ok)
		}
	}
}

func TestEndedSessionsForgetOldest(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 100)
	mustRegister(t, e, "b", 200)
	_, _, err := e.EndSession(t0, alice, "b", endedName(0))
	require.NoError(t, err)
	endSessions(t, e, "a", 0, maxEndedSessions+1)
	require.Len(t, e.agents["a"].ended.set, maxEndedSessions)
	// The first one ended is forgotten: an acquire in it starts it afresh.
	// The rest, the newest included, stay ended; agent b is not affected.
	mustGrant(t, e, t0, "a", endedName(0), "/x", "MUTATES")
	mustDeny(t, e, t0, "a", endedName(1), "/y", "MUTATES", protocol.ReasonSessionExpired)
	mustDeny(t, e, t0, "a", endedName(maxEndedSessions), "/y", "MUTATES", protocol.ReasonSessionExpired)
	mustDeny(t, e, t0, "b", endedName(0), "/y", "MUTATES", protocol.ReasonSessionExpired)

	// Ending a remembered session again changes nothing, its place
	// included: the next new one forgets endedName(1).
	n, _, err := e.EndSession(t0, alice, "a", endedName(1))
	require.NoError(t, err)
	require.Zero(t, n)
	endSessions(t, e, "a", maxEndedSessions+1, maxEndedSessions+2)
	requireEnded(t, e, "a", 0, maxEndedSessions+2, 2)
	require.Len(t, e.agents["a"].ended.set, maxEndedSessions)
	require.Len(t, e.agents["a"].ended.order, maxEndedSessions)

	// A forgotten session that is ended again is the newest: ending it
	// forgets endedName(2), and the next new one endedName(3).
	n, _, err = e.EndSession(t0, alice, "a", endedName(0))
	require.NoError(t, err)
	require.Equal(t, 1, n) // the lease granted above
	endSessions(t, e, "a", maxEndedSessions+2, maxEndedSessions+3)
	mustDeny(t, e, t0, "a", endedName(0), "/y", "MUTATES", protocol.ReasonSessionExpired)
	requireEnded(t, e, "a", 1, maxEndedSessions+3, 4)
	replayEqual(t, e, e.Records())
}

func TestUnregisterForgetsEndedSessions(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "gone", 100)
	_, _, err := e.EndSession(t0, alice, "gone", "s")
	require.NoError(t, err)
	ok, err := e.Unregister(t0, alice, "gone")
	require.NoError(t, err)
	require.True(t, ok)
	mustRegister(t, e, "gone", 100)
	mustGrant(t, e, t0, "gone", "s", "/x", "MUTATES")

	// An agent unregistered with an expired lease not yet removed is kept
	// as a leftover, and registering it again reuses it: its ended
	// sessions must be gone all the same.
	mustRegister(t, e, "left", 200)
	r, err := e.Acquire(t0, alice, req1("left", "live", "FILE", "/l", "MUTATES", 10))
	require.NoError(t, err)
	require.True(t, r.Granted)
	_, _, err = e.EndSession(t0, alice, "left", "s")
	require.NoError(t, err)
	ok, err = e.Unregister(t0+10, alice, "left")
	require.NoError(t, err)
	require.True(t, ok)
	left := e.agents["left"]
	require.NotNil(t, left, "the leftover is kept while its expired lease is")
	require.Empty(t, left.ended.set)
	mustRegister(t, e, "left", 200)
	require.Same(t, left, e.agents["left"])
	mustGrant(t, e, t0+10, "left", "s", "/y", "MUTATES")
	replayEqual(t, e, e.Records())
}

// TestEndedSessionsSnapshotOrder: a snapshot keeps the order in which
// sessions were ended, so the restored engine forgets the same session next
// as the engine it was taken from.
func TestEndedSessionsSnapshotOrder(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 100)
	mustRegister(t, e, "b", 200)
	endSessions(t, e, "b", 0, 3)
	endSessions(t, e, "a", 0, maxEndedSessions+1)

	s := e.Snapshot()
	require.Len(t, s.Ended, maxEndedSessions+3)
	require.Equal(t, SessionRef{AgentID: "a", SessionID: endedName(1)}, s.Ended[0])
	require.Equal(t, SessionRef{AgentID: "a", SessionID: endedName(maxEndedSessions)}, s.Ended[maxEndedSessions-1])
	require.Equal(t, SessionRef{AgentID: "b", SessionID: endedName(0)}, s.Ended[maxEndedSessions])
	b, err := msgpack.Marshal(s)
	require.NoError(t, err)
	var back State
	require.NoError(t, msgpack.Unmarshal(b, &back))
	g := newTestEngine(t)
	require.NoError(t, g.Restore(&back))
	require.Equal(t, s, g.Snapshot())

	// One more on both: the same session, endedName(1), is forgotten.
	endSessions(t, e, "a", maxEndedSessions+1, maxEndedSessions+2)
	endSessions(t, g, "a", maxEndedSessions+1, maxEndedSessions+2)
	require.Equal(t, e.Snapshot(), g.Snapshot())
	requireEnded(t, g, "a", 0, maxEndedSessions+2, 2)
	requireEnded(t, g, "b", 0, 3, 0)
	// Replaying the records keeps the order too.
	replayEqual(t, e, e.Records())
}

// TestRestoreTrimsEndedSessions: a state listing more ended sessions of an
// agent than are remembered (an older one) keeps the newest, and sessions
// of agents it does not list are dropped.
func TestRestoreTrimsEndedSessions(t *testing.T) {
	const extra = 5
	s := &State{Version: StateVersion, Agents: []AgentState{{ID: "a", Priority: 100, RegisteredAt: t0, UID: alice.UID}}}
	for i := range maxEndedSessions + extra {
		s.Ended = append(s.Ended, SessionRef{AgentID: "a", SessionID: endedName(i)})
	}
	s.Ended = append(s.Ended, SessionRef{AgentID: "a", SessionID: endedName(extra)}) // twice: kept once
	s.Ended = append(s.Ended, SessionRef{AgentID: "nobody", SessionID: "s"})
	e := newTestEngine(t)
	require.NoError(t, e.Restore(s))
	got := e.Snapshot().Ended
	require.Equal(t, s.Ended[extra:maxEndedSessions+extra], got)
	requireEnded(t, e, "a", 0, maxEndedSessions+extra, extra)
	mustRegister(t, e, "nobody", 200)
	mustGrant(t, e, t0, "nobody", "s", "/x", "MUTATES")
}
