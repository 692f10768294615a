package engine

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// busyEngine runs a little of everything.
func busyEngine(t *testing.T) *Engine {
	e := newTestEngine(t)
	_, err := e.Register(t0, alice, "auto", 0, false)
	require.NoError(t, err)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "young", 300)
	l := mustGrant(t, e, t0, "young", "y", "/x", "MUTATES")
	mustGrant(t, e, t0, "young", "y2", "/gone", "MUTATES")
	mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 5000))
	_, _, err = e.Release(t0+1, alice, l.ID) // old granted from the queue
	require.NoError(t, err)
	req := AcquireRequest{AgentID: "old", SessionID: "o", TTL: 50, Idem: "k",
		Intents: []Intent{{ResourceType: "SYMBOL", ResourcePath: "a.B", Predicate: "PROVIDES"}, {ResourceType: "CONFIG_KEY", ResourcePath: "x.y", Predicate: "CONSUMES"}}}
	r, err := e.AcquireMany(t0+2, alice, req)
	require.NoError(t, err)
	require.True(t, r.Granted)
	_, err = e.Heartbeat(t0+3, alice, r.Leases[0].ID, 500)
	require.NoError(t, err)
	_, _, err = e.EndSession(t0+4, alice, "young", "y2")
	require.NoError(t, err)
	_, _, err = e.Freeze(t0+5, root, "FILE", "/frozen")
	require.NoError(t, err)
	_, _, err = e.Freeze(t0+5, root, "FILE", "/thawed")
	require.NoError(t, err)
	_, err = e.Thaw(t0+6, root, "FILE", "/thawed")
	require.NoError(t, err)
	mustGrant(t, e, t0+7, "young", "y", "/r", "RENAMES")
	ls, _, err := e.ListLeases(t0+7, LeaseFilter{ResourcePrefix: "FILE:/r"})
	require.NoError(t, err)
	_, _, err = e.Revoke(t0+8, root, ls[0].ID)
	require.NoError(t, err)
	_, err = e.Register(t0+9, alice, "bye", 7, true)
	require.NoError(t, err)
	_, err = e.Unregister(t0+9, alice, "bye")
	require.NoError(t, err)
	e.Expire(t0 + 60) // the CONFIG_KEY lease expires
	p := Process{PID: 77, Boot: 1, Start: 5}
	mustGrantReq(t, e, t0+61, bound(req1("young", "y", "FILE", "/bound", "MUTATES", 0), p))
	mustGrantReq(t, e, t0+61, bound(req1("young", "y", "FILE", "/kept", "MUTATES", 0), Process{PID: 78, Boot: 1, Start: 6}))
	e.ProcessEnded(t0+62, p)
	return e
}

func TestRecordsReplayAndSnapshot(t *testing.T) {
	e := busyEngine(t)
	recs := e.Records()
	kinds := map[RecordKind]bool{}
	for _, r := range recs {
		kinds[r.Kind] = true
	}
	for k := RecRegister; k <= RecProcessEnd; k++ {
		require.Truef(t, kinds[k], "no record of kind %d", k)
	}
	require.Empty(t, e.Records(), "drained")
	replayEqual(t, e, recs)

	// Through msgpack, as the store writes them.
	replayMsgpack(t, e, recs)

	// Snapshot -> msgpack -> Restore.
	s := e.Snapshot()
	b, err := msgpack.Marshal(s)
	require.NoError(t, err)
	var back State
	require.NoError(t, msgpack.Unmarshal(b, &back))
	g := New(Config{})
	require.NoError(t, g.Restore(&back))
	require.Equal(t, s, g.Snapshot())
	require.Equal(t, e.ActiveLeaseCount(t0+60), g.ActiveLeaseCount(t0+60))
	require.Equal(t, e.Stats().Fence, g.Stats().Fence)

	// The restored engine keeps going: fences keep growing, the auto
	// priority stays strictly increasing, ended sessions stay ended.
	a, err := g.Register(t0, alice, "auto2", 0, false)
	require.NoError(t, err)
	require.Equal(t, t0+1, a.Priority)
	l := mustGrant(t, g, t0+60, "young", "y", "/new", "MUTATES")
	require.Equal(t, e.Stats().Fence+1, l.Fence)
	mustDeny(t, g, t0+60, "young", "y2", "/other", "MUTATES", "SESSION_EXPIRED")
	mustDeny(t, g, t0+60, "young", "y", "/frozen", "MUTATES", "RESOURCE_LOCKED")
}

func TestRestoreRejectsBadState(t *testing.T) {
	e := New(Config{})
	require.Error(t, e.Restore(&State{Version: 99}))
	err := e.Restore(&State{Version: StateVersion, Leases: []LeaseState{{Lease: Lease{ID: "x", AgentID: "nobody"}}}})
	require.Error(t, err)
	require.Zero(t, e.ActiveLeaseCount(0))
	require.Error(t, e.Apply(Record{Kind: 200}))
	require.Error(t, e.Apply(Record{Kind: RecHeartbeat, LeaseIDs: []string{"nope"}}))
}
