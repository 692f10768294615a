package tests

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// Slow and broken peers: none of them may stall the daemon for others. A
// bystander client keeps acquiring and releasing throughout, each call
// bounded by a 10 s deadline, and must never be refused or time out.

// progress waits until the bystander has done n more round trips.
func (b *bystander) progress(t *testing.T, n int64) {
	t.Helper()
	start := b.ok.Load()
	waitFor(t, fmt.Sprintf("%d bystander round trips", n), func() bool { return b.ok.Load() >= start+n })
}

func TestStalledPeersDoNotBlockOthers(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	b := startBystander(t, d)

	// Half a header, half a body, and a header promising more than is sent.
	d.Raw(t).Write([]byte{0, 0})
	frame, err := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
	require.NoError(t, err)
	d.Raw(t).Write(frame[:len(frame)/2])
	d.Raw(t).Write(frameLen(1000))
	b.progress(t, 200)

	// A peer that disconnects mid-frame, and one that disconnects while its
	// acquire is parked: the parked request is dropped, nothing lingers.
	r := d.Raw(t)
	r.Write(frame[:5])
	r.Conn.Close()
	holder := d.Raw(t)
	mustOK(t, "register junior", holder.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "junior", protocol.ArgPriority, 20)), nil)
	mustOK(t, "register senior", holder.Call(2, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "senior", protocol.ArgPriority, 10)), nil)
	var g protocol.Grant
	mustOK(t, "junior acquire", holder.Call(3, protocol.OpAcquire, acquireArgs("junior", "s", "/shared", "MUTATES", 60000)), &g)
	quitter := d.Raw(t)
	a := parkArgs("senior", "s", "/shared", "MUTATES", 60000, 60000)
	quitter.Send(1, protocol.OpAcquire, a)
	waitFor(t, "the parked acquire", func() bool { return waiters(t, holder, 4) == 1 })
	quitter.Conn.Close()
	waitFor(t, "the parked acquire to be dropped", func() bool { return waiters(t, holder, 5) == 0 })
	var rel protocol.ReleaseResult
	mustOK(t, "release", holder.Call(6, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), &rel)
	assert.True(t, rel.Released)
	var list protocol.ListLeasesResult
	mustOK(t, "list", holder.Call(7, protocol.OpListLeases, args(protocol.ArgAgentID, "senior")), &list)
	assert.Empty(t, list.Leases, "no lease granted to the departed waiter")
	b.check(t)
}

func TestPipelineFloodDoesNotStarveOthers(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	b := startBystander(t, d)

	const n = 20000
	flood := d.Raw(t)
	var batch []byte
	for i := 1; i <= n; i++ {
		var err error
		batch, err = protocol.AppendRequest(batch, uint64(i), protocol.OpActiveLeaseCount, nil)
		require.NoError(t, err)
	}
	done := make(chan error, 1)
	go func() {
		flood.Conn.SetWriteDeadline(time.Now().Add(time.Minute))
		_, err := flood.Conn.Write(batch)
		done <- err
	}()
	seen := make(map[uint64]bool, n)
	for len(seen) < n {
		resp := flood.Recv()
		require.True(t, resp.OK, "flooded request %d: %+v", resp.ID, resp.Error)
		seen[resp.ID] = true
	}
	require.NoError(t, <-done)
	b.progress(t, 50)
	b.check(t)
	t.Logf("klockd RSS after %d pipelined requests: %d KiB", n, rssKB(t, d.Cmd.Process.Pid))
}

func TestPeerThatNeverReadsIsDropped(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the daemon's 10 s write timeout")
	}
	d := harness.Start(t, harness.Options{StateDir: "none"})
	// Big answers: list_leases over 1,000 leases is ~150 KB each.
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "filler")), nil)
	intents := make([]protocol.Intent, protocol.MaxIntents)
	for i := 0; i < 16; i++ {
		for j := range intents {
			intents[j] = protocol.Intent{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/fill/%d/%d", i, j), Predicate: "MUTATES"}
		}
		mustOK(t, "fill", r.Call(uint64(10+i), protocol.OpAcquireMany, args(protocol.ArgAgentID, "filler",
			protocol.ArgSessionID, "s", protocol.ArgTTL, 600000, protocol.ArgIntents, intents)), nil)
	}
	b := startBystander(t, d)

	// The sink writes requests and never reads; its socket buffers fill, the
	// daemon's write to it blocks, and the daemon drops it.
	sink, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.Socket, Net: "unix"})
	require.NoError(t, err)
	defer sink.Close()
	var req []byte
	for i := 1; i <= 200; i++ {
		req, err = protocol.AppendRequest(req, uint64(i), protocol.OpListLeases, args(protocol.ArgLimit, 1000))
		require.NoError(t, err)
	}
	sink.SetWriteDeadline(time.Now().Add(30 * time.Second))
	sink.Write(req) // may block until the daemon drops us; the error does not matter
	waitFor(t, "the daemon to drop the non-reading peer", func() bool {
		return strings.Contains(d.Logs(), "dropping a connection")
	})
	// Once dropped, reading drains what was sent and then ends.
	sink.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = io.Copy(io.Discard, sink)
	assert.NoError(t, err, "the connection ends with EOF")
	b.check(t)
	t.Logf("klockd RSS after dropping the peer: %d KiB", rssKB(t, d.Cmd.Process.Pid))
}
