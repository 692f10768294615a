package tests

import (
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestConfiguredLimits: --max-leases, --max-waiters and --max-inflight
// each answer RESOURCE_EXHAUSTED when reached, and serving recovers when
// the load goes away.
func TestConfiguredLimits(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-leases", "2", "--max-waiters", "2", "--max-inflight", "1"}})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "young", protocol.ArgPriority, 10)), nil)
	mustOK(t, "register", r.Call(2, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "old", protocol.ArgPriority, 1)), nil)
	var g1, g2 protocol.Grant
	mustOK(t, "acquire 1", r.Call(3, protocol.OpAcquire, acquireArgs("young", "s", "/a", "MUTATES", 60000)), &g1)
	mustOK(t, "acquire 2", r.Call(4, protocol.OpAcquire, acquireArgs("young", "s", "/b", "MUTATES", 60000)), &g2)
	resp := r.Call(5, protocol.OpAcquire, acquireArgs("young", "s", "/c", "MUTATES", 60000))
	if resp.OK || resp.Error.Code != protocol.CodeResourceExhausted {
		t.Fatalf("third lease with --max-leases 2 = %+v; want RESOURCE_EXHAUSTED", resp)
	}

	// One parked acquire per connection (--max-inflight 1).
	w1, w2 := d.Raw(t), d.Raw(t)
	park := func(path string) *protocol.Args {
		return parkArgs("old", "o", path, "MUTATES", 60000, 60000)
	}
	w1.Send(1, protocol.OpAcquire, park("/a"))
	waitFor(t, "the first acquire to park", func() bool { return waiters(t, r, 6) == 1 })
	resp = w1.Call(2, protocol.OpAcquire, park("/b"))
	if resp.OK || resp.Error.Code != protocol.CodeResourceExhausted {
		t.Fatalf("second parked acquire on one connection with --max-inflight 1 = %+v; want RESOURCE_EXHAUSTED", resp)
	}
	w2.Send(1, protocol.OpAcquire, park("/b"))
	waitFor(t, "the second acquire to park", func() bool { return waiters(t, r, 7) == 2 })
	w3 := d.Raw(t)
	resp = w3.Call(1, protocol.OpAcquire, park("/a"))
	if resp.OK || resp.Error.Code != protocol.CodeResourceExhausted {
		t.Fatalf("third waiter with --max-waiters 2 = %+v; want RESOURCE_EXHAUSTED", resp)
	}

	// Releasing lets the parked acquires through and frees the limits.
	mustOK(t, "release", r.Call(8, protocol.OpRelease, args(protocol.ArgLeaseID, g1.LeaseID)), nil)
	var w protocol.Grant
	mustOK(t, "woken acquire", w1.Recv(), &w)
	if !w.Success || w.Resource != "FILE:/a" {
		t.Fatalf("woken acquire = %+v", w)
	}
	mustOK(t, "release", r.Call(9, protocol.OpRelease, args(protocol.ArgLeaseID, g2.LeaseID)), nil)
	mustOK(t, "woken acquire", w2.Recv(), &w)
	if !w.Success || w.Resource != "FILE:/b" {
		t.Fatalf("woken acquire = %+v", w)
	}
}
