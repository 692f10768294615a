package engine

import (
	"cmp"
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/protocol"
)

// Two processes, and a third that reuses procA's pid: same pid, later
// start time. The engine must never take one for another.
var (
	procA      = Process{PID: 4242, Boot: 7, Start: 1000}
	procB      = Process{PID: 4343, Boot: 7, Start: 1100}
	procReused = Process{PID: 4242, Boot: 7, Start: 9000}
)

// bound returns req bound to p.
func bound(req AcquireRequest, p Process) AcquireRequest {
	req.Bind = &p
	return req
}

func TestBoundLeaseWithoutTTLLastsUntilItsProcessEnds(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	l := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/x", "MUTATES", 0), procA))
	require.Equal(t, Never, l.ExpiresAt)
	require.Zero(t, l.TTL)
	require.Equal(t, procA, *l.Bound)
	_, ok := e.NextDeadline()
	require.False(t, ok, "a lease without a ttl has no deadline")

	// Far in the future it is still active and counted.
	far := t0 + DefaultMaxTTL*10
	n, _ := e.Expire(far)
	require.Zero(t, n)
	require.Equal(t, 1, e.ActiveLeaseCount(far))
	ls, _, err := e.ListLeases(far, LeaseFilter{})
	require.NoError(t, err)
	require.Len(t, ls, 1)
	require.Equal(t, procA, *ls[0].Bound)
	require.Equal(t, 1, e.Stats().Processes)

	// A heartbeat without a ttl keeps it without one and records nothing.
	e.Records()
	hb, err := e.Heartbeat(far, alice, l.ID, 0)
	require.NoError(t, err)
	require.Equal(t, Never, hb.ExpiresAt)
	require.Empty(t, e.Records())

	// Ending another process, or a process that reuses its pid, leaves it.
	for _, p := range []Process{procB, procReused, {PID: procA.PID, Boot: 8, Start: procA.Start}} {
		n, wake := e.ProcessEnded(far, p)
		require.Zerof(t, n, "ProcessEnded(%+v)", p)
		require.Empty(t, wake)
	}
	require.Empty(t, e.Records(), "ending a process nothing is bound to records nothing")
	require.Equal(t, 1, e.ActiveLeaseCount(far))

	n, wake := e.ProcessEnded(far, procA)
	require.Equal(t, 1, n)
	require.Empty(t, wake)
	require.Zero(t, e.ActiveLeaseCount(far))
	require.Zero(t, e.Stats().Processes)
	require.Equal(t, uint64(1), e.Stats().ExitReleases)
	recs := e.Records()
	require.Len(t, recs, 1)
	require.Equal(t, Record{Kind: RecProcessEnd, Time: far, Bound: &procA, LeaseIDs: []string{l.ID}}, recs[0])
	ok, _, err = e.Release(far, alice, l.ID)
	require.NoError(t, err)
	require.False(t, ok, "the lease ended with its process")
}

func TestTTLZeroNeedsABinding(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	_, err := e.Acquire(t0, alice, req1("a", "s", "FILE", "/x", "MUTATES", 0))
	requireCode(t, err, protocol.CodeInvalidArgument, "ttl 0 is out of range", `bind "process"`)
	req := bound(req1("a", "s", "FILE", "/x", "MUTATES", DefaultMaxTTL+1), procA)
	_, err = e.Acquire(t0, alice, req)
	requireCode(t, err, protocol.CodeInvalidArgument, "ttl")
}

func TestBoundLeaseWithTTLEndsAtWhicheverComesFirst(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	expiring := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/x", "MUTATES", 100), procA))
	require.Equal(t, t0+100, expiring.ExpiresAt)
	n, _ := e.Expire(t0 + 100)
	require.Equal(t, 1, n, "its ttl ran out first")
	require.Zero(t, e.Stats().Processes, "the process is forgotten with its last lease")

	ended := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/y", "MUTATES", 100), procA))
	n, _ = e.ProcessEnded(t0+50, procA)
	require.Equal(t, 1, n, "its process ended first")
	_, ok := e.NextDeadline()
	require.False(t, ok, "the lease left the expiry queue")
	_, err := e.Heartbeat(t0+60, alice, ended.ID, 0)
	requireCode(t, err, protocol.CodeNotFound)

	// A heartbeat with a ttl gives a lease without one an expiry.
	l := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/z", "MUTATES", 0), procB))
	hb, err := e.Heartbeat(t0+10, alice, l.ID, 40)
	require.NoError(t, err)
	require.Equal(t, t0+50, hb.ExpiresAt)
	n, _ = e.Expire(t0 + 50)
	require.Equal(t, 1, n)
}

func TestProcessEndedWakesWaitersAsARelease(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "young", 300)
	// young's process holds two leases, one bound and one not.
	l1 := mustGrantReq(t, e, t0, bound(req1("young", "y", "FILE", "/x", "MUTATES", 0), procA))
	l2 := mustGrantReq(t, e, t0, req1("young", "y", "FILE", "/y", "MUTATES", 60_000))
	w := mustQueue(t, e, t0, waitReq("old", "o", "/x", "MUTATES", 1000, 600_000))
	e.Records()

	n, wake := e.ProcessEnded(t0+5, procA)
	require.Equal(t, 1, n)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.True(t, wake[0].Result.Granted, "the older waiter is granted at once: %+v", wake[0].Result.Denial)
	recs := e.Records()
	require.Len(t, recs, 2, "the process end, then the waiter's grant")
	require.Equal(t, RecProcessEnd, recs[0].Kind)
	require.Equal(t, []string{l1.ID}, recs[0].LeaseIDs)
	require.Equal(t, RecGrant, recs[1].Kind)
	ls, _, err := e.ListLeases(t0+5, LeaseFilter{AgentID: "young"})
	require.NoError(t, err)
	require.Len(t, ls, 1)
	require.Equal(t, l2.ID, ls[0].ID, "the unbound lease is untouched")
}

func TestQueuedBoundRequest(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "young", 300)
	held := mustGrant(t, e, t0, "young", "y", "/x", "MUTATES")

	// A bound request waits; granted later, its lease is bound.
	w := mustQueue(t, e, t0, bound(waitReq("old", "o", "/x", "MUTATES", 0, 5000), procA))
	require.True(t, e.ProcessBound(procA), "a queued request binds its process")
	_, wake, err := e.Release(t0+1, alice, held.ID)
	require.NoError(t, err)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.True(t, wake[0].Result.Granted)
	got := wake[0].Result.Leases[0]
	require.Equal(t, procA, *got.Bound)
	require.Equal(t, Never, got.ExpiresAt)

	// A queued request whose process ends is answered, and binds nothing.
	held = mustGrant(t, e, t0+2, "young", "y", "/q", "MUTATES")
	w = mustQueue(t, e, t0+2, bound(waitReq("old", "o", "/q", "MUTATES", 0, 5000), procB))
	n, wake := e.ProcessEnded(t0+3, procB)
	require.Zero(t, n)
	require.Len(t, wake, 1)
	require.Equal(t, w, wake[0].Waiter)
	require.False(t, wake[0].Result.Granted)
	require.Equal(t, protocol.ReasonWait, wake[0].Result.Denial.Reason)
	require.Contains(t, wake[0].Result.Denial.Message, "process 4343")
	require.False(t, e.ProcessBound(procB))
	require.Zero(t, e.Stats().Waiters)
	_, _, err = e.Release(t0+4, alice, held.ID)
	require.NoError(t, err)

	// Cancelling a bound request (its connection closed) unbinds it.
	held = mustGrant(t, e, t0+5, "young", "y", "/c", "MUTATES")
	w = mustQueue(t, e, t0+5, bound(waitReq("old", "o", "/c", "MUTATES", 0, 5000), procB))
	e.Cancel(t0+6, w)
	require.False(t, e.ProcessBound(procB))
	require.Equal(t, []Process{procA}, e.BoundProcesses())
}

func TestAcquireManyBindsEveryLease(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	req := AcquireRequest{AgentID: "a", SessionID: "s", Bind: &procA, Idem: "k",
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: "/1", Predicate: "MUTATES"},
			{ResourceType: "SYMBOL", ResourcePath: "x.Y", Predicate: "PROVIDES"}}}
	r, err := e.AcquireMany(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r.Granted)
	for _, l := range r.Leases {
		require.Equal(t, procA, *l.Bound)
	}
	require.Same(t, r.Leases[0].Bound, r.Leases[1].Bound, "a process's leases share one Process")

	// The idem key answers the same binding only.
	again, err := e.AcquireMany(t0+1, alice, req)
	require.NoError(t, err)
	require.Equal(t, r.Leases, again.Leases)
	other := req
	other.Bind = &procB
	_, err = e.AcquireMany(t0+1, alice, other)
	requireCode(t, err, protocol.CodeInvalidArgument, "bound to process 4242", "bound to process 4343")
	other.Bind = nil
	other.TTL = 1000
	_, err = e.AcquireMany(t0+1, alice, other)
	requireCode(t, err, protocol.CodeInvalidArgument, "not bound to a process")

	n, _ := e.ProcessEnded(t0+2, procA)
	require.Equal(t, 2, n)
}

func TestBindingSurvivesReplayAndSnapshot(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	mustRegister(t, e, "b", 2)
	mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/a1", "MUTATES", 0), procA))
	mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/a2", "MUTATES", 500), procA))
	mustGrantReq(t, e, t0, bound(req1("b", "s", "FILE", "/b1", "MUTATES", 0), procB))
	mustGrantReq(t, e, t0, bound(req1("b", "s", "FILE", "/r1", "MUTATES", 0), procReused))
	mustGrant(t, e, t0, "b", "s", "/free", "MUTATES")
	_, _ = e.ProcessEnded(t0+1, procB)
	recs := e.Records()
	replayEqual(t, e, recs)

	// Through msgpack, as the store writes them.
	f := replayMsgpack(t, e, recs)
	require.Equal(t, []Process{procA, procReused}, f.BoundProcesses())

	b, err := msgpack.Marshal(e.Snapshot())
	require.NoError(t, err)
	var st State
	require.NoError(t, msgpack.Unmarshal(b, &st))
	g := New(Config{Journal: true})
	require.NoError(t, g.Restore(&st))
	require.Equal(t, e.Snapshot(), g.Snapshot())
	require.Equal(t, []Process{procA, procReused}, g.BoundProcesses())
	require.Equal(t, 2, g.Stats().Processes)

	// The restored engine ends the same leases when the process ends.
	n, _ := g.ProcessEnded(t0+2, procA)
	require.Equal(t, 2, n)
	require.Equal(t, 2, g.ActiveLeaseCount(t0+2), "procReused's lease and the unbound one remain")
	at, ok := g.NextDeadline()
	require.True(t, ok)
	require.Equal(t, t0+60_000, at, "the bound lease with a ttl left the expiry queue; the unbound one is next")
}

// TestProcessEndEvents: watchers see an end event for each active lease a
// process's end releases (an expired one not yet removed as an expiry),
// and nothing for a process nothing is bound to.
func TestProcessEndEvents(t *testing.T) {
	e := newTestEngine(t)
	e.SetEvents(true)
	mustRegister(t, e, "a", 1)
	l := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/x", "MUTATES", 0), procA))
	short := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/y", "MUTATES", 5), procA))
	e.Events()
	e.ProcessEnded(t0+10, procB)
	require.Empty(t, e.Events())
	e.ProcessEnded(t0+10, procA)
	evs := e.Events()
	require.ElementsMatch(t, []string{"end", "expire"}, kinds(evs))
	for _, ev := range evs {
		want := map[string]string{l.ID: "end", short.ID: "expire"}[ev.LeaseID]
		require.Equal(t, want, ev.Kind.String(), "event for lease %s", ev.LeaseID)
	}
}

// TestProcessEndedInSteps: a process with more leases and queued requests
// than a step's bound is ended over several calls, each ending at most max
// of each with a record of its own; together they end every lease once,
// and a lease released between two steps is not ended again.
func TestProcessEndedInSteps(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 100)
	mustRegister(t, e, "young", 300)
	var ids []string
	for i := range 7 {
		l := mustGrantReq(t, e, t0, bound(req1("young", "y", "FILE", fmt.Sprintf("/l%d", i), "MUTATES", 0), procA))
		ids = append(ids, l.ID)
	}
	for i := range 3 {
		mustGrant(t, e, t0, "young", "y", fmt.Sprintf("/q%d", i), "MUTATES")
		mustQueue(t, e, t0, bound(waitReq("old", "o", fmt.Sprintf("/q%d", i), "MUTATES", 0, 5000), procA))
	}
	e.Records()

	var ended []string
	waits, steps := 0, 0
	for more := true; more; steps++ {
		var n int
		var wake []Wakeup
		n, wake, more = e.ProcessEndedStep(t0+1, procA, 2)
		require.LessOrEqual(t, n, 2)
		require.LessOrEqual(t, len(wake), 2)
		waits += len(wake)
		for _, r := range e.Records() {
			require.Equal(t, RecProcessEnd, r.Kind)
			require.True(t, slices.IsSortedFunc(r.LeaseIDs, func(a, b string) int {
				return cmp.Compare(fenceOf(t, ids, a), fenceOf(t, ids, b))
			}), "a step ends its leases in fence order")
			ended = append(ended, r.LeaseIDs...)
		}
		if steps == 0 {
			require.True(t, more)
			require.True(t, e.ProcessBound(procA), "the rest stays bound between steps")
			// Its holder releases one of the rest meanwhile.
			rest, _, err := e.ListLeases(t0+1, LeaseFilter{AgentID: "young", ResourcePrefix: "FILE:/l"})
			require.NoError(t, err)
			ok, _, err := e.Release(t0+1, alice, rest[0].ID)
			require.NoError(t, err)
			require.True(t, ok)
			e.Records()
			ended = append(ended, rest[0].ID)
		}
	}
	require.Equal(t, 3, steps, "7 leases, 2 at a time, one of them released by its holder after the first step")
	require.Equal(t, 3, waits, "every queued request is answered once")
	require.ElementsMatch(t, ids, ended, "every lease ends exactly once")
	require.False(t, e.ProcessBound(procA))
	require.Equal(t, uint64(6), e.Stats().ExitReleases)
	n, wake, more := e.ProcessEndedStep(t0+2, procA, 2)
	require.Zero(t, n)
	require.Empty(t, wake)
	require.False(t, more, "a process that was ended is a no-op")
}

// fenceOf is the position of lease id in ids, which lists leases in the
// order they were granted (so in fence order).
func fenceOf(t *testing.T, ids []string, id string) int {
	t.Helper()
	i := slices.Index(ids, id)
	require.GreaterOrEqual(t, i, 0, "lease %s is not one of the process's", id)
	return i
}

// A process that takes and releases one lease again and again keeps its
// table entry (the spare, which counts as absent); another process never
// gets it, and an entry whose list grew is not kept.
func TestDroppedProcessEntryIsReusedOnlyForItsProcess(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	release := func(l Lease) {
		ok, _, err := e.Release(t0, alice, l.ID)
		require.NoError(t, err)
		require.True(t, ok)
	}
	l := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/x", "MUTATES", 0), procA))
	first := e.procs[procA]
	release(l)
	require.False(t, e.ProcessBound(procA))
	require.Empty(t, e.BoundProcesses())
	require.Zero(t, e.Stats().Processes)
	n, _ := e.ProcessEnded(t0, procA)
	require.Zero(t, n)

	l = mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/x", "MUTATES", 0), procA))
	require.Same(t, first, e.procs[procA], "the same process gets its entry back")
	require.Equal(t, procA, *l.Bound)
	release(l)

	// procReused has procA's pid: it must get an entry of its own, and
	// the leases of each stay bound to their own process.
	l = mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/y", "MUTATES", 0), procReused))
	require.NotSame(t, first, e.procs[procReused])
	require.Equal(t, procReused, *l.Bound)
	k := mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", "/x", "MUTATES", 0), procA))
	require.Equal(t, procA, *k.Bound)
	require.Equal(t, []string{l.ID}, ids(e.BoundLeases(procReused)))
	require.Equal(t, []string{k.ID}, ids(e.BoundLeases(procA)))
	n, _ = e.ProcessEnded(t0, procReused)
	require.Equal(t, 1, n)
	require.Equal(t, []Process{procA}, e.BoundProcesses())
	require.Equal(t, []string{k.ID}, ids(e.BoundLeases(procA)))
	release(k)

	// A list that grew past its first array is not kept.
	var ls []Lease
	for _, p := range []string{"/p", "/q", "/r"} {
		ls = append(ls, mustGrantReq(t, e, t0, bound(req1("a", "s", "FILE", p, "MUTATES", 0), procB)))
	}
	for _, l := range ls {
		release(l)
	}
	require.NotContains(t, e.procs, procB)
	require.NotContains(t, e.procs, procReused, "one spare only")
	require.Same(t, e.spareProc, e.procs[procA])
	require.Empty(t, e.BoundProcesses())
	require.Zero(t, e.Stats().Processes)
	require.False(t, e.ProcessBound(procA))
}
