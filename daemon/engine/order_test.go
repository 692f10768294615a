package engine

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// checkOrders checks the paging orders against the maps they index: byKey
// holds exactly the resources, byPriority exactly the registered agents,
// and each agent's session lists exactly its leases, in fence order.
func checkOrders(t require.TestingT, e *Engine) {
	require.Equal(t, e.resources.len(), e.byKey.Len(), "byKey and resources disagree")
	prev := ""
	e.byKey.Ascend(func(r *resource) bool {
		require.Same(t, e.resources.get(r.key), r, "byKey holds %q, which resources does not", r.key)
		require.Less(t, prev, r.key)
		prev = r.key
		return true
	})
	require.Equal(t, e.registered, e.byPriority.Len(), "byPriority and the registered agents disagree")
	e.byPriority.Ascend(func(a *agent) bool {
		require.Same(t, e.agents[a.id], a)
		require.False(t, a.unregistered, "byPriority holds unregistered %q", a.id)
		return true
	})
	for _, a := range e.agents {
		n, empty := 0, 0
		for name, s := range a.sessions {
			require.Equal(t, name, s.name)
			if s.n == 0 {
				empty++
			}
			var last uint64
			live := 0
			for i, x := range s.ls {
				if i < s.head {
					require.Nil(t, x)
				}
				if x == nil {
					continue
				}
				live++
				require.Same(t, s, x.sess())
				require.Equal(t, int32(i), x.sessIdx)
				require.Equal(t, name, x.sess().name)
				require.Same(t, a, x.agent())
				require.Greater(t, x.Fence, last, "session %q of %q out of fence order", name, a.id)
				last = x.Fence
			}
			require.Equal(t, s.n, live)
			n += live
		}
		require.Equal(t, a.nLeases, n, "agent %q: session lists and leases disagree", a.id)
		require.Equal(t, a.emptySessions, empty, "agent %q: empty session lists miscounted", a.id)
		require.LessOrEqual(t, empty, max(8, len(a.sessions)/2+1), "agent %q keeps too many empty session lists", a.id)
	}
}

// leaseOrder compares leases in list order.
func leaseOrder(x, y Lease) int {
	return cmp.Or(strings.Compare(x.Resource, y.Resource), cmp.Compare(x.Fence, y.Fence))
}

// TestLeasesPageBoundedWork pages through many leases with a small work
// bound: every page stays within it, and together they list every lease
// once, in order.
func TestLeasesPageBoundedWork(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	mustRegister(t, e, "b", 2)
	var want []Lease
	for i := range 500 {
		agent := "a"
		if i%7 == 0 {
			agent = "b"
		}
		want = append(want, mustGrant(t, e, t0, agent, "s", fmt.Sprintf("/k/%03d", i%211), "CONSUMES"))
	}
	slices.SortFunc(want, leaseOrder)
	for _, tc := range []struct {
		name   string
		f      LeaseFilter
		filter func(Lease) bool
	}{
		{"all", LeaseFilter{Limit: 13}, func(Lease) bool { return true }},
		{"prefix", LeaseFilter{Limit: 13, ResourcePrefix: "FILE:/k/1"}, func(l Lease) bool { return strings.HasPrefix(l.Resource, "FILE:/k/1") }},
		{"agent", LeaseFilter{Limit: 13, AgentID: "b"}, func(l Lease) bool { return l.AgentID == "b" }},
		{"agent and prefix", LeaseFilter{Limit: 5, AgentID: "a", ResourcePrefix: "FILE:/k/02"}, func(l Lease) bool {
			return l.AgentID == "a" && strings.HasPrefix(l.Resource, "FILE:/k/02")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const work = 20
			var got []Lease
			f := tc.f
			for pages := 0; ; pages++ {
				require.Less(t, pages, 1000, "paging does not end")
				p, err := e.LeasesPage(t0, f, work)
				require.NoError(t, err)
				require.LessOrEqual(t, len(p.Leases), f.Limit)
				got = append(got, p.Leases...)
				if !p.More {
					break
				}
				require.True(t, f.After.after(p.Next.Resource, p.Next.Fence) || p.Next.Fence == math.MaxUint64 && p.Next.Resource > f.After.Resource,
					"page %d did not advance: %+v after %+v", pages, p.Next, f.After)
				f.After = p.Next
			}
			var exp []Lease
			for _, l := range want {
				if tc.filter(l) {
					exp = append(exp, l)
				}
			}
			require.Equal(t, ids(exp), ids(got))
		})
	}
}

func ids(ls []Lease) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.ID
	}
	return out
}

// TestPagingUnderChange is the paging contract as a property: while leases
// are granted and ended between pages, every lease active from the first
// page to the last is listed exactly once, no lease is listed twice, and
// the pages come in list order.
func TestPagingUnderChange(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		e := New(Config{Journal: true})
		agents := []string{"a", "b", "c"}
		for i, id := range agents {
			_, err := e.Register(t0, root, id, int64(i+1), true)
			require.NoError(t, err)
		}
		now := t0
		var live []string
		grant := func() {
			req := req1(rapid.SampledFrom(agents).Draw(t, "agent"), "s", "FILE",
				fmt.Sprintf("/p/%d", rapid.IntRange(0, 30).Draw(t, "path")), "CONSUMES",
				int64(rapid.IntRange(1, 200).Draw(t, "ttl")))
			r, err := e.Acquire(now, root, req)
			require.NoError(t, err)
			if r.Granted {
				live = append(live, r.Leases[0].ID)
			}
		}
		for range rapid.IntRange(0, 60).Draw(t, "before") {
			grant()
		}
		before := map[string]bool{}
		ls, _, err := e.ListLeases(now, LeaseFilter{Limit: MaxLimit})
		require.NoError(t, err)
		for _, l := range ls {
			before[l.ID] = true
		}
		f := LeaseFilter{Limit: rapid.IntRange(1, 7).Draw(t, "limit")}
		if rapid.Bool().Draw(t, "by agent") {
			f.AgentID = "b"
		}
		work := rapid.IntRange(0, 10).Draw(t, "work")
		seen := map[string]int{}
		var got []Lease
		ended := map[string]bool{}
		for pages := 0; ; pages++ {
			require.Less(t, pages, 10000)
			p, err := e.LeasesPage(now, f, work)
			require.NoError(t, err)
			got = append(got, p.Leases...)
			for _, l := range p.Leases {
				seen[l.ID]++
			}
			if !p.More {
				break
			}
			f.After = p.Next
			// Changes between pages.
			for range rapid.IntRange(0, 3).Draw(t, "changes") {
				switch rapid.IntRange(0, 3).Draw(t, "change") {
				case 0:
					grant()
				case 1:
					if len(live) > 0 {
						id := rapid.SampledFrom(live).Draw(t, "release")
						if ok, _, _ := e.Release(now, root, id); ok {
							ended[id] = true
						}
					}
				case 2:
					now += int64(rapid.IntRange(0, 50).Draw(t, "dt"))
					e.Expire(now)
				case 3:
					if rapid.IntRange(0, 5).Draw(t, "end?") == 0 {
						e.EndSession(now, root, rapid.SampledFrom(agents).Draw(t, "agent"), "s")
					}
				}
			}
		}
		require.True(t, slices.IsSortedFunc(got, leaseOrder), "pages out of order")
		for id, n := range seen {
			require.Equal(t, 1, n, "lease %s listed %d times", id, n)
		}
		// Leases active throughout: there before, not ended, not expired.
		final, _, err := e.ListLeases(now, LeaseFilter{Limit: MaxLimit})
		require.NoError(t, err)
		for _, l := range final {
			if before[l.ID] && !ended[l.ID] && (f.AgentID == "" || l.AgentID == f.AgentID) {
				require.Equal(t, 1, seen[l.ID], "lease %s (%s) active throughout but listed %d times", l.ID, l.Resource, seen[l.ID])
			}
		}
		checkOrders(t, e)
	})
}

// TestAgentsPage pages through agents two at a time while priorities
// change and agents come and go.
func TestAgentsPage(t *testing.T) {
	e := newTestEngine(t)
	for i := range 9 {
		mustRegister(t, e, fmt.Sprintf("ag%d", i), int64(10-i))
	}
	var got []string
	var after AgentPos
	for pages := 0; ; pages++ {
		require.Less(t, pages, 100)
		p, err := e.AgentsPage(t0, after, 2)
		require.NoError(t, err)
		for _, a := range p.Agents {
			got = append(got, a.ID)
		}
		if !p.More {
			break
		}
		after = p.Next
		if pages == 1 {
			_, err := e.Register(t0, alice, "late", 100, true) // after everyone: listed
			require.NoError(t, err)
			_, err = e.Register(t0, alice, "early", 0, true) // before the cursor: not listed
			require.NoError(t, err)
		}
	}
	require.Equal(t, []string{"ag8", "ag7", "ag6", "ag5", "ag4", "ag3", "ag2", "ag1", "ag0", "late"}, got)
	checkOrders(t, e)
	all, more, err := e.ListAgents(t0, 0)
	require.NoError(t, err)
	require.False(t, more)
	require.Len(t, all, 11)
	require.Equal(t, "early", all[0].ID)
}

// TestEndSessionInSteps ends a session of 2,500 leases, each wanted by a
// parked senior, 1,000 at a time: each step releases the oldest 1,000 and
// grants their waiters; the last ends the session. Replaying the records
// gives the same state.
func TestEndSessionInSteps(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "senior", 1)
	mustRegister(t, e, "junior", 2)
	const n = 2500
	var fences []uint64
	for i := range n {
		fences = append(fences, mustGrant(t, e, t0, "junior", "big", fmt.Sprintf("/r/%d", i), "MUTATES").Fence)
	}
	for i := range n {
		req := req1("senior", "s", "FILE", fmt.Sprintf("/r/%d", i), "MUTATES", 60_000)
		req.WaitTimeout = 60_000
		r, err := e.Acquire(t0, alice, req)
		require.NoError(t, err)
		require.True(t, r.Queued)
	}
	recs := e.Records()
	var steps []int
	for more := true; more; {
		released, wake, m, err := e.EndSessionStep(t0, alice, "junior", "big", 1000)
		require.NoError(t, err)
		require.Len(t, wake, released, "each released lease grants its waiter")
		for _, w := range wake {
			require.True(t, w.Result.Granted)
		}
		steps = append(steps, released)
		more = m
		if more {
			// The oldest went first; the session is not ended yet.
			ls, _, err := e.ListLeases(t0, LeaseFilter{AgentID: "junior", Limit: MaxLimit})
			require.NoError(t, err)
			require.Len(t, ls, n-sum(steps))
			for _, l := range ls {
				require.Greater(t, l.Fence, fences[sum(steps)-1])
			}
		}
	}
	require.Equal(t, []int{1000, 1000, 500}, steps)
	mustDeny(t, e, t0, "junior", "big", "/other", "MUTATES", "SESSION_EXPIRED")
	require.Zero(t, e.Stats().Waiters)
	recs = append(recs, e.Records()...)
	kinds := map[RecordKind]int{}
	for _, r := range recs {
		kinds[r.Kind]++
	}
	require.Equal(t, 2, kinds[RecRelease], "one release record per step before the last")
	require.Equal(t, 1, kinds[RecEndSession])
	replayEqual(t, e, recs)
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// TestExpireInSteps expires 2,500 leases 1,000 at a time, earliest first.
func TestExpireInSteps(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	for i := range 2500 {
		mustGrantReq(t, e, t0, req1("a", "s", "FILE", fmt.Sprintf("/e/%d", i), "MUTATES", int64(1000+i)))
	}
	now := t0 + 10_000
	var steps []int
	for more := true; more; {
		n, _, m := e.ExpireStep(now, 1000)
		steps = append(steps, n)
		more = m
		if more {
			at, ok := e.NextDeadline()
			require.True(t, ok)
			require.LessOrEqual(t, at, now, "the rest is due at once")
		}
	}
	require.Equal(t, []int{1000, 1000, 500}, steps)
	require.Zero(t, e.Stats().Leases)
}

// TestExpireTiesInFenceOrder expires leases that share one expiry, one at
// a time: the oldest (lowest fence) goes first, whatever order the expiry
// queue met them in. Here the queue first holds them latest fence first,
// then a heartbeat gives them all the same expiry, from the latest fence
// to the oldest.
func TestExpireTiesInFenceOrder(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	const n = 200
	ids := make([]string, n)
	for i := range n {
		ids[i] = mustGrantReq(t, e, t0, req1("a", "s", "FILE", fmt.Sprintf("/t/%d", i), "MUTATES", int64(10_000-i))).ID
	}
	for i := n - 1; i >= 0; i-- {
		_, err := e.Heartbeat(t0+1, alice, ids[i], 5000)
		require.NoError(t, err)
	}
	e.Records()
	var got []string
	for more := true; more; {
		_, _, more = e.ExpireStep(t0+1+5000, 1)
		for _, r := range e.Records() {
			if r.Kind == RecExpire {
				got = append(got, r.LeaseIDs...)
			}
		}
	}
	require.Equal(t, ids, got)
}

// TestSessionListStaysShort checks that a session that always holds a
// lease while it takes and releases others one at a time, oldest first,
// keeps a short list: the nils its released leases leave before head are
// dropped too, not kept for every lease it was ever granted.
func TestSessionListStaysShort(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "a", 1)
	prev := mustGrantReq(t, e, t0, req1("a", "s", "FILE", "/x0", "MUTATES", 60_000))
	for i := 1; i <= 1000; i++ {
		l := mustGrantReq(t, e, t0, req1("a", "s", "FILE", "/x"+strconv.Itoa(i), "MUTATES", 60_000))
		ok, _, err := e.Release(t0, alice, prev.ID)
		require.NoError(t, err)
		require.True(t, ok)
		prev = l
	}
	s := e.agents["a"].sessions["s"]
	require.Equal(t, 1, s.n)
	require.Less(t, len(s.ls), 64)
	require.Same(t, e.lookup(prev.ID), s.ls[s.head])
}
