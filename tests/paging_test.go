package tests

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// The paging contract of protocol/README.md "Paging", end to end over the
// real socket, with a writer changing the table while a reader pages.

// TestPagingWithConcurrentWriter pages through list_leases 97 at a time
// while another client grants and releases leases whose keys fall between
// the ones paged: every lease held throughout is listed exactly once, no
// lease twice, and the pages come in order.
func TestPagingWithConcurrentWriter(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	ctx := testCtx(t)
	registerAgents(t, ctx, c, map[string]int64{"stable": 1, "churn": 2})

	const stable = 3000
	held := map[string]string{} // lease id → resource
	for start := 0; start < stable; start += protocol.MaxIntents {
		req := clientlib.AcquireRequest{AgentID: "stable", SessionID: "s", TTL: time.Hour}
		for i := start; i < min(stable, start+protocol.MaxIntents); i++ {
			req.Intents = append(req.Intents, clientlib.Intent{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/page/%05d", i), Predicate: "CONSUMES"})
		}
		res, err := c.AcquireMany(ctx, req)
		if err != nil || !res.Success {
			t.Fatalf("AcquireMany = %+v, %v", res, err)
		}
		for _, l := range res.Leases {
			held[l.LeaseID] = l.Resource
		}
	}

	// The writer: leases on the same keys and on keys in between, granted
	// and released as fast as one connection goes, until the reader is done.
	w := d.Client(t)
	stop := make(chan struct{})
	var writes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		var mine []string
		for {
			select {
			case <-stop:
				return
			default:
			}
			k := rng.IntN(stable)
			path := fmt.Sprintf("/page/%05d", k)
			if rng.IntN(2) == 0 {
				path += "-between"
			}
			res, err := w.AcquireLease(ctx, "churn", "c", "FILE", path, "CONSUMES", time.Minute)
			if err != nil {
				t.Errorf("writer acquire: %v", err)
				return
			}
			if res.Success {
				mine = append(mine, res.LeaseID)
			}
			if len(mine) > 50 || len(mine) > 0 && rng.IntN(3) == 0 {
				i := rng.IntN(len(mine))
				if _, err := w.ReleaseLease(ctx, mine[i]); err != nil {
					t.Errorf("writer release: %v", err)
					return
				}
				mine[i] = mine[len(mine)-1]
				mine = mine[:len(mine)-1]
			}
			writes.Add(1)
		}
	}()

	for _, tc := range []struct {
		name string
		f    clientlib.LeaseFilter
	}{
		{"all", clientlib.LeaseFilter{Limit: 97}},
		{"one agent", clientlib.LeaseFilter{Limit: 97, AgentID: "stable"}},
		{"prefix", clientlib.LeaseFilter{Limit: 97, Prefix: "FILE:/page/01"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]int{}
			var prev protocol.LeaseInfo
			pages, before := 0, writes.Load()
			f := tc.f
			for {
				ls, next, err := c.ListLeasesPage(ctx, f)
				if err != nil {
					t.Fatalf("page %d: %v", pages, err)
				}
				pages++
				for _, l := range ls {
					seen[l.LeaseID]++
					if prev.LeaseID != "" && cmp.Or(strings.Compare(prev.Resource, l.Resource), cmp.Compare(prev.Fence, l.Fence)) >= 0 {
						t.Fatalf("page %d: %s#%d after %s#%d: out of order", pages, l.Resource, l.Fence, prev.Resource, prev.Fence)
					}
					prev = l
					if !strings.HasPrefix(l.Resource, f.Prefix) || f.AgentID != "" && l.AgentID != f.AgentID {
						t.Fatalf("page %d: %+v does not match the filter %+v", pages, l, f)
					}
				}
				if next == "" {
					break
				}
				f.After = next
			}
			want := 0
			for id, resource := range held {
				if strings.HasPrefix(resource, f.Prefix) {
					want++
					if seen[id] != 1 {
						t.Errorf("lease %s held throughout was listed %d times", id, seen[id])
					}
				}
			}
			for id, n := range seen {
				if n != 1 {
					t.Errorf("lease %s listed %d times", id, n)
				}
			}
			t.Logf("%d pages, %d leases listed, %d held throughout, %d writer operations meanwhile",
				pages, len(seen), want, writes.Load()-before)
			if writes.Load() == before {
				t.Error("the writer made no change while the reader paged; the test proves nothing")
			}
		})
	}
	close(stop)
	wg.Wait()
}

// TestPagingAgentsWithConcurrentWriter pages through list_agents 7 at a
// time while agents are registered and unregistered.
func TestPagingAgentsWithConcurrentWriter(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	ctx := testCtx(t)
	const stable = 300
	for i := range stable {
		if err := c.RegisterAgent(ctx, fmt.Sprintf("stable-%03d", i), int64(2*i+10)); err != nil {
			t.Fatal(err)
		}
	}
	w := d.Client(t)
	stop := make(chan struct{})
	var writes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("churn-%d", i%40)
			var err error
			if i%80 < 40 {
				err = w.RegisterAgent(ctx, id, int64(2*(i%stable)+11)) // between two stable ones
			} else {
				_, err = w.UnregisterAgent(ctx, id)
			}
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			writes.Add(1)
		}
	}()
	seen := map[string]int{}
	var prev protocol.AgentInfo
	before := writes.Load()
	for a, err := range c.ListAllAgents(ctx, 7) {
		if err != nil {
			t.Fatal(err)
		}
		seen[a.AgentID]++
		if prev.AgentID != "" && cmp.Or(cmp.Compare(prev.Priority, a.Priority), strings.Compare(prev.AgentID, a.AgentID)) >= 0 {
			t.Fatalf("%s (%d) after %s (%d): out of order", a.AgentID, a.Priority, prev.AgentID, prev.Priority)
		}
		prev = a
	}
	close(stop)
	wg.Wait()
	for i := range stable {
		if id := fmt.Sprintf("stable-%03d", i); seen[id] != 1 {
			t.Errorf("agent %s registered throughout was listed %d times", id, seen[id])
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("agent %s listed %d times", id, n)
		}
	}
	if writes.Load() == before {
		t.Error("the writer made no change while the reader paged; the test proves nothing")
	}
}

// TestPagingCursorErrors covers after over the raw protocol: next appears
// exactly when truncated, a page continues after the cursor, and anything
// that is not a cursor of that op is INVALID_ARGUMENT naming after.
func TestPagingCursorErrors(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	for i := range 5 {
		c.grant(cfAcq("a", "s", fmt.Sprintf("/c/%d", i), "MUTATES", 60000))
	}
	r := c.ok("list_leases", map[string]any{"limit": 2})
	next, ok := r["next"].(string)
	if !ok || r["truncated"] != true || next == "" {
		t.Fatalf("list_leases limit 2 = %v; want truncated with a next", r)
	}
	ls, trunc := c.listLeases(map[string]any{"limit": 2, "after": next})
	if len(ls) != 2 || !trunc || ls[0]["resource"] != "FILE:/c/2" {
		t.Errorf("second page = %v truncated %v; want /c/2, /c/3 and more", ls, trunc)
	}
	if r := c.ok("list_leases", map[string]any{"limit": 5}); r["next"] != nil || r["truncated"] != false {
		t.Errorf("a whole list = %v; want no next", r)
	}
	if ls, _ := c.listLeases(map[string]any{"after": ""}); len(ls) != 5 {
		t.Errorf("after \"\" gave %d leases; want all 5, as without after", len(ls))
	}
	c.register("b", 2)
	ar := c.ok("list_agents", map[string]any{"limit": 1})
	agentNext, _ := ar["next"].(string)
	if agentNext == "" {
		t.Fatalf("list_agents limit 1 of 2 = %v; want a next", ar)
	}
	for _, bad := range []any{"garbage", "L1!!!", "L1", agentNext, next[:len(next)-1] + "*", strings.Repeat("L", 9000)} {
		msg := c.fail("list_leases", map[string]any{"after": bad}, "INVALID_ARGUMENT")
		if !strings.Contains(msg, "after") {
			t.Errorf("after %.20q: message %q does not name after", bad, msg)
		}
	}
	c.fail("list_leases", map[string]any{"after": 7}, "INVALID_ARGUMENT")
	c.fail("list_agents", map[string]any{"after": next}, "INVALID_ARGUMENT")
	// A cursor survives the lease it names.
	c.ok("end_session", map[string]any{"agent_id": "a", "session_id": "s"})
	if ls, trunc := c.listLeases(map[string]any{"after": next}); len(ls) != 0 || trunc {
		t.Errorf("after a cursor whose leases are gone: %v, %v; want an empty last page", ls, trunc)
	}
}

// TestKlockctlLeasesPagesThroughAll checks that klockctl leases and agents
// list past the daemon's page of 1000, and that --limit cuts with a next
// in --json.
func TestKlockctlLeasesPagesThroughAll(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	ctx := testCtx(t)
	for i := range 1100 {
		if err := c.RegisterAgent(ctx, fmt.Sprintf("ag%04d", i), int64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	fill(t, ctx, c, "ag0000", "s", "/kc/", 2500)

	var all kcLeases
	kcOK(t, d, &all, "leases", "--json")
	if len(all.Leases) != 2500 || all.Truncated {
		t.Errorf("leases --json = %d leases, truncated %v; want all 2500", len(all.Leases), all.Truncated)
	}
	var some struct {
		kcLeases
		Next string `json:"next"`
	}
	kcOK(t, d, &some, "leases", "--json", "--limit", "1500")
	if len(some.Leases) != 1500 || !some.Truncated || some.Next == "" {
		t.Errorf("leases --limit 1500 = %d leases, truncated %v, next %q; want 1500, truncated, a next", len(some.Leases), some.Truncated, some.Next)
	}
	table := kcOK(t, d, nil, "leases").stdout
	if n := strings.Count(table, "\n"); n != 2501 {
		t.Errorf("leases table has %d lines; want a header and 2500 rows", n)
	}
	var agents kcAgents
	kcOK(t, d, &agents, "agents", "--json")
	if len(agents.Agents) != 1100 || agents.Truncated {
		t.Errorf("agents --json = %d agents, truncated %v; want all 1100", len(agents.Agents), agents.Truncated)
	}
}
