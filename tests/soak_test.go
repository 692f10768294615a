package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestSoak runs 1,000 clients doing random operations with random
// disconnects and reconnects and short-lived leases expiring under them,
// while a checker reads the daemon's whole lease table over and over and
// proves that no two conflicting leases of different (agent, session) are
// ever active on one resource at once. Afterwards counts must match lists,
// the daemon must be back to no connections and no waiters, and the test
// process must have no goroutines left over.
//
// CI runs it for 5 s; set KLOCK_SOAK=3m (any Go duration) to soak longer.
func TestSoak(t *testing.T) {
	// Registered first, so it runs last: after the daemon has been stopped.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	length := 5 * time.Second
	if s := os.Getenv("KLOCK_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		require.NoError(t, err, "KLOCK_SOAK")
		length = d
	}
	const clients, resources = 1000, 64
	d := harness.Start(t, harness.Options{StateDir: "none"})
	pid := d.Cmd.Process.Pid
	baseRSS := rssKB(t, pid)

	ctx, cancel := context.WithTimeout(context.Background(), length+2*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var ops, grants, denials, reconnects atomic.Int64
	var peakRSS atomic.Int64
	errc := make(chan error, clients+1)

	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := &soaker{socket: d.Socket, agent: fmt.Sprintf("soak-%04d", i), rng: rand.New(rand.NewPCG(uint64(i), 7)),
				ops: &ops, grants: &grants, denials: &denials, reconnects: &reconnects}
			defer s.close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := s.step(ctx, resources); err != nil {
					errc <- fmt.Errorf("%s: %w", s.agent, err)
					return
				}
			}
		}(i)
	}

	// The checker: the daemon's lease table, read atomically, must never
	// hold two conflicting leases of different holders on one resource.
	checker, err := clientlib.Dial(ctx, clientlib.Options{Socket: d.Socket})
	require.NoError(t, err)
	var checks int
	deadline := time.After(length)
	tick := time.NewTicker(50 * time.Millisecond)
loop:
	for {
		select {
		case <-deadline:
			break loop
		case err := <-errc:
			t.Error(err)
			break loop
		case <-tick.C:
		}
		leases, _, err := checker.ListLeases(ctx, clientlib.LeaseFilter{Limit: 10000})
		require.NoError(t, err)
		for _, e := range conflicts(leases) {
			t.Error(e)
		}
		checks++
		if rss := int64(rssKB(t, pid)); rss > peakRSS.Load() {
			peakRSS.Store(rss)
		}
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}

	// Quiet now: once the short leases have run out, counts match lists.
	var count, listed, perAgent int
	waitFor(t, "active_lease_count = len(list_leases) = sum of list_agents' lease counts", func() bool {
		leases, truncated, err := checker.ListLeases(ctx, clientlib.LeaseFilter{Limit: 10000})
		require.NoError(t, err)
		require.False(t, truncated)
		count, err = checker.ActiveLeaseCount(ctx)
		require.NoError(t, err)
		agents, _, err := checker.ListAgents(ctx, 10000)
		require.NoError(t, err)
		listed, perAgent = len(leases), 0
		for _, a := range agents {
			perAgent += a.Leases
			assert.Zero(t, a.Waiting, "agent %s still waiting", a.AgentID)
		}
		return count == listed && count == perAgent
	})
	waitFor(t, "the soak clients' connections to close", func() bool {
		st, err := checker.Stats(ctx)
		return err == nil && st.Connections == 1 && st.Waiters == 0
	})
	require.NoError(t, checker.Close())
	endRSS := rssKB(t, pid)
	t.Logf("soak %v: %d clients, %d ops, %d grants, %d denials, %d reconnects, %d table checks; klockd RSS %d KiB before, %d KiB peak, %d KiB after",
		length, clients, ops.Load(), grants.Load(), denials.Load(), reconnects.Load(), checks, baseRSS, peakRSS.Load(), endRSS)
	assert.Greater(t, grants.Load(), int64(clients), "the load ran")
}

// conflicts lists every pair of active leases in one table that should
// never coexist.
func conflicts(leases []protocol.LeaseInfo) []string {
	byRes := make(map[string][]protocol.LeaseInfo)
	for _, l := range leases {
		byRes[l.Resource] = append(byRes[l.Resource], l)
	}
	var out []string
	for res, ls := range byRes {
		sort.Slice(ls, func(i, j int) bool { return ls[i].Fence < ls[j].Fence })
		for i := range ls {
			for j := i + 1; j < len(ls); j++ {
				a, b := ls[i], ls[j]
				if a.AgentID == b.AgentID && a.SessionID == b.SessionID {
					continue
				}
				pa, _ := engine.ParsePredicate(a.Predicate)
				pb, _ := engine.ParsePredicate(b.Predicate)
				if engine.Conflicts(pa, pb) {
					out = append(out, fmt.Sprintf("%s: %s/%s %s (fence %d) and %s/%s %s (fence %d) both active",
						res, a.AgentID, a.SessionID, a.Predicate, a.Fence, b.AgentID, b.SessionID, b.Predicate, b.Fence))
				}
			}
		}
	}
	return out
}

// soaker is one soak client: an agent with a connection it drops and
// redials now and then, and the leases it believes it holds.
type soaker struct {
	socket  string
	agent   string
	session int
	rng     *rand.Rand
	c       *clientlib.Client
	held    []string

	ops, grants, denials, reconnects *atomic.Int64
}

func (s *soaker) close() {
	if s.c != nil {
		s.c.Close()
	}
}

var soakPreds = []string{"PROVIDES", "CONSUMES", "MUTATES", "DELETES", "DEPENDS_ON", "RENAMES"}

// step does one random operation. Expected refusals (a heartbeat of a
// lease that expired, a denial) are not errors; anything else is.
func (s *soaker) step(ctx context.Context, resources int) error {
	if s.c == nil {
		c, err := clientlib.Dial(ctx, clientlib.Options{Socket: s.socket})
		if err != nil {
			return err
		}
		s.c = c
		if err := c.RegisterAgent(ctx, s.agent, 0); err != nil && !errors.Is(err, clientlib.ErrPriorityConflict) {
			return err
		}
	}
	s.ops.Add(1)
	sess := fmt.Sprintf("s%d", s.session)
	ttls := []time.Duration{20 * time.Millisecond, 200 * time.Millisecond, 30 * time.Second}
	intent := func() clientlib.Intent {
		return clientlib.Intent{ResourceType: "SYMBOL", ResourcePath: fmt.Sprintf("r%d", s.rng.IntN(resources)),
			Predicate: soakPreds[s.rng.IntN(len(soakPreds))]}
	}
	switch p := s.rng.IntN(100); {
	case p < 45: // acquire, sometimes parked in the daemon
		req := clientlib.AcquireRequest{AgentID: s.agent, SessionID: sess, Intents: []clientlib.Intent{intent()},
			TTL: ttls[s.rng.IntN(len(ttls))]}
		if s.rng.IntN(4) == 0 {
			req.WaitTimeout = 30 * time.Millisecond
		}
		r, err := s.c.AcquireOnce(ctx, req)
		if err != nil {
			return err
		}
		s.count(r.Success)
		if r.Success {
			s.held = append(s.held, r.LeaseID)
		}
	case p < 55: // acquire_many
		req := clientlib.AcquireRequest{AgentID: s.agent, SessionID: sess, Intents: []clientlib.Intent{intent(), intent()},
			TTL: ttls[s.rng.IntN(len(ttls))]}
		r, err := s.c.AcquireMany(ctx, req)
		if err != nil {
			if errors.Is(err, clientlib.ErrInvalidArgument) {
				return nil // the same resource twice with clashing predicates
			}
			return err
		}
		s.count(r.Success)
		for _, l := range r.Leases {
			s.held = append(s.held, l.LeaseID)
		}
	case p < 75: // release
		if len(s.held) == 0 {
			return nil
		}
		i := s.rng.IntN(len(s.held))
		if _, err := s.c.ReleaseLease(ctx, s.held[i]); err != nil {
			return err
		}
		s.held = append(s.held[:i], s.held[i+1:]...)
	case p < 85: // heartbeat
		if len(s.held) == 0 {
			return nil
		}
		if _, err := s.c.Heartbeat(ctx, s.held[s.rng.IntN(len(s.held))], 0); err != nil && !errors.Is(err, clientlib.ErrNotFound) {
			return err
		}
	case p < 90: // reads
		if _, err := s.c.ActiveLeaseCount(ctx); err != nil {
			return err
		}
	case p < 94: // end the session and start another
		if _, err := s.c.EndSession(ctx, s.agent, sess); err != nil {
			return err
		}
		s.session++
		s.held = s.held[:0]
	default: // drop the connection; held leases live on until their ttl
		if err := s.c.Close(); err != nil {
			return err
		}
		s.c = nil
		s.reconnects.Add(1)
	}
	return nil
}

func (s *soaker) count(granted bool) {
	if granted {
		s.grants.Add(1)
	} else {
		s.denials.Add(1)
	}
}
