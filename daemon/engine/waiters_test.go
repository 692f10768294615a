package engine

import (
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
)

func waitReq(agent, session, path, pred string, ttl, wait int64) AcquireRequest {
	r := req1(agent, session, "FILE", path, pred, ttl)
	r.WaitTimeout = wait
	return r
}

func mustQueue(t *testing.T, e *Engine, now int64, req AcquireRequest) WaiterID {
	t.Helper()
	r, err := e.Acquire(now, alice, req)
	require.NoError(t, err)
	require.Truef(t, r.Queued, "Acquire(%+v) = %+v; want queued", req, r)
	require.Equal(t, protocol.ReasonWait, r.Denial.Reason)
	require.NotZero(t, r.Waiter)
	return r.Waiter
}

// threeAgents registers old (100), mid (200) and young (300); young holds
// MUTATES on /x.
func threeAgents(t *testing.T) (*Engine, Lease) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "mid", 200)
	mustRegister(t, e, "young", 300)
	return e, mustGrant(t, e, t0, "young", "y", "/x", "MUTATES")
}

func TestWaiterWokenOnRelease(t *testing.T) {
	e, l := threeAgents(t)
	w := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 5000))
	require.Equal(t, 1, e.Stats().Waiters)
	agents, _, _ := e.ListAgents(t0, 0)
	require.Equal(t, 1, agents[0].Waiting)
	// mid is older than the holder and would WAIT, but it cannot barge
	// past the queued senior: DIE, decided by old's queued request.
	d := mustDeny(t, e, t0, "mid", "m", "/x", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, "old", d.HeldBy)
	ok, wake, err := e.Release(t0+10, alice, l.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.True(t, wake[0].Result.Granted)
	g := wake[0].Result.Leases[0]
	require.Equal(t, "old", g.AgentID)
	require.Equal(t, t0+10, g.AcquiredAt)
	require.Equal(t, t0+1010, g.ExpiresAt)
	require.Zero(t, e.Stats().Waiters)
	replayEqual(t, e, e.Records())
}

func TestQueuedSeniorBlocksJuniorWithoutHolder(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "mid", 200)
	mustRegister(t, e, "young", 300)
	// young holds CONSUMES; old waits for MUTATES; mid asks CONSUMES, which
	// the holder would allow, but the queued senior conflicts: DIE.
	l := mustGrant(t, e, t0, "young", "y", "/x", "CONSUMES")
	mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 5000))
	d := mustDeny(t, e, t0, "mid", "m", "/x", "CONSUMES", protocol.ReasonDie)
	require.Equal(t, "old", d.HeldBy)
	require.Contains(t, d.Message, "queued first")
	require.Equal(t, int64(1000), d.WaitTime)
	// A compatible predicate for the queued MUTATES? none; DEPENDS_ON also dies.
	mustDeny(t, e, t0, "mid", "m", "/x", "DEPENDS_ON", protocol.ReasonDie)
	_, wake, err := e.Release(t0, alice, l.ID)
	require.NoError(t, err)
	require.Len(t, wake, 1)
	require.True(t, wake[0].Result.Granted)
}

func TestQueueOrderOldestFirst(t *testing.T) {
	e := newTestEngine(t)
	for i, id := range []string{"p1", "p2", "p3"} {
		mustRegister(t, e, id, int64(100+i))
	}
	mustRegister(t, e, "holder", 1000)
	l := mustGrant(t, e, t0, "holder", "h", "/x", "MUTATES")
	// p3 queues CONSUMES first, then p2 CONSUMES (older: allowed), then p1
	// MUTATES (older than both: allowed).
	w3 := mustQueue(t, e, t0, waitReq("p3", "s", "/x", "CONSUMES", 1000, 5000))
	w2 := mustQueue(t, e, t0, waitReq("p2", "s", "/x", "CONSUMES", 1000, 5000))
	w1 := mustQueue(t, e, t0, waitReq("p1", "s", "/x", "MUTATES", 1000, 5000))
	// Release: p1 (oldest) is granted; p2 and p3 now face a senior holder: DIE.
	_, wake, err := e.Release(t0+1, alice, l.ID)
	require.NoError(t, err)
	require.Len(t, wake, 3)
	require.Equal(t, w1, wake[0].Waiter)
	require.True(t, wake[0].Result.Granted)
	require.Equal(t, w2, wake[1].Waiter)
	require.Equal(t, protocol.ReasonDie, wake[1].Result.Denial.Reason)
	require.Equal(t, "p1", wake[1].Result.Denial.HeldBy)
	require.Equal(t, w3, wake[2].Waiter)
	require.Equal(t, protocol.ReasonDie, wake[2].Result.Denial.Reason)
	st := e.Stats()
	require.Equal(t, uint64(2), st.Dies)
}

func TestCompatibleWaitersAllGranted(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	mustRegister(t, e, "b", 2)
	mustRegister(t, e, "h", 3)
	l := mustGrant(t, e, t0, "h", "h", "/x", "MUTATES")
	mustQueue(t, e, t0, waitReq("b", "s", "/x", "CONSUMES", 1000, 5000))
	mustQueue(t, e, t0, waitReq("a", "s", "/x", "CONSUMES", 1000, 5000))
	_, wake, err := e.Release(t0, alice, l.ID)
	require.NoError(t, err)
	require.Len(t, wake, 2)
	require.True(t, wake[0].Result.Granted)
	require.Equal(t, "a", wake[0].Result.Leases[0].AgentID)
	require.True(t, wake[1].Result.Granted)
	require.Equal(t, "b", wake[1].Result.Leases[0].AgentID)
}

func TestWaiterWokenOnExpiry(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "young", 300)
	mustGrantReq(t, e, t0, req1("young", "y", "FILE", "/x", "MUTATES", 100))
	w := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 5000))
	at, ok := e.NextDeadline()
	require.True(t, ok)
	require.Equal(t, t0+100, at)
	n, wake := e.Expire(t0 + 99)
	require.Zero(t, n)
	require.Empty(t, wake)
	n, wake = e.Expire(t0 + 100)
	require.Equal(t, 1, n)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.True(t, wake[0].Result.Granted)
	require.Equal(t, uint64(1), e.Stats().Expirations)
	replayEqual(t, e, e.Records())
}

func TestWaiterWokenOnRevokeAndEndSession(t *testing.T) {
	e, l := threeAgents(t)
	mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 5000))
	ok, wake, err := e.Revoke(t0, root, l.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, wake, 1)
	require.True(t, wake[0].Result.Granted)

	mustGrant(t, e, t0, "young", "y", "/z", "MUTATES")
	mustGrant(t, e, t0, "young", "y", "/z2", "MUTATES")
	w := mustQueue(t, e, t0, waitReq("mid", "m", "/z", "MUTATES", 1000, 5000))
	n, wake, err := e.EndSession(t0, alice, "young", "y")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.True(t, wake[0].Result.Granted)
	replayEqual(t, e, e.Records())
}

func TestEndSessionAnswersItsWaiters(t *testing.T) {
	e, _ := threeAgents(t)
	w := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 5000))
	_, wake, err := e.EndSession(t0, alice, "old", "o")
	require.NoError(t, err)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.Equal(t, protocol.ReasonSessionExpired, wake[0].Result.Denial.Reason)
	require.Zero(t, e.Stats().Waiters)
	_, err = e.Unregister(t0, alice, "old")
	require.NoError(t, err)
}

func TestWaiterTimeout(t *testing.T) {
	e, _ := threeAgents(t)
	w := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 300))
	// Busy while waiting.
	_, err := e.Unregister(t0, alice, "old")
	requireCode(t, err, protocol.CodePriorityConflict)
	at, _ := e.NextDeadline()
	require.Equal(t, t0+300, at)
	_, wake := e.Expire(t0 + 299)
	require.Empty(t, wake)
	_, wake = e.Expire(t0 + 300)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	d := wake[0].Result.Denial
	require.Equal(t, protocol.ReasonWait, d.Reason)
	require.Equal(t, "young", d.HeldBy)
	require.Contains(t, d.Message, "old waited 300 ms")
	require.Zero(t, e.Stats().Waiters)
	at, _ = e.NextDeadline()
	require.Equal(t, t0+60_000, at)
}

func TestCancel(t *testing.T) {
	e, l := threeAgents(t)
	w := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 300))
	require.Empty(t, e.Cancel(t0, w))
	require.Empty(t, e.Cancel(t0, w)) // unknown now: no-op
	require.Empty(t, e.Cancel(t0, 12345))
	_, wake, err := e.Release(t0, alice, l.ID)
	require.NoError(t, err)
	require.Empty(t, wake)
	require.Zero(t, liveResources(e), "no resource kept for nothing")

	l = mustGrant(t, e, t0, "young", "y", "/x", "MUTATES")
	w1 := mustQueue(t, e, t0, waitReq("mid", "m", "/x", "CONSUMES", 1000, 300))
	w2 := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 300))
	require.Equal(t, []WaiterID{w1, w2}, e.CancelAll(t0))
	require.Nil(t, e.CancelAll(t0))
	_, ok := e.NextDeadline()
	require.True(t, ok) // the lease
	_, wake, _ = e.Release(t0, alice, l.ID)
	require.Empty(t, wake)
}

func TestFreezeAnswersQueued(t *testing.T) {
	e, l := threeAgents(t)
	w := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 300))
	frozen, wake, err := e.Freeze(t0, root, "FILE", "/x")
	require.NoError(t, err)
	require.True(t, frozen)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.Equal(t, protocol.ReasonResourceLocked, wake[0].Result.Denial.Reason)
	frozen, wake, err = e.Freeze(t0, root, "FILE", "/x")
	require.NoError(t, err)
	require.True(t, frozen)
	require.Empty(t, wake)
	// Release while frozen: nothing to wake.
	_, wake, err = e.Release(t0, alice, l.ID)
	require.NoError(t, err)
	require.Empty(t, wake)
	_, err = e.Thaw(t0, root, "FILE", "/x")
	require.NoError(t, err)
	require.Zero(t, liveResources(e))
	replayEqual(t, e, e.Records())
}

func TestWaitTimeoutZeroAnswersAtOnce(t *testing.T) {
	e, _ := threeAgents(t)
	r, err := e.Acquire(t0, alice, waitReq("old", "o", "/x", "MUTATES", 1000, 0))
	require.NoError(t, err)
	require.False(t, r.Queued)
	require.Equal(t, protocol.ReasonWait, r.Denial.Reason)
	// DIE is never queued.
	r, err = e.Acquire(t0, alice, waitReq("old", "o", "/x", "MUTATES", 1000, 0))
	require.NoError(t, err)
	require.False(t, r.Queued)
	mustRegister(t, e, "baby", 400)
	r, err = e.Acquire(t0, alice, waitReq("baby", "b", "/x", "MUTATES", 1000, 1000))
	require.NoError(t, err)
	require.False(t, r.Queued)
	require.Equal(t, protocol.ReasonDie, r.Denial.Reason)
}

func TestManyWaiterSpansResources(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "mid", 200)
	mustRegister(t, e, "young", 300)
	la := mustGrant(t, e, t0, "young", "y", "/a", "MUTATES")
	lb := mustGrant(t, e, t0, "young", "y", "/b", "MUTATES")
	req := AcquireRequest{AgentID: "old", SessionID: "o", TTL: 1000, WaitTimeout: 5000,
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: "/a", Predicate: "MUTATES"}, {ResourceType: "FILE", ResourcePath: "/b", Predicate: "MUTATES"}}}
	r, err := e.AcquireMany(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r.Queued)
	// mid waits on /b only... it is younger than the queued old: DIE.
	mustDeny(t, e, t0, "mid", "m", "/b", "MUTATES", protocol.ReasonDie)
	_, wake, err := e.Release(t0, alice, la.ID)
	require.NoError(t, err)
	require.Empty(t, wake) // /b still held
	_, wake, err = e.Release(t0, alice, lb.ID)
	require.NoError(t, err)
	require.Len(t, wake, 1)
	require.True(t, wake[0].Result.Granted)
	require.Len(t, wake[0].Result.Leases, 2)
	require.Equal(t, 2, e.ActiveLeaseCount(t0))
	replayEqual(t, e, e.Records())
}

// TestManyGrantMakesOtherQueuesDecide: a many-request granted through one
// resource becomes a senior holder on another; a junior queued there is
// answered DIE at once instead of waiting for a senior.
func TestManyGrantMakesOtherQueuesDecide(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "mid", 200)
	mustRegister(t, e, "young", 300)
	mustRegister(t, e, "baby", 400)
	la := mustGrant(t, e, t0, "young", "y", "/a", "MUTATES")
	lb := mustGrant(t, e, t0, "baby", "b", "/b", "MUTATES")
	wm := mustQueue(t, e, t0, waitReq("mid", "m", "/b", "MUTATES", 1000, 5000))
	_, _, err := e.Release(t0, alice, lb.ID)
	require.NoError(t, err) // mid granted /b
	lb2 := mustGrant(t, e, t0, "baby", "b", "/c", "MUTATES")
	_ = lb2
	wm2 := mustQueue(t, e, t0, waitReq("mid", "m", "/c", "MUTATES", 1000, 5000))
	req := AcquireRequest{AgentID: "old", SessionID: "o", TTL: 1000, WaitTimeout: 5000,
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: "/a", Predicate: "MUTATES"}, {ResourceType: "FILE", ResourcePath: "/c", Predicate: "CONSUMES"}}}
	r, err := e.AcquireMany(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r.Queued)
	_ = wm
	// Releasing /c's holder: old is oldest on /c, but still waits for /a;
	// mid is younger than the queued old: DIE.
	_, wake, err := e.Release(t0, alice, lb2.ID)
	require.NoError(t, err)
	require.Len(t, wake, 1)
	require.Equal(t, wm2, wake[0].Waiter)
	require.Equal(t, protocol.ReasonDie, wake[0].Result.Denial.Reason)
	_, wake, err = e.Release(t0, alice, la.ID)
	require.NoError(t, err)
	require.Len(t, wake, 1)
	require.True(t, wake[0].Result.Granted)
}

// TestSeniorGrantAnswersQueuedJunior: a senior granted past a queued
// junior (allowed: seniors may barge) makes the junior's wait point at a
// senior; the engine makes that due at once and Expire answers DIE.
func TestSeniorGrantAnswersQueuedJunior(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "senior", 100)
	mustRegister(t, e, "junior", 200)
	mustRegister(t, e, "baby", 300)
	mustGrant(t, e, t0, "baby", "b", "/x", "CONSUMES")
	w := mustQueue(t, e, t0, waitReq("junior", "j", "/x", "MUTATES", 1000, 5000))
	at, _ := e.NextDeadline()
	require.Equal(t, t0+5000, at)
	mustGrant(t, e, t0+7, "senior", "s", "/x", "CONSUMES")
	at, ok := e.NextDeadline()
	require.True(t, ok)
	require.Equal(t, t0+7, at)
	_, wake := e.Expire(t0 + 8)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.Equal(t, protocol.ReasonDie, wake[0].Result.Denial.Reason)
	require.Equal(t, "senior", wake[0].Result.Denial.HeldBy)
	at, _ = e.NextDeadline()
	require.Equal(t, t0+60_000, at)
}
