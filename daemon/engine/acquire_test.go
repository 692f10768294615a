package engine

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
)

// TestMatrixEveryCell checks every (holder, requester) cell in both orders:
// a senior holder makes a conflicting junior DIE; a junior holder makes a
// conflicting senior WAIT; compatible predicates are granted either way.
func TestMatrixEveryCell(t *testing.T) {
	for p := Provides; p <= Renames; p++ {
		for q := Provides; q <= Renames; q++ {
			t.Run(p.String()+"/"+q.String(), func(t *testing.T) {
				e := newTestEngine(t)
				mustRegister(t, e, "senior", 100)
				mustRegister(t, e, "junior", 200)
				// Senior holds p, junior asks q.
				mustGrant(t, e, t0, "senior", "s1", "/a", p.String())
				if Conflicts(p, q) {
					d := mustDeny(t, e, t0, "junior", "s2", "/a", q.String(), protocol.ReasonDie)
					require.Equal(t, "senior", d.HeldBy)
				} else {
					mustGrant(t, e, t0, "junior", "s2", "/a", q.String())
				}
				// Junior holds p, senior asks q.
				mustGrant(t, e, t0, "junior", "s2", "/b", p.String())
				if Conflicts(p, q) {
					d := mustDeny(t, e, t0, "senior", "s1", "/b", q.String(), protocol.ReasonWait)
					require.Equal(t, "junior", d.HeldBy)
				} else {
					mustGrant(t, e, t0, "senior", "s1", "/b", q.String())
				}
				replayEqual(t, e, e.Records())
			})
		}
	}
}

func TestDenialMessagesAndWaitTime(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "agent-senior", 100)
	mustRegister(t, e, "agent-junior", 200)
	mustGrantReq(t, e, t0, req1("agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", 500))
	d := mustDeny(t, e, t0+100, "agent-junior", "s2", "/src/auth.ts", "MUTATES", protocol.ReasonDie)
	require.Equal(t, "FILE:/src/auth.ts is held by agent-senior (MUTATES, priority 100); agent-junior (priority 200) is younger and must die and retry", d.Message)
	require.Equal(t, int64(400), d.WaitTime) // ms until the lease expires
	require.Equal(t, "agent-senior", d.HeldBy)

	mustGrant(t, e, t0, "agent-junior", "s2", "/src/x.ts", "MUTATES")
	d = mustDeny(t, e, t0, "agent-senior", "s1", "/src/x.ts", "DELETES", protocol.ReasonWait)
	require.Equal(t, "FILE:/src/x.ts is held by agent-junior (MUTATES, priority 200); agent-senior (priority 100) is older and may wait", d.Message)
	require.Equal(t, int64(1000), d.WaitTime) // capped

	d = mustDeny(t, e, t0+499, "agent-junior", "s2", "/src/auth.ts", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, int64(1), d.WaitTime)
}

func TestEqualPrioritiesDie(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 100)
	mustRegister(t, e, "b", 100)
	mustGrant(t, e, t0, "a", "s", "/x", "MUTATES")
	d := mustDeny(t, e, t0, "b", "s", "/x", "MUTATES", protocol.ReasonDie)
	require.Contains(t, d.Message, "equal priority")
	mustGrant(t, e, t0, "b", "s", "/y", "MUTATES")
	mustDeny(t, e, t0, "a", "s", "/y", "MUTATES", protocol.ReasonDie)
}

func TestReentrancyAndConflict(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 100)
	l1 := mustGrant(t, e, t0, "a", "s1", "/x", "MUTATES")
	l2 := mustGrant(t, e, t0, "a", "s1", "/x", "DELETES") // same agent+session: re-entrant
	require.NotEqual(t, l1.ID, l2.ID)
	require.Greater(t, l2.Fence, l1.Fence)
	d := mustDeny(t, e, t0, "a", "s2", "/x", "MUTATES", protocol.ReasonConflict)
	require.Equal(t, "a", d.HeldBy)
	require.Contains(t, d.Message, `cannot wait for itself`)
	// Compatible predicates from another session of the same agent coexist.
	mustGrant(t, e, t0, "a", "s3", "/y", "CONSUMES")
	mustGrant(t, e, t0, "a", "s4", "/y", "CONSUMES")
	require.Equal(t, 4, e.ActiveLeaseCount(t0))
}

func TestSessionExpiredAndFrozen(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 100)
	l := mustGrant(t, e, t0, "a", "s1", "/x", "MUTATES")
	mustGrant(t, e, t0, "a", "s1", "/y", "MUTATES")
	n, wake, err := e.EndSession(t0, alice, "a", "s1")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Empty(t, wake)
	ok, _, err := e.Release(t0, alice, l.ID)
	require.NoError(t, err)
	require.False(t, ok)
	d := mustDeny(t, e, t0, "a", "s1", "/z", "CONSUMES", protocol.ReasonSessionExpired)
	require.Contains(t, d.Message, `session "s1" of a has ended`)
	n, _, err = e.EndSession(t0, alice, "a", "s1") // again: nothing
	require.NoError(t, err)
	require.Zero(t, n)
	mustGrant(t, e, t0, "a", "s2", "/x", "MUTATES")

	frozen, _, err := e.Freeze(t0, root, "FILE", "/f")
	require.NoError(t, err)
	require.True(t, frozen)
	d = mustDeny(t, e, t0, "a", "s2", "/f", "CONSUMES", protocol.ReasonResourceLocked)
	require.Contains(t, d.Message, "FILE:/f is frozen")
	// Frozen wins over an ended session (DESIGN.md step 1 order).
	mustDeny(t, e, t0, "a", "s1", "/f", "CONSUMES", protocol.ReasonResourceLocked)
	frozen, err = e.Thaw(t0, root, "file", "/./f")
	require.NoError(t, err)
	require.False(t, frozen)
	mustGrant(t, e, t0, "a", "s2", "/f", "CONSUMES")
	replayEqual(t, e, e.Records())
}

func TestFreezeKeepsHeldLeases(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 100)
	l := mustGrant(t, e, t0, "a", "s", "/x", "MUTATES")
	_, _, err := e.Freeze(t0, Caller{UID: 999}, "FILE", "/x") // AdminUID
	require.NoError(t, err)
	hb, err := e.Heartbeat(t0+10, alice, l.ID, 0)
	require.NoError(t, err)
	require.Equal(t, t0+10+60_000, hb.ExpiresAt)
	require.Equal(t, 1, e.ActiveLeaseCount(t0))
}

func TestUnknownAgent(t *testing.T) {
	e := newTestEngine(t)
	_, err := e.Acquire(t0, alice, req1("ghost", "s", "FILE", "/x", "MUTATES", 1000))
	requireCode(t, err, protocol.CodeUnknownAgent, `"ghost"`)
	_, _, err = e.EndSession(t0, alice, "ghost", "s")
	requireCode(t, err, protocol.CodeUnknownAgent)
	// Validation wins over lookup.
	_, err = e.Acquire(t0, alice, req1("ghost", "s", "FILE", "/x", "FOO", 1000))
	requireCode(t, err, protocol.CodeInvalidArgument, `predicate "FOO"`)
}

func TestInvalidArguments(t *testing.T) {
	e := New(Config{MaxTTL: 10_000})
	mustRegister(t, e, "a", 1)
	long := strings.Repeat("x", 257)
	// with is a valid request changed by change.
	with := func(change func(*AcquireRequest)) AcquireRequest {
		r := req1("a", "s", "FILE", "/x", "MUTATES", 1)
		change(&r)
		return r
	}
	cases := []struct {
		name string
		req  AcquireRequest
		want string
	}{
		{"empty agent", req1("", "s", "FILE", "/x", "MUTATES", 1), "agent_id is required"},
		{"long agent", req1(long, "s", "FILE", "/x", "MUTATES", 1), "agent_id is 257 bytes"},
		{"ctl agent", req1("a\x01", "s", "FILE", "/x", "MUTATES", 1), "agent_id contains control character"},
		{"empty session", req1("a", "", "FILE", "/x", "MUTATES", 1), "session_id is required"},
		{"long session", req1("a", long, "FILE", "/x", "MUTATES", 1), "session_id"},
		{"nul session", req1("a", "s\x00", "FILE", "/x", "MUTATES", 1), "session_id"},
		{"type", req1("a", "s", "DIR", "/x", "MUTATES", 1), `resource_type "DIR" is not one of FILE`},
		{"empty type", req1("a", "s", "", "/x", "MUTATES", 1), "resource_type"},
		{"empty path", req1("a", "s", "FILE", "", "MUTATES", 1), "resource_path is required"},
		{"long path", req1("a", "s", "FILE", "/"+strings.Repeat("p", 4096), "MUTATES", 1), "resource_path is 4097 bytes"},
		{"ctl path", req1("a", "s", "FILE", "/x\x7f", "MUTATES", 1), "resource_path"},
		{"predicate", req1("a", "s", "FILE", "/x", "WRITES", 1), `predicate "WRITES" is not one of PROVIDES, CONSUMES, MUTATES, DELETES, DEPENDS_ON, RENAMES`},
		{"zero ttl", req1("a", "s", "FILE", "/x", "MUTATES", 0), "ttl 0 is out of range; allowed 1..10000 ms"},
		{"negative ttl", req1("a", "s", "FILE", "/x", "MUTATES", -5), "ttl -5"},
		{"long ttl", req1("a", "s", "FILE", "/x", "MUTATES", 10_001), "ttl 10001"},
		{"wait_timeout", with(func(r *AcquireRequest) { r.WaitTimeout = -1 }), "wait_timeout -1"},
		{"idem", with(func(r *AcquireRequest) { r.Idem = strings.Repeat("k", 65) }), "idem is 65 bytes"},
		{"two intents", with(func(r *AcquireRequest) { r.Intents = append(r.Intents, r.Intents[0]) }), "exactly one"},
		{"no intents", with(func(r *AcquireRequest) { r.Intents = nil }), "exactly one"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.Acquire(t0, alice, c.req)
			requireCode(t, err, protocol.CodeInvalidArgument, c.want)
		})
	}

	many := AcquireRequest{AgentID: "a", SessionID: "s", TTL: 1}
	_, err := e.AcquireMany(t0, alice, many)
	requireCode(t, err, protocol.CodeInvalidArgument, "intents has 0 entries; allowed 1..64")
	for i := 0; i < 65; i++ {
		many.Intents = append(many.Intents, Intent{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/%d", i), Predicate: "CONSUMES"})
	}
	_, err = e.AcquireMany(t0, alice, many)
	requireCode(t, err, protocol.CodeInvalidArgument, "intents has 65 entries")
	many.Intents = many.Intents[:3]
	many.Intents[2].Predicate = "nope"
	_, err = e.AcquireMany(t0, alice, many)
	requireCode(t, err, protocol.CodeInvalidArgument, `intents[2].predicate "nope"`)
	many.Intents[2].Predicate = "CONSUMES"
	for _, c := range []struct {
		in   Intent
		want string
	}{
		{Intent{ResourceType: "DIR", ResourcePath: "/x", Predicate: "CONSUMES"}, `intents[1].resource_type "DIR"`},
		{Intent{ResourceType: "FILE", ResourcePath: "x", Predicate: "CONSUMES"}, `intents[1].resource_path "x" is relative`},
		{Intent{ResourceType: "FILE", ResourcePath: "", Predicate: "CONSUMES"}, `intents[1].resource_path is required`},
		{Intent{ResourceType: "FILE", ResourcePath: strings.Repeat("/a", MaxPathDepth+1), Predicate: "CONSUMES"}, fmt.Sprintf("intents[1].resource_path has %d levels", MaxPathDepth+1)},
		{Intent{ResourceType: "FILE", ResourcePath: "/x", Predicate: "CONSUMES", ClientPath: "a\x01"}, `intents[1].client_path contains control character`},
	} {
		in := many.Intents[1]
		many.Intents[1] = c.in
		_, err = e.AcquireMany(t0, alice, many)
		requireCode(t, err, protocol.CodeInvalidArgument, c.want)
		many.Intents[1] = in
	}

	_, err = e.Register(t0, alice, "", 1, true)
	requireCode(t, err, protocol.CodeInvalidArgument, "agent_id")
	_, err = e.Register(t0, alice, "n", -1, true)
	requireCode(t, err, protocol.CodeInvalidArgument, "priority -1")
	_, _, err = e.Release(t0, alice, "")
	requireCode(t, err, protocol.CodeInvalidArgument, "lease_id")
	_, err = e.Heartbeat(t0, alice, "x", -1)
	requireCode(t, err, protocol.CodeInvalidArgument, "ttl -1")
	_, err = e.Heartbeat(t0, alice, "", 0)
	requireCode(t, err, protocol.CodeInvalidArgument, "lease_id")
	_, _, err = e.Revoke(t0, root, "")
	requireCode(t, err, protocol.CodeInvalidArgument, "lease_id")
	_, _, err = e.EndSession(t0, alice, "a", "")
	requireCode(t, err, protocol.CodeInvalidArgument, "session_id")
	_, _, err = e.Freeze(t0, root, "BAD", "/x")
	requireCode(t, err, protocol.CodeInvalidArgument, "resource_type")
	_, err = e.Thaw(t0, root, "FILE", "")
	requireCode(t, err, protocol.CodeInvalidArgument, "resource_path")
	_, _, err = e.ListLeases(t0, LeaseFilter{Limit: 10001})
	requireCode(t, err, protocol.CodeInvalidArgument, "limit 10001")
	_, _, err = e.ListLeases(t0, LeaseFilter{Limit: -1})
	requireCode(t, err, protocol.CodeInvalidArgument, "limit -1")
	_, _, err = e.ListLeases(t0, LeaseFilter{ResourcePrefix: "\x00"})
	requireCode(t, err, protocol.CodeInvalidArgument, "resource_prefix")
	_, _, err = e.ListAgents(t0, 20000)
	requireCode(t, err, protocol.CodeInvalidArgument, "limit")
	_, err = e.Unregister(t0, alice, long)
	requireCode(t, err, protocol.CodeInvalidArgument, "agent_id")
}

func TestAcquireMany(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "senior", 100)
	mustRegister(t, e, "junior", 200)
	mustRegister(t, e, "mid", 150)
	mustGrant(t, e, t0, "junior", "j", "/b", "MUTATES")
	mustGrant(t, e, t0, "senior", "s", "/c", "MUTATES")
	many := func(agent, session string, paths ...string) Result {
		req := AcquireRequest{AgentID: agent, SessionID: session, TTL: 1000}
		for _, p := range paths {
			req.Intents = append(req.Intents, Intent{ResourceType: "FILE", ResourcePath: p, Predicate: "MUTATES"})
		}
		r, err := e.AcquireMany(t0, alice, req)
		require.NoError(t, err)
		return r
	}
	// WAIT on /b, DIE on /c: DIE wins, nothing granted.
	r := many("mid", "m", "/a", "/b", "/c")
	require.False(t, r.Granted)
	require.Equal(t, protocol.ReasonDie, r.Denial.Reason)
	require.Equal(t, "senior", r.Denial.HeldBy)
	require.Equal(t, 2, e.ActiveLeaseCount(t0))
	// Only WAIT.
	r = many("mid", "m", "/a", "/b")
	require.Equal(t, protocol.ReasonWait, r.Denial.Reason)
	require.Equal(t, "junior", r.Denial.HeldBy)
	// All free: one lease per intent, in order, increasing fences.
	r = many("mid", "m", "/a", "/d", "/e")
	require.True(t, r.Granted)
	require.Len(t, r.Leases, 3)
	for i, p := range []string{"/a", "/d", "/e"} {
		require.Equal(t, "FILE:"+p, r.Leases[i].Resource)
		if i > 0 {
			require.Greater(t, r.Leases[i].Fence, r.Leases[i-1].Fence)
		}
	}
	// CONFLICT beats DIE.
	r = many("senior", "other", "/b", "/c")
	require.Equal(t, protocol.ReasonConflict, r.Denial.Reason)
	require.Equal(t, 5, e.ActiveLeaseCount(t0))
	replayEqual(t, e, e.Records())
}

func TestPermissions(t *testing.T) {
	e := newTestEngine(t) // AdminUID 999
	_, err := e.Register(t0, alice, "a", 100, true)
	require.NoError(t, err)
	// Only the owner uid or root may act for the agent.
	_, err = e.Acquire(t0, bob, req1("a", "s", "FILE", "/x", "MUTATES", 1000))
	requireCode(t, err, protocol.CodePermissionDenied, "uid 1001")
	_, err = e.Register(t0, bob, "a", 5, true)
	requireCode(t, err, protocol.CodePermissionDenied)
	_, err = e.Unregister(t0, bob, "a")
	requireCode(t, err, protocol.CodePermissionDenied)
	_, _, err = e.EndSession(t0, bob, "a", "s")
	requireCode(t, err, protocol.CodePermissionDenied)
	r, err := e.Acquire(t0, root, req1("a", "s", "FILE", "/x", "MUTATES", 1000))
	require.NoError(t, err)
	require.True(t, r.Granted)
	l := r.Leases[0]
	require.Equal(t, uint32(0), l.OwnerUID)
	require.Equal(t, int32(1), l.OwnerPID)
	// Release/heartbeat: owner uid, the agent's uid or root.
	_, err = e.Heartbeat(t0, bob, l.ID, 0)
	requireCode(t, err, protocol.CodePermissionDenied)
	_, _, err = e.Release(t0, bob, l.ID)
	requireCode(t, err, protocol.CodePermissionDenied)
	_, err = e.Heartbeat(t0, alice, l.ID, 0)
	require.NoError(t, err)
	ok, _, err := e.Release(t0, bob, "unknown-lease")
	require.NoError(t, err)
	require.False(t, ok)
	// Admin ops: root or AdminUID.
	_, _, err = e.Revoke(t0, alice, l.ID)
	requireCode(t, err, protocol.CodePermissionDenied, "admin")
	_, _, err = e.Freeze(t0, alice, "FILE", "/x")
	requireCode(t, err, protocol.CodePermissionDenied)
	_, err = e.Thaw(t0, bob, "FILE", "/x")
	requireCode(t, err, protocol.CodePermissionDenied)
	ok, _, err = e.Revoke(t0, Caller{UID: 999}, l.ID)
	require.NoError(t, err)
	require.True(t, ok)
	ok, _, err = e.Revoke(t0, root, l.ID)
	require.NoError(t, err)
	require.False(t, ok)
	ok, err = e.Unregister(t0, root, "a")
	require.NoError(t, err)
	require.True(t, ok)
}

func TestRegister(t *testing.T) {
	e := newTestEngine(t)
	a, err := e.Register(t0, alice, "auto1", 0, false)
	require.NoError(t, err)
	require.Equal(t, t0, a.Priority)
	require.Equal(t, t0, a.RegisteredAt)
	b, err := e.Register(t0, alice, "auto2", 0, false) // same ms: still strictly increasing
	require.NoError(t, err)
	require.Equal(t, t0+1, b.Priority)
	c, err := e.Register(t0-50, alice, "auto3", 0, false) // clock went back
	require.NoError(t, err)
	require.Equal(t, t0+2, c.Priority)
	// Again without priority: no-op.
	a2, err := e.Register(t0+10, alice, "auto1", 0, false)
	require.NoError(t, err)
	require.Equal(t, a, a2)
	// Different priority while idle: applied.
	a3, err := e.Register(t0+10, alice, "auto1", 7, true)
	require.NoError(t, err)
	require.Equal(t, int64(7), a3.Priority)
	require.Equal(t, t0, a3.RegisteredAt)
	// While holding: PRIORITY_CONFLICT; same priority: fine.
	mustGrant(t, e, t0, "auto1", "s", "/x", "MUTATES")
	_, err = e.Register(t0, alice, "auto1", 8, true)
	requireCode(t, err, protocol.CodePriorityConflict)
	_, err = e.Register(t0, alice, "auto1", 7, true)
	require.NoError(t, err)
	_, err = e.Unregister(t0, alice, "auto1")
	requireCode(t, err, protocol.CodePriorityConflict)
	// Once the lease has expired (even if not removed yet) it no longer holds.
	_, err = e.Register(t0+60_000, alice, "auto1", 8, true)
	require.NoError(t, err)
	ok, err := e.Unregister(t0+60_000, alice, "auto1")
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = e.Unregister(t0+60_000, alice, "auto1")
	require.NoError(t, err)
	require.False(t, ok)
	_, err = e.Acquire(t0+60_000, alice, req1("auto1", "s", "FILE", "/y", "MUTATES", 1))
	requireCode(t, err, protocol.CodeUnknownAgent)
	// Re-registered by another uid before the old lease was removed.
	_, err = e.Register(t0+60_001, bob, "auto1", 3, true)
	require.NoError(t, err)
	n, _ := e.Expire(t0 + 60_001)
	require.Equal(t, 1, n)
	agents, trunc, err := e.ListAgents(t0+60_001, 0)
	require.NoError(t, err)
	require.False(t, trunc)
	require.Equal(t, []string{"auto1", "auto2", "auto3"}, agentIDs(agents))
	require.Equal(t, uint32(1001), agents[0].OwnerUID)
	replayEqual(t, e, e.Records())
}

func agentIDs(as []Agent) []string {
	var ids []string
	for _, a := range as {
		ids = append(ids, a.ID)
	}
	return ids
}

func TestIdem(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 100)
	req := req1("a", "s", "FILE", "/x", "MUTATES", 1000)
	req.Idem = "k1"
	r1, err := e.Acquire(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r1.Granted)
	r2, err := e.Acquire(t0+1, alice, req)
	require.NoError(t, err)
	require.Equal(t, r1, r2)
	require.Equal(t, 1, e.ActiveLeaseCount(t0))
	// Same key, different request.
	bad := req1("a", "s", "FILE", "/y", "MUTATES", 1000)
	bad.Idem = "k1"
	_, err = e.Acquire(t0, alice, bad)
	requireCode(t, err, protocol.CodeInvalidArgument, `idem "k1"`)
	bad = req1("a", "s", "FILE", "/x", "CONSUMES", 1000)
	bad.Idem = "k1"
	_, err = e.Acquire(t0, alice, bad)
	requireCode(t, err, protocol.CodeInvalidArgument, `idem "k1"`)
	// acquire_many shares the key space.
	many := AcquireRequest{AgentID: "a", SessionID: "s", TTL: 1000, Idem: "k1",
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: "/x", Predicate: "MUTATES"}, {ResourceType: "FILE", ResourcePath: "/z", Predicate: "MUTATES"}}}
	_, err = e.AcquireMany(t0, alice, many)
	requireCode(t, err, protocol.CodeInvalidArgument, `idem "k1"`)
	many.Idem = "k2"
	m1, err := e.AcquireMany(t0, alice, many)
	require.NoError(t, err)
	require.True(t, m1.Granted)
	m2, err := e.AcquireMany(t0, alice, many)
	require.NoError(t, err)
	require.Equal(t, m1, m2)
	// Snapshot/restore keeps the key.
	f := New(Config{})
	require.NoError(t, f.Restore(e.Snapshot()))
	m3, err := f.AcquireMany(t0, alice, many)
	require.NoError(t, err)
	require.Equal(t, m1, m3)
	// Key free again after release.
	ok, _, err := e.Release(t0, alice, r1.Leases[0].ID)
	require.NoError(t, err)
	require.True(t, ok)
	r3, err := e.Acquire(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r3.Granted)
	require.NotEqual(t, r1.Leases[0].ID, r3.Leases[0].ID)
	// Key free again after expiry, even before removal.
	r4, err := e.Acquire(t0+1000, alice, req)
	require.NoError(t, err)
	require.NotEqual(t, r3.Leases[0].ID, r4.Leases[0].ID)
	// Keys are per agent.
	mustRegister(t, e, "b", 200)
	other := req1("b", "s", "FILE", "/q", "MUTATES", 1000)
	other.Idem = "k1"
	r5, err := e.Acquire(t0+1000, alice, other)
	require.NoError(t, err)
	require.True(t, r5.Granted)
	replayEqual(t, e, e.Records())
}

func TestLimits(t *testing.T) {
	e := New(Config{MaxLeases: 2, MaxWaiters: 1})
	mustRegister(t, e, "senior", 1)
	mustRegister(t, e, "junior", 2)
	mustGrant(t, e, t0, "junior", "s", "/a", "MUTATES")
	mustGrantReq(t, e, t0, req1("junior", "s", "FILE", "/b", "MUTATES", 10))
	_, err := e.Acquire(t0, alice, req1("junior", "s", "FILE", "/c", "MUTATES", 10))
	requireCode(t, err, protocol.CodeResourceExhausted, "lease limit (2)")
	// Expired leases do not count against the limit.
	mustGrant(t, e, t0+10, "junior", "s", "/c", "MUTATES")
	w := req1("senior", "s", "FILE", "/a", "MUTATES", 10)
	w.WaitTimeout = 100
	r, err := e.Acquire(t0+10, alice, w)
	require.NoError(t, err)
	require.True(t, r.Queued)
	w.Intents[0].ResourcePath = "/c"
	_, err = e.Acquire(t0+10, alice, w)
	requireCode(t, err, protocol.CodeResourceExhausted, "waiter limit (1)")
}

func TestHeartbeat(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	l := mustGrantReq(t, e, t0, req1("a", "s", "FILE", "/x", "MUTATES", 100))
	at, ok := e.NextDeadline()
	require.True(t, ok)
	require.Equal(t, t0+100, at)
	hb, err := e.Heartbeat(t0+50, alice, l.ID, 0)
	require.NoError(t, err)
	require.Equal(t, t0+150, hb.ExpiresAt)
	at, _ = e.NextDeadline()
	require.Equal(t, t0+150, at) // fixed in place in the heap
	hb, err = e.Heartbeat(t0+60, alice, l.ID, 500)
	require.NoError(t, err)
	require.Equal(t, t0+560, hb.ExpiresAt)
	require.Equal(t, int64(500), hb.TTL)
	hb, err = e.Heartbeat(t0+100, alice, l.ID, 0)
	require.NoError(t, err)
	require.Equal(t, t0+600, hb.ExpiresAt)
	_, err = e.Heartbeat(t0+600, alice, l.ID, 0)
	requireCode(t, err, protocol.CodeNotFound)
	_, err = e.Heartbeat(t0, alice, "nope", 0)
	requireCode(t, err, protocol.CodeNotFound)
	n, _ := e.Expire(t0 + 599)
	require.Zero(t, n)
	n, _ = e.Expire(t0 + 600)
	require.Equal(t, 1, n)
	_, ok = e.NextDeadline()
	require.False(t, ok)
	replayEqual(t, e, e.Records())
}

func TestQueries(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "b", 200)
	mustRegister(t, e, "a", 100)
	mustGrant(t, e, t0, "a", "s", "/src/z", "CONSUMES")
	mustGrant(t, e, t0, "b", "s", "/src/z", "CONSUMES")
	mustGrant(t, e, t0, "a", "s", "/src/a", "MUTATES")
	mustGrant(t, e, t0, "b", "s", "/doc", "MUTATES")
	mustGrantReq(t, e, t0, req1("a", "s", "SYMBOL", "x", "MUTATES", 5))
	require.Equal(t, 5, e.ActiveLeaseCount(t0))
	require.Equal(t, 4, e.ActiveLeaseCount(t0+5))

	ls, trunc, err := e.ListLeases(t0+5, LeaseFilter{})
	require.NoError(t, err)
	require.False(t, trunc)
	require.Equal(t, []string{"FILE:/doc", "FILE:/src/a", "FILE:/src/z", "FILE:/src/z"}, resources(ls))
	require.Less(t, ls[2].Fence, ls[3].Fence)
	ls, trunc, err = e.ListLeases(t0+5, LeaseFilter{ResourcePrefix: "FILE:/src/", Limit: 2})
	require.NoError(t, err)
	require.True(t, trunc)
	require.Equal(t, []string{"FILE:/src/a", "FILE:/src/z"}, resources(ls))
	ls, _, err = e.ListLeases(t0+5, LeaseFilter{AgentID: "b"})
	require.NoError(t, err)
	require.Equal(t, []string{"FILE:/doc", "FILE:/src/z"}, resources(ls))
	ls, _, err = e.ListLeases(t0, LeaseFilter{AgentID: "nobody"})
	require.NoError(t, err)
	require.Empty(t, ls)

	agents, trunc, err := e.ListAgents(t0, 1)
	require.NoError(t, err)
	require.True(t, trunc)
	require.Equal(t, Agent{ID: "a", Priority: 100, RegisteredAt: t0, OwnerUID: 1000, Leases: 3}, agents[0])
	st := e.Stats()
	require.Equal(t, Stats{Agents: 2, Leases: 5, Grants: 5, Fence: 5}, st)
}

func resources(ls []Lease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Resource)
	}
	return out
}

func TestLeaseIDsAreUUIDv4(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		l := mustGrant(t, e, t0, "a", "s", "/x", "CONSUMES")
		u, err := uuid.Parse(l.ID)
		require.NoError(t, err)
		require.Equal(t, uuid.Version(4), u.Version())
		require.Equal(t, uuid.RFC4122, u.Variant())
		require.False(t, seen[l.ID])
		seen[l.ID] = true
		require.Equal(t, uint64(i+1), l.Fence)
	}
	// Only the canonical text names a lease.
	l := mustGrant(t, e, t0, "a", "s", "/y", "MUTATES")
	for _, id := range []string{strings.ToUpper(l.ID), strings.ReplaceAll(l.ID, "-", ""), "{" + l.ID + "}", l.ID[:35] + "g"} {
		ok, _, err := e.Release(t0, alice, id)
		require.NoError(t, err)
		require.Falsef(t, ok, "Release(%q)", id)
	}
	ok, _, err := e.Release(t0, alice, l.ID)
	require.NoError(t, err)
	require.True(t, ok)
}

// TestCheckAcquireManyAllocs: checking acquire_many's intents formats no
// argument name ("intents[i].resource_path") unless one is wrong; the keys
// here are known, so checking allocates nothing.
func TestCheckAcquireManyAllocs(t *testing.T) {
	e := New(Config{})
	mustRegister(t, e, "a", 1)
	req := AcquireRequest{AgentID: "a", SessionID: "s", TTL: 1000}
	for i := range 8 {
		p := "/d/" + strconv.Itoa(i)
		mustGrant(t, e, t0, "a", "s", p, "CONSUMES")
		req.Intents = append(req.Intents, Intent{ResourceType: "FILE", ResourcePath: p, Predicate: "CONSUMES", ClientPath: "c" + p})
	}
	dst := make([]target, 0, len(req.Intents))
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := e.checkAcquire(&req, false, dst); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}
