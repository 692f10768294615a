package tests

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestStallProbe is issue 18's stall probe, reported and not asserted:
// while one client pages through every lease and another ends a session
// whose leases each have a parked waiter, a third client's stats calls
// are timed. It checks what must hold (every lease listed once, every
// waiter granted, the right count released) and logs the stats latency;
// timings are never asserted (BENCHMARKS.md has the figures, from
// klock-bench -workloads stall).
//
// Sizes: 50,000 leases paged and a session of 10,000 leases with 10,000
// waiters; 5,000 and 2,000 with -short; the 1,000,000 and 100,000
// with KLOCK_STALL_FULL=1 (several GiB and minutes).
func TestStallProbe(t *testing.T) {
	paged, session := 50_000, 10_000
	if testing.Short() {
		paged, session = 5_000, 2_000
	}
	if os.Getenv("KLOCK_STALL_FULL") == "1" {
		paged, session = 1_000_000, 100_000
	}
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-leases", "0", "--max-waiters", "0"}})
	c := d.Client(t)
	// Filling a million leases takes longer than testCtx allows.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	registerAgents(t, ctx, c, map[string]int64{"waiter": 1, "bulk": 1 << 40, "ender": 1 << 41})

	start := time.Now()
	fill(t, ctx, c, "bulk", "held", "/stall/held/", paged)
	fill(t, ctx, c, "ender", "big", "/stall/big/", session)

	// One parked acquire of the senior waiter on each of the session's
	// resources, 1000 per connection (the default max-inflight is 1024).
	var conns []*harness.Raw
	for first := 0; first < session; first += 1000 {
		r := d.Raw(t)
		var buf []byte
		for i := first; i < min(session, first+1000); i++ {
			var err error
			buf, err = protocol.AppendRequest(buf, uint64(i+1), protocol.OpAcquire,
				parkArgs("waiter", "w", fmt.Sprintf("/stall/big/%d", i), "MUTATES", 600_000, 600_000))
			if err != nil {
				t.Fatal(err)
			}
		}
		r.Write(buf)
		conns = append(conns, r)
	}
	waitForStats(t, ctx, c, "every waiter parked", func(st *protocol.StatsResult) bool { return st.Waiters == session })
	t.Logf("set up %d leases, a session of %d and %d waiters in %v", paged+session, session, session, time.Since(start).Round(time.Millisecond))

	// The waiters' answers, read as they come.
	var granted sync.WaitGroup
	grantErrs := make(chan error, len(conns))
	for _, r := range conns {
		granted.Add(1)
		go func() {
			defer granted.Done()
			want := 1000
			for want > 0 {
				resp, err := r.TryRecv()
				if err != nil {
					grantErrs <- err
					return
				}
				var res protocol.AcquireResult
				if !resp.OK || protocol.DecodeResult(resp.Result, &res) != nil || !res.Success {
					grantErrs <- fmt.Errorf("waiter %d answered %+v %+v", resp.ID, resp.Error, res)
					return
				}
				want--
			}
		}()
	}

	// The probe.
	probe := d.Client(t)
	stop := make(chan struct{})
	var lat []time.Duration
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			if _, err := probe.Stats(ctx); err != nil {
				t.Errorf("probe: %v", err)
				return
			}
			lat = append(lat, time.Since(t0))
		}
	}()

	// The pager and the end of the session, at once.
	var wg sync.WaitGroup
	var pageTime, endTime time.Duration
	var pages int
	seen := map[string]int{}
	wg.Add(2)
	go func() {
		defer wg.Done()
		t0 := time.Now()
		f := clientlib.LeaseFilter{AgentID: "bulk", Limit: 1000}
		for {
			ls, next, err := c.ListLeasesPage(ctx, f)
			if err != nil {
				t.Errorf("page %d: %v", pages, err)
				return
			}
			pages++
			for _, l := range ls {
				seen[l.LeaseID]++
			}
			if next == "" {
				break
			}
			f.After = next
		}
		pageTime = time.Since(t0)
	}()
	var released int
	go func() {
		defer wg.Done()
		ender := d.Client(t)
		t0 := time.Now()
		var err error
		if released, err = ender.EndSession(ctx, "ender", "big"); err != nil {
			t.Errorf("end_session: %v", err)
		}
		endTime = time.Since(t0)
	}()
	wg.Wait()
	granted.Wait()
	close(stop)
	<-probed
	close(grantErrs)
	for err := range grantErrs {
		t.Error(err)
	}

	if released != session {
		t.Errorf("end_session released %d; want %d", released, session)
	}
	if len(seen) != paged {
		t.Errorf("paging listed %d distinct leases of bulk; want %d", len(seen), paged)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("lease %s listed %d times", id, n)
		}
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	t.Logf("stall probe: %d stats calls while paging %d leases (%d pages, %v) and ending a session of %d leases with %d waiters (%v): p50 %v, p99 %v, max %v",
		len(lat), paged, pages, pageTime.Round(time.Millisecond), session, session, endTime.Round(time.Millisecond),
		q(0.5), q(0.99), lat[len(lat)-1])
}

// fill acquires n leases for agent in session on prefix0..prefix(n-1), 64
// per acquire_many and 8 requests in flight.
func fill(t *testing.T, ctx context.Context, c *clientlib.Client, agent, session, prefix string, n int) {
	t.Helper()
	next := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := range next {
				req := clientlib.AcquireRequest{AgentID: agent, SessionID: session, TTL: time.Hour}
				for i := first; i < min(n, first+protocol.MaxIntents); i++ {
					req.Intents = append(req.Intents, clientlib.Intent{ResourceType: "FILE", ResourcePath: prefix + fmt.Sprint(i), Predicate: "MUTATES"})
				}
				res, err := c.AcquireMany(ctx, req)
				if err == nil && !res.Success {
					err = fmt.Errorf("denied: %s", res.Message)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for first := 0; first < n; first += protocol.MaxIntents {
		select {
		case next <- first:
		case err := <-errs:
			close(next)
			wg.Wait()
			t.Fatalf("filling %s: %v", prefix, err)
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("filling %s: %v", prefix, err)
	}
}
