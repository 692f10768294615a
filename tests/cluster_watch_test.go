package tests

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestClusterWatch: in cluster mode every node applies the cluster's log,
// and its watchers see the changes it applies, whichever node they were
// made through. A watcher on node B sees a grant, a DIE, a WAIT, the
// parked request's grant, a release and an expiry made through node A
// (the expiry by the leader's tick), with the lease ids and fences A
// answered; a watcher on A sees the very same stream, field for field,
// and a filtered watcher on B only its part.
func TestClusterWatch(t *testing.T) {
	kc := startKlockCluster(t, 1, 2)
	ctx := testCtx(t)
	a, b := kc.nodes[0], kc.nodes[1]
	onB, onBOld, onA := b.Raw(t), b.Raw(t), a.Raw(t)
	watchOn(t, onB, 1, "", "")
	watchOn(t, onBOld, 1, "old", "FILE:/src/")
	watchOn(t, onA, 1, "", "")

	ca := a.Client(t)
	registerAgents(t, ctx, ca, map[string]int64{"old": 1, "young": 9, "junior": 20})
	held, err := ca.AcquireLease(ctx, "young", "s", "FILE", "/src/a.ts", "MUTATES", time.Minute)
	require.NoError(t, err)
	require.True(t, held.Success, "young on A: %+v", held)
	die, err := ca.AcquireLease(ctx, "junior", "s", "FILE", "/src/a.ts", "CONSUMES", time.Minute)
	require.NoError(t, err)
	require.Equal(t, "DIE", die.Reason)

	type answer struct {
		r   *clientlib.AcquireResult
		err error
	}
	parked, cp := make(chan answer, 1), a.Client(t)
	go func() {
		r, err := cp.AcquireOnce(ctx, clientlib.AcquireRequest{
			AgentID: "old", SessionID: "s", TTL: time.Minute, WaitTimeout: 20 * time.Second,
			Intents: fileIntent("/src/a.ts", "MUTATES"),
		})
		parked <- answer{r, err}
	}()
	// The wait event is B's sign that old is parked, without a poll.
	want := []string{"grant FILE:/src/a.ts young", "die FILE:/src/a.ts junior by young", "wait FILE:/src/a.ts old by young"}
	var got []protocol.WatchEvent
	for range want {
		got = append(got, nextEvent(t, onB, 1))
	}
	ok, err := ca.ReleaseLease(ctx, held.LeaseID)
	require.NoError(t, err)
	require.True(t, ok)
	og := <-parked
	require.NoError(t, og.err)
	require.True(t, og.r.Success, "old parked on A: %+v", og.r)
	short, err := ca.AcquireLease(ctx, "young", "s", "FILE", "/tmp/short", "MUTATES", 100*time.Millisecond)
	require.NoError(t, err)
	require.True(t, short.Success)
	want = append(want, "release FILE:/src/a.ts young", "grant FILE:/src/a.ts old",
		"grant FILE:/tmp/short young", "expire FILE:/tmp/short young")
	for len(got) < len(want) {
		got = append(got, nextEvent(t, onB, 1))
	}
	var sums []string
	for _, ev := range got {
		sums = append(sums, summary(ev))
	}
	require.Equal(t, want, sums, "node B's watcher")

	// The leases are the ones A answered.
	require.Equal(t, protocol.WatchEvent{Event: "grant", At: held.AcquiredAt.UnixMilli(), Resource: "FILE:/src/a.ts",
		AgentID: "young", SessionID: "s", LeaseID: held.LeaseID, Predicate: "MUTATES", Fence: held.Fence,
		ExpiresAt: held.ExpiresAt.UnixMilli(), BoundPID: int32(held.BoundPID)}, got[0])
	require.Equal(t, held.LeaseID, got[3].LeaseID)
	require.Equal(t, og.r.LeaseID, got[4].LeaseID)
	require.Equal(t, og.r.Fence, got[4].Fence)
	require.Equal(t, short.LeaseID, got[6].LeaseID)

	// Node A's watcher saw the same stream, field for field.
	for i := range got {
		require.Equal(t, got[i], nextEvent(t, onA, 1), "event %d on A and on B", i)
	}
	// The filtered watcher on B saw old's events under /src/ only.
	for _, w := range []string{"wait FILE:/src/a.ts old by young", "grant FILE:/src/a.ts old"} {
		require.Equal(t, w, summary(nextEvent(t, onBOld, 1)))
	}
	for _, r := range []*harness.Raw{onB, onBOld, onA} {
		r.Send(2, protocol.OpHello, nil)
		require.Equal(t, uint64(2), r.Recv().ID, "an event no change explains")
	}
}
