package tests

import (
	"os"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// TestClientEveryOp drives every operation through clientlib against klockd
// and checks the typed results.
func TestClientEveryOp(t *testing.T) {
	d, c, ctx := startClient(t, nil)

	h, err := c.Hello(ctx)
	if err != nil || h.Protocol != protocol.Version || h.PID != d.Cmd.Process.Pid || h.MaxFrame != protocol.DefaultMaxFrame {
		t.Fatalf("Hello = %+v, %v; want protocol %d, pid %d, max_frame %d", h, err, protocol.Version, d.Cmd.Process.Pid, protocol.DefaultMaxFrame)
	}

	// Registration: assigned priorities grow; re-registering is a no-op.
	r1, err := c.Register(ctx, "auto-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.Register(ctx, "auto-2", nil)
	if err != nil || r2.Priority <= r1.Priority {
		t.Fatalf("Register(auto-2) = %+v, %v; want a priority above %d", r2, err, r1.Priority)
	}
	again, err := c.Register(ctx, "auto-1", nil)
	if err != nil || again.Priority != r1.Priority || again.RegisteredAt != r1.RegisteredAt {
		t.Errorf("Register(auto-1) again = %+v, %v; want the first registration %+v", again, err, r1)
	}
	if err := c.RegisterAgent(ctx, "a", 10); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.UnregisterAgent(ctx, "auto-2"); err != nil || !ok {
		t.Errorf("UnregisterAgent(auto-2) = %v, %v; want true", ok, err)
	}
	if ok, err := c.UnregisterAgent(ctx, "auto-2"); err != nil || ok {
		t.Errorf("UnregisterAgent(auto-2) twice = %v, %v; want false", ok, err)
	}
	agents, truncated, err := c.ListAgents(ctx, 0)
	if err != nil || truncated || len(agents) != 2 || agents[0].AgentID != "a" || agents[1].AgentID != "auto-1" {
		t.Errorf("ListAgents = %+v, %v, %v; want a then auto-1 (by priority)", agents, truncated, err)
	}
	if agents, truncated, err := c.ListAgents(ctx, 1); err != nil || !truncated || len(agents) != 1 {
		t.Errorf("ListAgents(limit 1) = %+v, %v, %v; want 1 agent, truncated", agents, truncated, err)
	}

	// All-or-nothing leases, kept alive as one Lease.
	l, err := c.Acquire(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s1", TTL: time.Minute, Intents: []clientlib.Intent{
			{ResourceType: "file", ResourcePath: "/src/./x/../a.go", Predicate: "mutates"},
			{ResourceType: "SYMBOL", ResourcePath: "pkg.F", Predicate: "PROVIDES"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ls := l.Leases()
	if len(ls) != 2 || ls[0].Resource != "FILE:/src/a.go" || ls[0].Predicate != "MUTATES" || ls[1].Resource != "SYMBOL:pkg.F" ||
		l.ID() != ls[0].LeaseID || l.Fence() != ls[0].Fence || ls[1].Fence <= ls[0].Fence {
		t.Errorf("Acquire of 2 intents = %+v; want FILE:/src/a.go MUTATES and SYMBOL:pkg.F, fences rising", ls)
	}
	m, err := c.AcquireMany(ctx, clientlib.AcquireRequest{
		AgentID: "a", SessionID: "s2", TTL: time.Minute, Intents: []clientlib.Intent{
			{ResourceType: "FILE", ResourcePath: "/src/b.go", Predicate: "MUTATES"},
			{ResourceType: "FILE", ResourcePath: "/src/a.go", Predicate: "MUTATES"}, // ours, in s1
		},
	})
	if err != nil || m.Success || m.Reason != "CONFLICT" || m.HeldBy != "a" || m.WaitTime <= 0 {
		t.Errorf("AcquireMany against our own lease in another session = %+v, %v; want CONFLICT", m, err)
	}

	// Heartbeat with a new ttl; listing by agent and prefix.
	exp, err := c.Heartbeat(ctx, ls[1].LeaseID, 2*time.Minute)
	if err != nil || time.Until(exp) < 100*time.Second {
		t.Errorf("Heartbeat(ttl 2m) = %v, %v; want an expiry about 2 minutes away", exp, err)
	}
	leases, truncated, err := c.ListLeases(ctx, clientlib.LeaseFilter{AgentID: "a", Prefix: "FILE:/src/"})
	if err != nil || truncated || len(leases) != 1 || leases[0].LeaseID != ls[0].LeaseID ||
		leases[0].OwnerUID != uint32(os.Getuid()) || leases[0].OwnerPID != int32(os.Getpid()) {
		t.Errorf("ListLeases(a, FILE:/src/) = %+v, %v, %v; want our FILE lease, owned by us", leases, truncated, err)
	}
	if leases, truncated, err := c.ListLeases(ctx, clientlib.LeaseFilter{Limit: 1}); err != nil || !truncated || len(leases) != 1 {
		t.Errorf("ListLeases(limit 1) = %d leases, %v, %v; want 1, truncated", len(leases), truncated, err)
	}

	// Admin: freeze denies new acquires, thaw lifts it, revoke ends a lease.
	if frozen, err := c.Freeze(ctx, "CONFIG_KEY", "db.url"); err != nil || !frozen {
		t.Fatalf("Freeze = %v, %v; want true", frozen, err)
	}
	r, err := c.AcquireLease(ctx, "a", "s1", "CONFIG_KEY", "db.url", "MUTATES", time.Minute)
	if err != nil || r.Success || r.Reason != "RESOURCE_LOCKED" {
		t.Errorf("AcquireLease on a frozen resource = %+v, %v; want RESOURCE_LOCKED", r, err)
	}
	if frozen, err := c.Thaw(ctx, "CONFIG_KEY", "db.url"); err != nil || frozen {
		t.Fatalf("Thaw = %v, %v; want false", frozen, err)
	}
	r, err = c.AcquireLease(ctx, "a", "s3", "CONFIG_KEY", "db.url", "MUTATES", time.Minute)
	if err != nil || !r.Success {
		t.Fatalf("AcquireLease after Thaw = %+v, %v; want a grant", r, err)
	}
	if ok, err := c.Revoke(ctx, r.LeaseID); err != nil || !ok {
		t.Errorf("Revoke = %v, %v; want true", ok, err)
	}
	if ok, err := c.Revoke(ctx, r.LeaseID); err != nil || ok {
		t.Errorf("Revoke twice = %v, %v; want false", ok, err)
	}

	// Counting, eviction, sessions.
	if n, err := c.ActiveLeaseCount(ctx); err != nil || n != 2 {
		t.Errorf("ActiveLeaseCount = %d, %v; want 2", n, err)
	}
	if n, err := c.EvictExpired(ctx); err != nil || n < 0 {
		t.Errorf("EvictExpired = %d, %v", n, err)
	}
	st, err := c.Stats(ctx)
	if err != nil || st.Leases != 2 || st.Agents != 2 || st.Grants < 2 || st.Fence < ls[1].Fence || st.Connections < 1 {
		t.Errorf("Stats = %+v, %v; want 2 leases, 2 agents, 2+ grants (granted requests), fence >= %d", st, err, ls[1].Fence)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := c.EndSession(ctx, "a", "s1"); err != nil || n != 0 {
		t.Errorf("EndSession(s1) after Release = %d, %v; want 0", n, err)
	}
	if n, err := c.ActiveLeaseCount(ctx); err != nil || n != 0 {
		t.Errorf("ActiveLeaseCount at the end = %d, %v; want 0", n, err)
	}
}
