package tests

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestSeniorWaitIsGrantedByRelease: a senior parked in WAIT is granted by
// the junior's release, long before its wait_timeout, and while it is
// queued a younger agent cannot overtake it, not even with a predicate the
// current holder would allow.
func TestSeniorWaitIsGrantedByRelease(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	admin := d.Raw(t)
	for i, a := range []struct {
		id  string
		pri int
	}{{"senior", 100}, {"junior", 200}, {"younger", 300}} {
		mustOK(t, "register "+a.id, admin.Call(uint64(i+1), protocol.OpRegisterAgent, args(protocol.ArgAgentID, a.id, protocol.ArgPriority, a.pri)), nil)
	}
	junior, senior, younger := d.Raw(t), d.Raw(t), d.Raw(t)

	var held protocol.Grant
	mustOK(t, "junior acquire", junior.Call(1, protocol.OpAcquire, acquireArgs("junior", "j", "/shared", "CONSUMES", 60000)), &held)
	if !held.Success {
		t.Fatalf("junior acquire = %+v; want grant", held)
	}

	const waitTimeout = 30000
	a := parkArgs("senior", "s", "/shared", "MUTATES", 60000, waitTimeout)
	senior.Send(7, protocol.OpAcquire, a)
	waitFor(t, "the senior to be queued", func() bool { return waiters(t, admin, 100) == 1 })

	// CONSUMES is compatible with the holder's CONSUMES but not with the
	// queued senior's MUTATES: the younger agent must die, not barge in.
	var denied protocol.Denial
	mustOK(t, "younger acquire", younger.Call(1, protocol.OpAcquire, acquireArgs("younger", "y", "/shared", "CONSUMES", 60000)), &denied)
	if denied.Success || denied.Reason != protocol.ReasonDie || denied.HeldBy != "senior" {
		t.Fatalf("younger acquire while the senior waits = %+v; want DIE held by senior", denied)
	}

	released := time.Now()
	var rel protocol.ReleaseResult
	mustOK(t, "junior release", junior.Call(2, protocol.OpRelease, args(protocol.ArgLeaseID, held.LeaseID)), &rel)
	resp := senior.Recv()
	var g protocol.Grant
	mustOK(t, "senior wake-up", resp, &g)
	if resp.ID != 7 || !g.Success || g.AgentID != "senior" || g.Fence <= held.Fence {
		t.Fatalf("senior answer id %d = %+v; want a grant for request 7 with a fence above %d", resp.ID, g, held.Fence)
	}
	if waited := time.Since(released); waited > waitTimeout*time.Millisecond/2 {
		t.Fatalf("senior answered %v after the release; the timeout, not the release, woke it", waited)
	}
}

// TestWaitTimeoutAnswersWait: a parked acquire whose holder never leaves
// is answered WAIT when its wait_timeout passes.
func TestWaitTimeoutAnswersWait(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "old", protocol.ArgPriority, 1)), nil)
	mustOK(t, "register", r.Call(2, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "new", protocol.ArgPriority, 2)), nil)
	mustOK(t, "hold", r.Call(3, protocol.OpAcquire, acquireArgs("new", "n", "/x", "MUTATES", 60000)), nil)
	a := parkArgs("old", "o", "/x", "MUTATES", 60000, 100)
	start := time.Now()
	var den protocol.Denial
	mustOK(t, "parked acquire", r.Call(4, protocol.OpAcquire, a), &den)
	if den.Success || den.Reason != protocol.ReasonWait {
		t.Fatalf("parked acquire = %+v; want WAIT after the timeout", den)
	}
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("answered after %v; before its 100ms wait_timeout", el)
	}
}

// TestShutdownAnswersWaiters: SIGTERM with acquires parked answers each
// SHUTTING_DOWN, exits 0 and removes the socket.
func TestShutdownAnswersWaiters(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	admin := d.Raw(t)
	mustOK(t, "register holder", admin.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "holder", protocol.ArgPriority, 1000)), nil)
	mustOK(t, "hold", admin.Call(2, protocol.OpAcquire, acquireArgs("holder", "h", "/busy", "MUTATES", 60000)), nil)

	const n = 5
	conns := make([]*harness.Raw, n)
	for i := range conns {
		agent := "waiter-" + string(rune('a'+i))
		mustOK(t, "register", admin.Call(uint64(10+i), protocol.OpRegisterAgent, args(protocol.ArgAgentID, agent, protocol.ArgPriority, i+1)), nil)
		conns[i] = d.Raw(t)
		a := parkArgs(agent, "s", "/busy", "CONSUMES", 60000, 60000)
		conns[i].Send(uint64(100+i), protocol.OpAcquire, a)
	}
	waitFor(t, "all waiters to be queued", func() bool { return waiters(t, admin, 50) == n })

	d.Stop(t) // asserts exit code 0
	for i, c := range conns {
		resp := c.Recv()
		if resp.OK || resp.ID != uint64(100+i) || resp.Error.Code != protocol.CodeShuttingDown {
			t.Errorf("waiter %d answer = %+v; want SHUTTING_DOWN for id %d", i, resp, 100+i)
		}
	}
	if _, err := os.Lstat(d.Socket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket %s still exists after shutdown (err %v)", d.Socket, err)
	}
	if logs := d.Logs(); !strings.Contains(logs, "klockd stopped") {
		t.Errorf("no stop line in the logs:\n%s", logs)
	}
}
