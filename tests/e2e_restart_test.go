package tests

import (
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestStateSurvivesRestart checks the daemon's wiring of the store: a lease
// granted before a SIGTERM stop, and one granted before a SIGKILL, are both
// active after the restart with the same id and fence, and new fences
// continue above them.
func TestStateSurvivesRestart(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "durable", protocol.ArgPriority, 5)), nil)
	var first, second protocol.Grant
	mustOK(t, "acquire", r.Call(2, protocol.OpAcquire, acquireArgs("durable", "s", "/one", "MUTATES", 600000)), &first)
	d.Stop(t)
	d.Restart(t)

	r = d.Raw(t)
	mustOK(t, "acquire", r.Call(3, protocol.OpAcquire, acquireArgs("durable", "s", "/two", "MUTATES", 600000)), &second)
	if !second.Success || second.Fence <= first.Fence {
		t.Fatalf("acquire after restart = %+v; want a grant with a fence above %d", second, first.Fence)
	}
	d.Kill(t)
	d.Restart(t)

	r = d.Raw(t)
	got := leaseFences(t, r, 4)
	for _, g := range []protocol.Grant{first, second} {
		if f, ok := got[g.LeaseID]; !ok || f != g.Fence {
			t.Errorf("lease %s (fence %d) after restarts: present %v fence %d; leases %v", g.LeaseID, g.Fence, ok, f, got)
		}
	}
}
