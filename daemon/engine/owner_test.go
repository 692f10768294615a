package engine

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// TestLeaseStructSize keeps a lease in the 80-byte size class, and an
// owner in the 32-byte one: a million leases are a million leases, and as
// many owners when each has its own.
func TestLeaseStructSize(t *testing.T) {
	require.LessOrEqual(t, unsafe.Sizeof(lease{}), uintptr(80))
	require.LessOrEqual(t, unsafe.Sizeof(owner{}), uintptr(32))
}

// TestLeasesShareTheirOwner checks that the leases a session is granted
// under one caller, ttl and binding share one owner, and that a heartbeat
// that changes one lease's ttl changes only that lease.
func TestLeasesShareTheirOwner(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	req := bound(AcquireRequest{AgentID: "a", SessionID: "s", TTL: 60_000, Intents: []Intent{
		{ResourceType: "FILE", ResourcePath: "/x", Predicate: "MUTATES"},
		{ResourceType: "FILE", ResourcePath: "/y", Predicate: "MUTATES"},
		{ResourceType: "FILE", ResourcePath: "/z", Predicate: "MUTATES"},
	}}, procA)
	r, err := e.AcquireMany(t0, alice, req)
	require.NoError(t, err)
	require.True(t, r.Granted)
	one := bound(req1("a", "s", "FILE", "/w", "MUTATES", 60_000), procA)
	ls := append(r.Leases, mustGrantReq(t, e, t0+1, one))
	own := e.lookup(ls[0].ID).own
	for _, l := range ls {
		require.Same(t, own, e.lookup(l.ID).own, l.Resource)
	}

	// Another caller's lease in the same session has its own owner.
	other, err := e.Acquire(t0, root, req1("a", "s", "FILE", "/v", "MUTATES", 60_000))
	require.NoError(t, err)
	require.True(t, other.Granted)
	o := other.Leases[0]
	require.Equal(t, uint32(0), o.OwnerUID)
	require.Equal(t, int32(1), o.OwnerPID)
	require.Nil(t, o.Bound)

	// A heartbeat with a new ttl moves only that lease.
	h, err := e.Heartbeat(t0+10, alice, ls[1].ID, 120_000)
	require.NoError(t, err)
	require.Equal(t, int64(120_000), h.TTL)
	require.Equal(t, t0+10+120_000, h.ExpiresAt)
	for i, l := range ls {
		got := e.public(e.lookup(l.ID))
		want := l
		if i == 1 {
			want = h
		}
		require.Equal(t, want, got, l.Resource)
		require.Equal(t, alice.UID, got.OwnerUID)
		require.Equal(t, alice.PID, got.OwnerPID)
		require.Equal(t, procA, *got.Bound)
	}
	// The same ttl again keeps the owner.
	before := e.lookup(ls[1].ID).own
	_, err = e.Heartbeat(t0+20, alice, ls[1].ID, 120_000)
	require.NoError(t, err)
	require.Same(t, before, e.lookup(ls[1].ID).own)
}

// TestBoundOwnerOutlivesItsTableEntry checks that a process that takes a
// lease, releases it and takes another (a new process table entry each
// time) keeps its session's owner.
func TestBoundOwnerOutlivesItsTableEntry(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	req := bound(req1("a", "s", "FILE", "/x", "MUTATES", 60_000), procA)
	l := mustGrantReq(t, e, t0, req)
	own := e.lookup(l.ID).own
	ok, _, err := e.Release(t0, alice, l.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.Empty(t, e.BoundProcesses())
	// Another process's entry empties after it, so procA's is dropped
	// from the table: procA's next lease has a new entry.
	k := mustGrantReq(t, e, t0, bound(req1("a", "s2", "FILE", "/y", "MUTATES", 60_000), procB))
	ok, _, err = e.Release(t0, alice, k.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.NotContains(t, e.procs, procA)
	l = mustGrantReq(t, e, t0, req)
	require.Same(t, own, e.lookup(l.ID).own)
	require.Equal(t, procA, *l.Bound)
}

// TestRestoreRefusesAnUnknownPredicate checks that a state whose lease has
// no valid predicate is refused: a lease keeps its predicate in 3 bits.
func TestRestoreRefusesAnUnknownPredicate(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	mustGrantReq(t, e, t0, req1("a", "s", "FILE", "/x", "MUTATES", 60_000))
	s := e.Snapshot()
	for _, p := range []Predicate{0, Renames + 1, 8 | Mutates} {
		s.Leases[0].Lease.Predicate = p
		require.Error(t, newTestEngine(t).Restore(s), "predicate %d", p)
	}
	s.Leases[0].Lease.Predicate = Consumes
	r := newTestEngine(t)
	require.NoError(t, r.Restore(s))
	require.Equal(t, Consumes, r.lookup(s.Leases[0].Lease.ID).pred())
}
