package engine

import (
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
)

// clock is an injected clock the tests advance by hand.
type clock struct{ now int64 }

func (c *clock) Advance(ms int64) { c.now += ms }

// TestSeedCompleteExample is the seed's "Complete Example"
// (seed/python-sdk.md).
func TestSeedCompleteExample(t *testing.T) {
	clk := &clock{now: t0}
	e := New(Config{Journal: true})
	_, err := e.Register(clk.now, alice, "agent-senior", 100, true)
	require.NoError(t, err)
	_, err = e.Register(clk.now, alice, "agent-junior", 200, true)
	require.NoError(t, err)

	senior, err := e.Acquire(clk.now, alice, req1("agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", 60000))
	require.NoError(t, err)
	require.True(t, senior.Granted)
	require.Equal(t, "agent-senior", senior.Leases[0].AgentID)
	require.Equal(t, "FILE:/src/auth.ts", senior.Leases[0].Resource)
	require.Equal(t, clk.now+60000, senior.Leases[0].ExpiresAt)

	junior, err := e.Acquire(clk.now, alice, req1("agent-junior", "s2", "FILE", "/src/auth.ts", "MUTATES", 60000))
	require.NoError(t, err)
	require.False(t, junior.Granted)
	require.Equal(t, protocol.ReasonDie, junior.Denial.Reason)
	require.Equal(t, int64(1000), junior.Denial.WaitTime)

	other, err := e.Acquire(clk.now, alice, req1("agent-junior", "s2", "FILE", "/src/utils.ts", "MUTATES", 60000))
	require.NoError(t, err)
	require.True(t, other.Granted)

	for _, id := range []string{senior.Leases[0].ID, other.Leases[0].ID} {
		ok, _, err := e.Release(clk.now, alice, id)
		require.NoError(t, err)
		require.True(t, ok)
	}
	require.Zero(t, e.ActiveLeaseCount(clk.now))
	replayEqual(t, e, e.Records())
}

// TestSeedWaitDieInAction is the seed's "Wait-Die Protocol in Action": the
// senior's lease runs out 6 s later, evict_expired removes it and the
// junior's retry succeeds.
func TestSeedWaitDieInAction(t *testing.T) {
	clk := &clock{now: t0}
	e := New(Config{Journal: true})
	_, err := e.Register(clk.now, alice, "senior", 100, true)
	require.NoError(t, err)
	_, err = e.Register(clk.now, alice, "junior", 200, true)
	require.NoError(t, err)

	r, err := e.Acquire(clk.now, alice, req1("senior", "s1", "FILE", "/db.ts", "MUTATES", 5000))
	require.NoError(t, err)
	require.True(t, r.Granted)

	r, err = e.Acquire(clk.now, alice, req1("junior", "s2", "FILE", "/db.ts", "MUTATES", 5000))
	require.NoError(t, err)
	require.False(t, r.Granted)
	require.Equal(t, protocol.ReasonDie, r.Denial.Reason)

	clk.Advance(6000)
	n, _ := e.EvictExpired(clk.now)
	require.Equal(t, 1, n)
	n, _ = e.EvictExpired(clk.now)
	require.Zero(t, n)

	r, err = e.Acquire(clk.now, alice, req1("junior", "s2", "FILE", "/db.ts", "MUTATES", 5000))
	require.NoError(t, err)
	require.True(t, r.Granted)
	replayEqual(t, e, e.Records())
}

// TestExpiredLeaseNeverBlocks: after its expiry and before any removal, a
// lease neither blocks nor counts.
func TestExpiredLeaseNeverBlocks(t *testing.T) {
	e := New(Config{})
	mustRegister(t, e, "senior", 100)
	mustRegister(t, e, "junior", 200)
	mustGrantReq(t, e, t0, req1("senior", "s1", "FILE", "/db.ts", "MUTATES", 5000))
	require.Equal(t, 1, e.ActiveLeaseCount(t0+4999))
	require.Zero(t, e.ActiveLeaseCount(t0+5000))
	ls, _, err := e.ListLeases(t0+5000, LeaseFilter{})
	require.NoError(t, err)
	require.Empty(t, ls)
	mustGrant(t, e, t0+5000, "junior", "s2", "/db.ts", "MUTATES")
	require.Nil(t, e.Records(), "no records without Journal")
}
