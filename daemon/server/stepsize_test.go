package server

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

func TestNextStepWork(t *testing.T) {
	for _, c := range []struct {
		n    int
		d    time.Duration
		max  int
		want int
	}{
		{1000, 10 * holdTarget, 1000, 100},  // slow: scaled down to the target
		{1000, holdTarget / 2, 1000, 1000},  // fast: at most the bound
		{100, holdTarget / 10, 1000, 150},   // fast: grows by half at most
		{100, 1000 * holdTarget, 1000, 50},  // very slow: minStepWork
		{400, 0, 1000, 600},                 // too fast to time: grows
		{20, 100 * holdTarget, 30, 30},      // a bound below minStepWork wins
		{1000, 2 * holdTarget, 1000, 500},   // twice the target: half
		{minStepWork, holdTarget, 1000, 50}, // on target: kept
	} {
		if got := nextStepWork(c.n, c.d, c.max); got != c.want {
			t.Errorf("nextStepWork(%d, %v, %d) = %d; want %d", c.n, c.d, c.max, got, c.want)
		}
	}
}

// TestLongChangeStepsAreSized checks that a long change's steps and a
// list's holds take their work from the sizers: with a small size set, an
// end_session of 130 leases releases its first 50 in a step of its own
// (a record of 50), and a list of them takes several holds of the lock.
func TestLongChangeStepsAreSized(t *testing.T) {
	j := &recordingJournal{}
	ts := start(t, Config{Journal: j})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	const n = 130
	for i := range n {
		c.call(uint64(10+i), protocol.OpAcquire, acquireArgs("a", "/f/"+strconv.Itoa(i), 60000, 0), &protocol.Grant{})
	}

	ts.listSteps.n.Store(minStepWork)
	yields := ts.turns.yields.Load()
	var list protocol.ListLeasesResult
	c.call(1000, protocol.OpListLeases, &protocol.Args{}, &list)
	// 50, then at most 75 more: a third hold at least, where one hold of
	// listWork would list all 130. The list yields between two holds.
	if holds := ts.turns.yields.Load() - yields + 1; len(list.Leases) != n || list.Truncated || holds < 3 {
		t.Fatalf("list_leases gave %d leases (truncated %v) in %d holds of the lock; want %d in at least 3", len(list.Leases), list.Truncated, holds, n)
	}

	ts.steps.n.Store(minStepWork)
	before := len(j.kinds())
	a := &protocol.Args{AgentID: "a", SessionID: "s"}
	a.Set(protocol.ArgAgentID)
	a.Set(protocol.ArgSessionID)
	var res protocol.EndSessionResult
	c.call(2000, protocol.OpEndSession, a, &res)
	if res.Released != n {
		t.Fatalf("end_session released %d; want %d", res.Released, n)
	}
	j.mu.Lock()
	recs := j.recs[before:]
	j.mu.Unlock()
	if len(recs) < 2 || recs[0].Kind != engine.RecRelease || len(recs[0].LeaseIDs) != minStepWork || recs[len(recs)-1].Kind != engine.RecEndSession {
		var ks []string
		for _, r := range recs {
			ks = append(ks, fmt.Sprintf("%v(%d)", r.Kind, len(r.LeaseIDs)))
		}
		t.Fatalf("end_session wrote %v; want a release of %d leases first and end_session last", ks, minStepWork)
	}
}

// TestLargeExpiryIsOneRunOfSteps checks that leases due at once are
// expired by one run of the timer in steps (turns between them), not by a
// timer re-armed for each step: with steps of 50, 130 leases due together
// are logged as one expiry of 130.
func TestLargeExpiryIsOneRunOfSteps(t *testing.T) {
	clock := newFakeClock()
	ts := start(t, Config{Clock: clock})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	const n = 130
	for i := range n {
		c.call(uint64(10+i), protocol.OpAcquire, acquireArgs("a", "/e/"+strconv.Itoa(i), 1000, 0), &protocol.Grant{})
	}
	ts.steps.n.Store(minStepWork)
	clock.advance(2 * time.Second) // all due; the timer fires within a second
	waitFor(t, "the leases to expire", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return ts.eng.Stats().Leases == 0 && strings.Contains(ts.logs.String(), `msg="leases expired"`)
	})
	logs := ts.logs.String()
	if got := strings.Count(logs, `msg="leases expired"`); got != 1 || !strings.Contains(logs, `msg="leases expired" count=130`) {
		t.Fatalf("expiry logged %d times; want once, count=130:\n%s", got, logs)
	}
}
