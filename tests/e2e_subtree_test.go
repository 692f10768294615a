package tests

import (
	"fmt"
	"strings"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// Subtree leases (issue 14) over the real socket: a resource_path ending in
// '/' covers every key under it, and a request is decided against leases
// and queued requests above and below its key.

// registerOldYoung registers "old" (100) and "young" (300) over r.
func registerOldYoung(t *testing.T, r *harness.Raw) {
	t.Helper()
	mustOK(t, "register old", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "old", protocol.ArgPriority, 100)), nil)
	mustOK(t, "register young", r.Call(2, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "young", protocol.ArgPriority, 300)), nil)
}

// TestSubtreeYoungerDies: a younger agent's subtree request is refused DIE
// by an older holder of a file under it, and the denial names the file.
func TestSubtreeYoungerDies(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	registerOldYoung(t, r)
	var held protocol.Grant
	mustOK(t, "old holds a file", r.Call(3, protocol.OpAcquire, acquireArgs("old", "o", "/src/auth/login.ts", "MUTATES", 60000)), &held)
	var den protocol.Denial
	mustOK(t, "young asks the folder", r.Call(4, protocol.OpAcquire, acquireArgs("young", "y", "/src/", "CONSUMES", 60000)), &den)
	if den.Success || den.Reason != protocol.ReasonDie || den.HeldBy != "old" {
		t.Fatalf("acquire FILE:/src/ under old's FILE:/src/auth/login.ts = %+v; want DIE held_by old", den)
	}
	if want := "FILE:/src/auth/login.ts (under FILE:/src/) is held by old"; !strings.HasPrefix(den.Message, want) {
		t.Errorf("denial message %q; want it to start %q", den.Message, want)
	}
	// And the other way round: a subtree held by the older agent refuses
	// the younger one's files under it, at any depth.
	mustOK(t, "old holds /lib/", r.Call(5, protocol.OpAcquire, acquireArgs("old", "o", "/lib/", "MUTATES", 60000)), nil)
	for i, p := range []string{"/lib/a.go", "/lib/x/y/z.go", "/lib/x/", "/lib/"} {
		mustOK(t, "young asks "+p, r.Call(uint64(6+i), protocol.OpAcquire, acquireArgs("young", "y", p, "CONSUMES", 60000)), &den)
		if den.Success || den.Reason != protocol.ReasonDie || den.HeldBy != "old" {
			t.Errorf("acquire FILE:%s under old's FILE:/lib/ = %+v; want DIE held_by old", p, den)
		}
	}
}

// TestSubtreeOlderParksAndIsGranted: an older agent's subtree request parks
// behind a younger holder of a file under it, and is granted when that
// lease ends.
func TestSubtreeOlderParksAndIsGranted(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	admin := d.Raw(t)
	registerOldYoung(t, admin)
	young, old := d.Raw(t), d.Raw(t)
	var held [3]protocol.Grant
	for i := range held {
		mustOK(t, "young holds a file", young.Call(uint64(i+1), protocol.OpAcquire,
			acquireArgs("young", "y", fmt.Sprintf("/src/d%d/f.ts", i), "MUTATES", 60000)), &held[i])
	}
	old.Send(7, protocol.OpAcquire, parkArgs("old", "o", "/src/", "MUTATES", 60000, 30000))
	waitFor(t, "the subtree request to be queued", func() bool { return waiters(t, admin, 100) == 1 })
	// It is granted when the last lease under it ends, not before.
	for i, g := range held {
		var rel protocol.ReleaseResult
		mustOK(t, "young releases", young.Call(uint64(10+i), protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), &rel)
		if i < len(held)-1 && waiters(t, admin, uint64(200+i)) != 1 {
			t.Fatalf("the subtree request left the queue after %d of %d releases", i+1, len(held))
		}
	}
	resp := old.Recv()
	var g protocol.Grant
	mustOK(t, "old's wake-up", resp, &g)
	if resp.ID != 7 || !g.Success || g.Resource != "FILE:/src/" {
		t.Fatalf("answer to request %d = %+v; want a grant of FILE:/src/ for request 7", resp.ID, g)
	}
}

// TestSubtreeDoesNotCoverSiblings: /src/ covers neither /srcfoo.ts nor the
// plain key /src, and keys of another type are never covered.
func TestSubtreeDoesNotCoverSiblings(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	registerOldYoung(t, r)
	mustOK(t, "old holds /src/", r.Call(3, protocol.OpAcquire, acquireArgs("old", "o", "/src/", "MUTATES", 60000)), nil)
	for i, p := range []string{"/srcfoo.ts", "/src", "/sr"} {
		var g protocol.Grant
		mustOK(t, "young asks "+p, r.Call(uint64(4+i), protocol.OpAcquire, acquireArgs("young", "y", p, "MUTATES", 60000)), &g)
		if !g.Success {
			t.Errorf("acquire FILE:%s while FILE:/src/ is held = %+v; want a grant", p, g)
		}
	}
	sym := args(protocol.ArgAgentID, "young", protocol.ArgSessionID, "y", protocol.ArgResourceType, "SYMBOL",
		protocol.ArgResourcePath, "/src/a", protocol.ArgPredicate, "MUTATES", protocol.ArgTTL, 60000)
	var g protocol.Grant
	mustOK(t, "young asks SYMBOL:/src/a", r.Call(9, protocol.OpAcquire, sym), &g)
	if !g.Success {
		t.Errorf("acquire SYMBOL:/src/a while FILE:/src/ is held = %+v; want a grant", g)
	}
	// A relative path of another type passes through (only FILE paths name
	// places on disk), and its trailing '/' makes a subtree too.
	cfg := func(p, pred string) *protocol.Args {
		return args(protocol.ArgAgentID, "old", protocol.ArgSessionID, "o", protocol.ArgResourceType, "CONFIG_KEY",
			protocol.ArgResourcePath, p, protocol.ArgPredicate, pred, protocol.ArgTTL, 60000)
	}
	mustOK(t, "old holds CONFIG_KEY:db/", r.Call(10, protocol.OpAcquire, cfg("db/", "MUTATES")), &g)
	if !g.Success || g.Resource != "CONFIG_KEY:db/" {
		t.Fatalf("acquire CONFIG_KEY:db/ = %+v; want a grant", g)
	}
	young := cfg("db/url", "CONSUMES")
	young.AgentID = "young"
	var den protocol.Denial
	mustOK(t, "young asks CONFIG_KEY:db/url", r.Call(11, protocol.OpAcquire, young), &den)
	if den.Success || den.Reason != protocol.ReasonDie {
		t.Errorf("acquire CONFIG_KEY:db/url under old's CONFIG_KEY:db/ = %+v; want DIE", den)
	}
}

// TestSubtreeAcquireManyMixesLevels: acquire_many may mix levels, and is
// refused with INVALID_ARGUMENT when its own intents overlap with
// conflicting predicates.
func TestSubtreeAcquireManyMixesLevels(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	registerOldYoung(t, r)
	many := func(in ...protocol.Intent) *protocol.Args {
		return args(protocol.ArgAgentID, "old", protocol.ArgSessionID, "o", protocol.ArgTTL, 60000, protocol.ArgIntents, in)
	}
	var g protocol.AcquireManyGrant
	mustOK(t, "mixed levels", r.Call(3, protocol.OpAcquireMany, many(
		protocol.Intent{ResourceType: "FILE", ResourcePath: "/src/", Predicate: "CONSUMES"},
		protocol.Intent{ResourceType: "FILE", ResourcePath: "/src/a.ts", Predicate: "DEPENDS_ON"},
		protocol.Intent{ResourceType: "FILE", ResourcePath: "/lib/", Predicate: "MUTATES"})), &g)
	if !g.Success || len(g.Leases) != 3 {
		t.Fatalf("acquire_many over /src/, /src/a.ts and /lib/ = %+v; want three leases", g)
	}
	resp := r.Call(4, protocol.OpAcquireMany, many(
		protocol.Intent{ResourceType: "FILE", ResourcePath: "/x/", Predicate: "MUTATES"},
		protocol.Intent{ResourceType: "FILE", ResourcePath: "/x/y.ts", Predicate: "CONSUMES"}))
	expectCode(t, "acquire_many over /x/ MUTATES and /x/y.ts CONSUMES", resp, protocol.CodeInvalidArgument)
	if want := "intents[0] (MUTATES FILE:/x/) and intents[1] (CONSUMES FILE:/x/y.ts) overlap with conflicting predicates"; !strings.Contains(resp.Error.Message, want) {
		t.Errorf("message %q; want it to contain %q", resp.Error.Message, want)
	}
}

// TestSubtreeSurvivesKill: a subtree lease and leases under it come back
// after kill -9 and a restart, and still cover what they covered.
func TestSubtreeSurvivesKill(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	r := d.Raw(t)
	registerOldYoung(t, r)
	var sub, file protocol.Grant
	mustOK(t, "old holds /src/", r.Call(3, protocol.OpAcquire, acquireArgs("old", "o", "/src/", "CONSUMES", 600000)), &sub)
	mustOK(t, "young holds /src/x/y.ts", r.Call(4, protocol.OpAcquire, acquireArgs("young", "y", "/src/x/y.ts", "CONSUMES", 600000)), &file)
	if !sub.Success || !file.Success {
		t.Fatalf("grants before the kill: %+v %+v", sub, file)
	}
	d.Kill(t)
	d.Restart(t)

	r = d.Raw(t)
	got := leaseFences(t, r, 5)
	for _, g := range []protocol.Grant{sub, file} {
		if f, ok := got[g.LeaseID]; !ok || f != g.Fence {
			t.Errorf("lease %s on %s (fence %d) after kill -9: present %v fence %d", g.LeaseID, g.Resource, g.Fence, ok, f)
		}
	}
	var den protocol.Denial
	mustOK(t, "young asks /src/a after the restart", r.Call(6, protocol.OpAcquire, acquireArgs("young", "y2", "/src/a", "MUTATES", 60000)), &den)
	if den.Success || den.Reason != protocol.ReasonDie || den.HeldBy != "old" {
		t.Errorf("acquire FILE:/src/a under old's recovered FILE:/src/ = %+v; want DIE held_by old", den)
	}
	mustOK(t, "old asks / after the restart", r.Call(7, protocol.OpAcquire, acquireArgs("old", "o", "/", "MUTATES", 60000)), &den)
	if den.Success || den.Reason != protocol.ReasonWait || den.HeldBy != "young" {
		t.Errorf("acquire FILE:/ over young's recovered FILE:/src/x/y.ts = %+v; want WAIT held_by young", den)
	}
}

// TestSubtreeFreeze: freezing a subtree denies acquires on everything it
// covers and answers the requests queued under it; freezing a plain key
// affects only that key.
func TestSubtreeFreeze(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	admin := d.Raw(t) // the test runs as the daemon's uid: admin
	registerOldYoung(t, admin)
	young, old := d.Raw(t), d.Raw(t)
	mustOK(t, "young holds", young.Call(1, protocol.OpAcquire, acquireArgs("young", "y", "/src/a/b.ts", "MUTATES", 60000)), nil)
	old.Send(2, protocol.OpAcquire, parkArgs("old", "o", "/src/a/b.ts", "MUTATES", 60000, 30000))
	waitFor(t, "the request to be queued", func() bool { return waiters(t, admin, 100) == 1 })
	freeze := args(protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, "/src/")
	mustOK(t, "freeze /src/", admin.Call(3, protocol.OpFreeze, freeze), nil)
	var den protocol.Denial
	mustOK(t, "the queued request's answer", old.Recv(), &den)
	if den.Success || den.Reason != protocol.ReasonResourceLocked {
		t.Fatalf("request queued under a frozen subtree answered %+v; want RESOURCE_LOCKED", den)
	}
	mustOK(t, "old asks under the frozen subtree", old.Call(4, protocol.OpAcquire, acquireArgs("old", "o", "/src/c", "CONSUMES", 60000)), &den)
	if den.Success || den.Reason != protocol.ReasonResourceLocked {
		t.Errorf("acquire FILE:/src/c under frozen FILE:/src/ = %+v; want RESOURCE_LOCKED", den)
	}
	mustOK(t, "thaw /src/", admin.Call(5, protocol.OpThaw, freeze), nil)
	mustOK(t, "freeze a plain key", admin.Call(6, protocol.OpFreeze, args(protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, "/lib/z")), nil)
	var g protocol.Grant
	mustOK(t, "old asks /lib/", old.Call(7, protocol.OpAcquire, acquireArgs("old", "o", "/lib/", "CONSUMES", 60000)), &g)
	if !g.Success {
		t.Errorf("acquire FILE:/lib/ with only FILE:/lib/z frozen = %+v; want a grant", g)
	}
}
