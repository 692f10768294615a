package tests

import (
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestMemoryFencesNeverGoBack: without a state directory klockd has no log
// to continue its fence counter from, so it starts from the wall clock in
// microseconds: a restarted daemon's first fence is above every fence the
// previous run issued.
func TestMemoryFencesNeverGoBack(t *testing.T) {
	before := uint64(time.Now().UnixMicro())
	d := harness.Start(t, harness.Options{StateDir: "none"})
	grant := func(id uint64) protocol.Grant {
		r := d.Raw(t)
		mustOK(t, "register", r.Call(id, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 1)), nil)
		var g protocol.Grant
		mustOK(t, "acquire", r.Call(id+1, protocol.OpAcquire, acquireArgs("a", "s", "/x", "MUTATES", 60000)), &g)
		return g
	}
	var last uint64
	for round := range 3 {
		g := grant(uint64(10*round + 1))
		// In cluster mode fences come from etcd's revisions, not the
		// clock: they only have to go on from the previous run's.
		if g.Fence <= last || g.Fence <= before && !harness.ClusterMode() {
			t.Fatalf("round %d: first fence %d; want above the previous run's %d and the clock at start (%d µs)", round, g.Fence, last, before)
		}
		for i := range 50 { // a run that grants more than one lease
			g = grant(uint64(1000*round + 2*i + 100))
		}
		last = g.Fence
		d.Restart(t)
	}
}
