package tests

// The bind argument over the real klockd's socket, with this test process
// as the process the leases are bound to. bind_process_test.go kills
// other processes that hold bound leases.

import (
	"os"
	"strings"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// boundAcquireArgs is acquireArgs bound to the caller's process, without a
// ttl when ttl is 0.
func boundAcquireArgs(agent, session, path, pred string, ttl int) *protocol.Args {
	a := acquireArgs(agent, session, path, pred, ttl)
	if ttl == 0 {
		a = args(protocol.ArgAgentID, agent, protocol.ArgSessionID, session,
			protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, path, protocol.ArgPredicate, pred)
	}
	a.Bind = "process"
	a.Set(protocol.ArgBind)
	return a
}

func TestBindConformance(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 1)), nil)
	me := int32(os.Getpid())

	var g protocol.AcquireResult
	mustOK(t, "bound acquire", r.Call(2, protocol.OpAcquire, boundAcquireArgs("a", "s", "/x", "MUTATES", 0)), &g)
	if !g.Success || g.BoundPID != me || g.ExpiresAt != 0 {
		t.Fatalf("bound acquire without ttl = %+v; want granted, bound_pid %d, expires_at 0", g, me)
	}
	var many protocol.AcquireResult
	m := args(protocol.ArgAgentID, "a", protocol.ArgSessionID, "s", protocol.ArgTTL, 600_000,
		protocol.ArgIntents, []protocol.Intent{{ResourceType: "FILE", ResourcePath: "/m1", Predicate: "MUTATES"},
			{ResourceType: "CONFIG_KEY", ResourcePath: "k", Predicate: "CONSUMES"}})
	m.Bind = "process"
	m.Set(protocol.ArgBind)
	mustOK(t, "bound acquire_many", r.Call(3, protocol.OpAcquireMany, m), &many)
	if len(many.Leases) != 2 || many.Leases[1].BoundPID != me || many.Leases[1].ExpiresAt == 0 {
		t.Fatalf("bound acquire_many with ttl = %+v; want 2 leases bound to %d with an expiry", many, me)
	}
	var st protocol.StatsResult
	mustOK(t, "stats", r.Call(4, protocol.OpStats, nil), &st)
	if st.BoundProcesses != 1 || st.Pidfds != 1 {
		t.Errorf("stats = %+v; want 1 bound process watched by 1 pidfd", st)
	}

	for i, tt := range []struct {
		args *protocol.Args
		code protocol.Code
		want string
	}{
		{func() *protocol.Args {
			a := boundAcquireArgs("a", "s", "/y", "MUTATES", 0)
			a.Bind = "Process"
			return a
		}(),
			protocol.CodeInvalidArgument, "bind"},
		{acquireArgs("a", "s", "/y", "MUTATES", 0), protocol.CodeInvalidArgument, "ttl"},
		{boundAcquireArgs("a", "s", "/y", "NOPE", 0), protocol.CodeInvalidArgument, "predicate"},
		{boundAcquireArgs("a", "s", "/y", "MUTATES", 24*3600*1000+1), protocol.CodeInvalidArgument, "ttl"},
	} {
		resp := r.Call(uint64(10+i), protocol.OpAcquire, tt.args)
		expectCode(t, "bad bound acquire", resp, tt.code)
		if !resp.OK && !strings.Contains(resp.Error.Message, tt.want) {
			t.Errorf("error %q does not mention %q", resp.Error.Message, tt.want)
		}
	}
	// The idem key answers the same binding only.
	withIdem := boundAcquireArgs("a", "s", "/i", "MUTATES", 0)
	withIdem.Idem = "k"
	withIdem.Set(protocol.ArgIdem)
	mustOK(t, "bound acquire with idem", r.Call(20, protocol.OpAcquire, withIdem), &g)
	unbound := acquireArgs("a", "s", "/i", "MUTATES", 1000)
	unbound.Idem = "k"
	unbound.Set(protocol.ArgIdem)
	expectCode(t, "the idem key of a bound lease, unbound", r.Call(21, protocol.OpAcquire, unbound), protocol.CodeInvalidArgument)
}

// TestBoundLeaseSurvivesReconnect: a bound lease does not end when its
// process closes its connection; the process renews and releases it from a
// new one.
func TestBoundLeaseSurvivesReconnect(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 1)), nil)
	var g protocol.AcquireResult
	mustOK(t, "bound acquire", r.Call(2, protocol.OpAcquire, boundAcquireArgs("a", "s", "/x", "MUTATES", 60_000)), &g)
	r.Conn.Close()

	r2 := d.Raw(t)
	var ls protocol.ListLeasesResult
	waitFor(t, "the first connection to be closed", func() bool {
		var st protocol.StatsResult
		mustOK(t, "stats", r2.Call(3, protocol.OpStats, nil), &st)
		return st.Connections == 1
	})
	mustOK(t, "list", r2.Call(4, protocol.OpListLeases, nil), &ls)
	if len(ls.Leases) != 1 || ls.Leases[0].LeaseID != g.LeaseID || ls.Leases[0].BoundPID != int32(os.Getpid()) {
		t.Fatalf("leases after the connection closed = %+v; want the bound lease kept", ls.Leases)
	}
	var hb protocol.HeartbeatResult
	mustOK(t, "heartbeat from a new connection", r2.Call(5, protocol.OpHeartbeat, args(protocol.ArgLeaseID, g.LeaseID)), &hb)
	var rel protocol.ReleaseResult
	mustOK(t, "release from a new connection", r2.Call(6, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), &rel)
	if !rel.Released {
		t.Errorf("release = %+v; want released", rel)
	}
}
