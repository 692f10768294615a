package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/tests/harness"
)

// holding is one lease a test client believes it holds.
type holding struct {
	agent string
	lease string
	fence uint64
	pred  engine.Predicate
}

// occupancy is the checker: a client marks a lease after the daemon's grant
// reaches it and unmarks it before it sends the release. If the daemon is
// right, two conflicting marks can never coexist: a marked lease is active
// in the daemon from before its mark until after its unmark (ttl is far
// longer than the test), so an overlap means the daemon granted a
// conflicting lease while the other was held.
type occupancy struct {
	mu     sync.Mutex
	held   map[string][]holding // resource key -> leases marked
	fences map[uint64]string    // fence -> lease id, to prove fences unique
	errs   []string
}

func (o *occupancy) mark(res string, h holding) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, other := range o.held[res] {
		if other.agent != h.agent && engine.Conflicts(other.pred, h.pred) {
			o.errs = append(o.errs, fmt.Sprintf("%s: %s holds %s (fence %d) while %s was granted %s (fence %d)",
				res, other.agent, other.pred, other.fence, h.agent, h.pred, h.fence))
		}
	}
	if prev, dup := o.fences[h.fence]; dup && prev != h.lease {
		o.errs = append(o.errs, fmt.Sprintf("fence %d given to leases %s and %s", h.fence, prev, h.lease))
	}
	o.fences[h.fence] = h.lease
	o.held[res] = append(o.held[res], h)
}

func (o *occupancy) unmark(res, lease string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	hs := o.held[res]
	for i := range hs {
		if hs[i].lease == lease {
			o.held[res] = append(hs[:i], hs[i+1:]...)
			return
		}
	}
}

// TestNoConflictingLeasesUnderLoad runs 64 clients, each its own agent and
// connection, on 8 resources with every predicate, single and multi
// acquires, some parked with wait_timeout, for about 3 seconds; the
// occupancy checker proves no two conflicting leases were held at once.
func TestNoConflictingLeasesUnderLoad(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	clients := make([]*clientlib.Client, 64)
	for i := range clients {
		clients[i] = d.Client(t)
	}
	checkNoConflicts(t, clients, 3*time.Second)
}

// checkNoConflicts runs the safety load: each client its own agent on 8
// resources for about dur, checked by the occupancy checker. The clients
// may be connected to one daemon or to several nodes of a cluster. It
// returns the highest fence granted.
func checkNoConflicts(t *testing.T, clients []*clientlib.Client, dur time.Duration) uint64 {
	const resources = 8
	preds := []string{"PROVIDES", "CONSUMES", "MUTATES", "DELETES", "DEPENDS_ON", "RENAMES"}
	occ := &occupancy{held: make(map[string][]holding), fences: make(map[uint64]string)}
	var grants, denials, waits atomic.Int64

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, c := range clients {
		agent := fmt.Sprintf("agent-%02d", i)
		if err := c.RegisterAgent(ctx, agent, int64(100+i)); err != nil {
			t.Fatalf("RegisterAgent(%s) = %v", agent, err)
		}
	}
	stopAt := time.Now().Add(dur)
	var wg sync.WaitGroup
	errc := make(chan error, len(clients))
	for i, c := range clients {
		agent := fmt.Sprintf("agent-%02d", i)
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			for time.Now().Before(stopAt) {
				if err := oneRound(ctx, c, agent, rng, preds, resources, occ, &grants, &denials, &waits); err != nil {
					errc <- fmt.Errorf("%s: %w", agent, err)
					return
				}
			}
		}(uint64(i))
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for _, e := range occ.errs {
		t.Error(e)
	}
	t.Logf("%d grants, %d denials (%d after a server-side wait) checked", grants.Load(), denials.Load(), waits.Load())
	if grants.Load() < int64(len(clients)) {
		t.Errorf("only %d grants in %s; the load did not run", grants.Load(), dur)
	}
	var top uint64
	for f := range occ.fences {
		top = max(top, f)
	}
	return top
}

// oneRound takes one or two leases, holds them briefly and releases them.
func oneRound(ctx context.Context, c *clientlib.Client, agent string, rng *rand.Rand, preds []string, resources int,
	occ *occupancy, grants, denials, waits *atomic.Int64) error {
	n := 1 + rng.IntN(2)
	var intents []clientlib.Intent
	first := rng.IntN(resources)
	for k := 0; k < n; k++ {
		intents = append(intents, clientlib.Intent{
			ResourceType: "SYMBOL",
			ResourcePath: fmt.Sprintf("r%d", (first+k)%resources),
			Predicate:    preds[rng.IntN(len(preds))],
		})
	}
	req := clientlib.AcquireRequest{AgentID: agent, SessionID: "s", Intents: intents, TTL: time.Minute}
	if rng.IntN(3) == 0 {
		req.WaitTimeout = 50 * time.Millisecond
	}
	var leases []clientlib.AcquireResult
	if n == 1 {
		r, err := c.AcquireOnce(ctx, req)
		if err != nil {
			return err
		}
		if !r.Success {
			denials.Add(1)
			if req.WaitTimeout > 0 && r.Reason == "WAIT" {
				waits.Add(1)
			}
			return nil
		}
		leases = []clientlib.AcquireResult{*r}
	} else {
		r, err := c.AcquireMany(ctx, req)
		if err != nil {
			return err
		}
		if !r.Success {
			denials.Add(1)
			return nil
		}
		leases = r.Leases
	}
	grants.Add(1)
	for _, l := range leases {
		p, err := engine.ParsePredicate(l.Predicate)
		if err != nil {
			return err
		}
		occ.mark(l.Resource, holding{agent: agent, lease: l.LeaseID, fence: l.Fence, pred: p})
	}
	for range rng.IntN(50) {
		// Hold the leases for a moment without sleeping.
		_ = rng.Uint64()
	}
	for _, l := range leases {
		occ.unmark(l.Resource, l.LeaseID)
		ok, err := c.ReleaseLease(ctx, l.LeaseID)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("release of held lease %s on %s returned false", l.LeaseID, l.Resource)
		}
	}
	return nil
}
