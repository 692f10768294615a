package tests

import (
	"maps"
	"strings"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestPanicMidChangeRestartsFromTheLog: the fourth acquire panics after the
// engine granted it and before its record reached the log (the test-only
// hook KLOCKD_TEST_PANIC). klockd answers it INTERNAL, answers the parked
// acquire of a bystander SHUTTING_DOWN, logs the stack and exits non-zero;
// restarted from the same state directory it holds exactly the leases that
// were acknowledged, and serves on.
func TestPanicMidChangeRestartsFromTheLog(t *testing.T) {
	harness.SkipInClusterMode(t, "a change is decided by every node from etcd's log, not journaled after the decision; "+
		"a panic while applying it is answered INTERNAL on every node alike (daemon/server TestReplicaPanicAnswersInternal)")
	d := harness.Start(t, harness.Options{TestHooks: true, Env: []string{"KLOCKD_TEST_PANIC=acquire:4"}})
	r, bystander := d.Raw(t), d.Raw(t)
	for i, a := range []struct {
		id  string
		pri int
	}{{"young", 10}, {"old", 1}, {"p", 5}} {
		mustOK(t, "register", r.Call(uint64(1+i), protocol.OpRegisterAgent, args(protocol.ArgAgentID, a.id, protocol.ArgPriority, a.pri)), nil)
	}
	var held, kept protocol.Grant
	mustOK(t, "acquire 1", r.Call(10, protocol.OpAcquire, acquireArgs("young", "s", "/w", "MUTATES", 600000)), &held)
	mustOK(t, "acquire 2", r.Call(11, protocol.OpAcquire, acquireArgs("p", "s", "/a", "MUTATES", 600000)), &kept)
	bystander.Send(1, protocol.OpAcquire, parkArgs("old", "s", "/w", "MUTATES", 600000, 600000)) // acquire 3 parks
	waitFor(t, "the bystander's acquire to park", func() bool { return waiters(t, r, 12) == 1 })

	resp := r.Call(13, protocol.OpAcquire, acquireArgs("p", "s", "/c", "MUTATES", 600000))
	expectCode(t, "the acquire that panics", resp, protocol.CodeInternal)
	if !strings.Contains(resp.Error.Message, "was not made") {
		t.Errorf("INTERNAL message %q does not say the change was not made", resp.Error.Message)
	}
	if resp, err := bystander.TryRecv(); err == nil {
		expectCode(t, "the bystander's parked acquire", resp, protocol.CodeShuttingDown)
	}
	if code := d.ExitCode(t); code == 0 {
		t.Fatalf("klockd exited 0 after a panic mid-change; want non-zero. Logs:\n%s", d.Logs())
	}
	logs := d.Logs()
	for _, want := range []string{"panic while changing state", "KLOCKD_TEST_PANIC", "goroutine "} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}

	d.Restart(t)
	r = d.Raw(t)
	got := leaseFences(t, r, 20)
	want := map[string]uint64{held.LeaseID: held.Fence, kept.LeaseID: kept.Fence}
	if !maps.Equal(got, want) {
		t.Fatalf("leases after restart (id → fence) = %v; want exactly the acknowledged %v", got, want)
	}
	var g protocol.Grant
	mustOK(t, "acquire after restart", r.Call(21, protocol.OpAcquire, acquireArgs("p", "s", "/c", "MUTATES", 600000)), &g)
	if !g.Success || g.Fence <= kept.Fence {
		t.Fatalf("acquire after restart = %+v; want a grant with a fence above %d", g, kept.Fence)
	}
}
