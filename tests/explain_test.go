package tests

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// explainArgs is an explain of FILE:path; agent, session and pred may be "".
func explainArgs(agent, session, path, pred string) *protocol.Args {
	a := args(protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, path)
	if agent != "" {
		a.AgentID = agent
		a.Set(protocol.ArgAgentID)
	}
	if session != "" {
		a.SessionID = session
		a.Set(protocol.ArgSessionID)
	}
	if pred != "" {
		a.Predicate = pred
		a.Set(protocol.ArgPredicate)
	}
	return a
}

// TestExplainThenAcquireAgree drives the real daemon with random acquires,
// parked acquires and releases; before each acquire it asks explain about
// the same request, in the same write on the same connection so that
// nothing can come between, and checks the acquire got what explain said.
func TestExplainThenAcquireAgree(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	rng := rand.New(rand.NewPCG(16, 2026))
	agents := []string{"a1", "a2", "a3", "a4"}
	for i, ag := range agents {
		mustOK(t, "register", r.Call(uint64(i+1), protocol.OpRegisterAgent,
			args(protocol.ArgAgentID, ag, protocol.ArgPriority, 10*(i%3+1))), nil) // a1 and a4 have equal priorities
	}
	preds := []string{"MUTATES", "CONSUMES", "DEPENDS_ON", "PROVIDES"}
	paths := []string{"/p/a", "/p/b", "/p/c"}
	var leases []string
	id := uint64(100)
	seen := map[string]int{}
	for i := 0; i < 300; i++ {
		id += 2
		if len(leases) > 0 && rng.IntN(4) == 0 {
			k := rng.IntN(len(leases))
			mustOK(t, "release", r.Call(id, protocol.OpRelease, args(protocol.ArgLeaseID, leases[k])), nil)
			leases = append(leases[:k], leases[k+1:]...)
			continue
		}
		ag, sess := agents[rng.IntN(len(agents))], fmt.Sprintf("s%d", rng.IntN(2))
		path, pred := paths[rng.IntN(len(paths))], preds[rng.IntN(len(preds))]
		acq := acquireArgs(ag, sess, path, pred, 60_000)
		parked := rng.IntN(5) == 0
		if parked {
			acq = parkArgs(ag, sess, path, pred, 60_000, 1)
		}
		xf, err := protocol.AppendRequest(nil, id, protocol.OpExplain, explainArgs(ag, sess, path, pred))
		require.NoError(t, err)
		af, err := protocol.AppendRequest(xf, id+1, protocol.OpAcquire, acq)
		require.NoError(t, err)
		r.Write(af)
		var x protocol.ExplainResult
		mustOK(t, "explain", r.Recv(), &x)
		what := fmt.Sprintf("step %d: explain %s %s %s %s said %q", i, ag, sess, path, pred, x.Message)
		if parked && x.Reason == protocol.ReasonWait {
			// Parked for 1 ms, then answered WAIT by the timer.
			resp := r.Recv()
			require.Equal(t, id+1, resp.ID)
			var res protocol.AcquireResult
			mustOK(t, "acquire", resp, &res)
			require.False(t, res.Success, what)
			require.Equal(t, protocol.ReasonWait, res.Reason, what)
			require.Equal(t, x.HeldBy, res.HeldBy, what)
			seen["WAIT"]++
			continue
		}
		var res protocol.AcquireResult
		mustOK(t, "acquire", r.Recv(), &res)
		seen[x.Verdict]++
		if x.Verdict == protocol.VerdictGrant {
			require.True(t, res.Success, "%s; acquire said %s: %s", what, res.Reason, res.Message)
			leases = append(leases, res.LeaseID)
			continue
		}
		require.False(t, res.Success, "%s; acquire granted", what)
		require.Equal(t, x.Reason, res.Reason, what)
		require.Equal(t, string(x.Reason), x.Verdict, what)
		require.Equal(t, x.HeldBy, res.HeldBy, what)
		require.Equal(t, x.WaitTime, res.WaitTime, what)
	}
	for _, v := range []string{"GRANT", "DIE", "WAIT", "CONFLICT"} {
		require.Positive(t, seen[v], "no %s verdict in the random run (%v): the test would not see a disagreement", v, seen)
	}
}

// TestExplainOverSocket checks explain's answer: holders of the key with
// their conflicts marked, the queue, the step and the sentence, and that
// it changes nothing.
func TestExplainOverSocket(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	registerRaw(t, r, []string{"builder", "tester", "lead", "reader"}, []int{100, 200, 50, 300})
	var g protocol.Grant
	mustOK(t, "acquire", r.Call(10, protocol.OpAcquire, acquireArgs("builder", "s", "/src/a.ts", "MUTATES", 120_000)), &g)
	var st0 protocol.StatsResult
	mustOK(t, "stats", r.Call(11, protocol.OpStats, nil), &st0)

	var x protocol.ExplainResult
	mustOK(t, "explain", r.Call(12, protocol.OpExplain, explainArgs("tester", "", "/src/./a.ts", "")), &x)
	require.Equal(t, "FILE:/src/a.ts", x.Resource)
	require.Equal(t, "MUTATES", x.Predicate, "the predicate defaults to MUTATES")
	require.Equal(t, int64(200), x.Priority)
	require.Len(t, x.Holders, 1)
	require.Equal(t, g.LeaseID, x.Holders[0].LeaseID)
	require.Equal(t, int64(100), x.Holders[0].Priority)
	require.True(t, x.Holders[0].Conflicts)
	require.Empty(t, x.Queue)
	require.Equal(t, "DIE", x.Verdict)
	require.Equal(t, "builder", x.HeldBy)
	require.Equal(t, "4:senior-holder", x.Step)
	require.True(t, strings.HasPrefix(x.Message, "DIE: FILE:/src/a.ts is held by builder (priority 100, MUTATES, "), x.Message)
	require.Contains(t, x.Message, "you (tester, priority 200) are younger, so Wait-Die says abort and retry in 1s")

	mustOK(t, "explain", r.Call(13, protocol.OpExplain, explainArgs("reader", "", "/src/a.ts", "CONSUMES")), &x)
	require.Equal(t, "DIE", x.Verdict)
	mustOK(t, "explain", r.Call(14, protocol.OpExplain, explainArgs("lead", "", "/src/a.ts", "")), &x)
	require.Equal(t, "WAIT", x.Verdict)
	require.Equal(t, "5:older-than-holders", x.Step)
	mustOK(t, "explain", r.Call(15, protocol.OpExplain, explainArgs("builder", "s", "/src/a.ts", "")), &x)
	require.Equal(t, "GRANT", x.Verdict, "the holder's own session is re-entrant")
	require.False(t, x.Holders[0].Conflicts)
	require.Equal(t, protocol.Reason(""), x.Reason)
	mustOK(t, "explain", r.Call(16, protocol.OpExplain, explainArgs("", "", "/src/a.ts", "")), &x)
	require.Equal(t, "", x.AgentID)
	require.Contains(t, x.Message, "a new agent")

	// A parked senior shows in the queue, waiting for builder.
	r.Send(17, protocol.OpAcquire, parkArgs("lead", "s", "/src/a.ts", "MUTATES", 1000, 60_000))
	waitFor(t, "lead parked", func() bool { return waiters(t, r, 18) == 1 })
	mustOK(t, "explain", r.Call(19, protocol.OpExplain, explainArgs("tester", "", "/src/a.ts", "CONSUMES")), &x)
	require.Len(t, x.Queue, 1)
	require.Equal(t, "lead", x.Queue[0].AgentID)
	require.Equal(t, "builder", x.Queue[0].WaitsFor)
	require.True(t, x.Queue[0].Conflicts)
	var ws protocol.ListWaitersResult
	mustOK(t, "list_waiters", r.Call(20, protocol.OpListWaiters, nil), &ws)
	require.Len(t, ws.Waiters, 1)
	require.Equal(t, protocol.WaiterInfo{AgentID: "lead", SessionID: "s", Priority: 50, Resource: "FILE:/src/a.ts",
		Predicate: "MUTATES", Since: ws.Waiters[0].Since, Deadline: ws.Waiters[0].Since + 60_000, WaitsFor: "builder"}, ws.Waiters[0])

	// Nothing changed but the parked acquire: no lease, no counter.
	var st protocol.StatsResult
	mustOK(t, "stats", r.Call(21, protocol.OpStats, nil), &st)
	require.Equal(t, st0.Leases, st.Leases)
	require.Equal(t, st0.Grants, st.Grants)
	require.Equal(t, st0.Dies, st.Dies)
	require.Equal(t, st0.Waits, st.Waits)
	require.Equal(t, st0.Fence, st.Fence)

	expectCode(t, "unknown agent", r.Call(22, protocol.OpExplain, explainArgs("ghost", "", "/x", "")), protocol.CodeUnknownAgent)
	expectCode(t, "bad predicate", r.Call(23, protocol.OpExplain, explainArgs("", "", "/x", "EATS")), protocol.CodeInvalidArgument)
	expectCode(t, "no path", r.Call(24, protocol.OpExplain, args(protocol.ArgResourceType, "FILE")), protocol.CodeInvalidArgument)
	expectCode(t, "bad limit", r.Call(25, protocol.OpListWaiters, args(protocol.ArgLimit, 10_001)), protocol.CodeInvalidArgument)
}

func TestKlockctlWhy(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "agents", "register", "--priority", "100", "builder")
	kcOK(t, d, nil, "agents", "register", "--priority", "200", "tester")
	kcOK(t, d, nil, "agents", "register", "--priority", "50", "lead")
	kcOK(t, d, nil, "acquire", "--agent", "builder", "--ttl", "2m", "FILE:/src/a.ts")

	out := kcOK(t, d, nil, "why", "--agent", "tester", "FILE:/src/a.ts").stdout
	require.Contains(t, out, "DIE: FILE:/src/a.ts is held by builder (priority 100, MUTATES, ")
	require.Contains(t, out, "you (tester, priority 200) are younger, so Wait-Die says abort and retry in 1s")
	require.Regexp(t, `(?m)^builder\s+100\s+MUTATES\s+\S+\s+in \S+\s+yes\s+klockctl\s+\d+$`, out)
	require.Contains(t, out, "step 4:senior-holder")

	out = kcOK(t, d, nil, "why", "--agent", "lead", "FILE:/src/a.ts").stdout
	require.Contains(t, out, "WAIT: FILE:/src/a.ts is held by builder")
	require.Contains(t, out, "Wait-Die lets you wait for it")

	res := runCmd(t, kcCommand(t, d, []string{"KLOCK_AGENT=tester"}, "why", "--predicate", "consumes", "FILE:/src/b.ts"))
	require.Equal(t, 0, res.code, res.stderr)
	out = res.stdout
	require.Contains(t, out, "GRANT: nothing on FILE:/src/b.ts conflicts with CONSUMES, so you (tester, priority 200) would get the lease at once")
	require.Contains(t, out, "holders: none")

	var x struct {
		Verdict string `json:"verdict"`
		Step    string `json:"step"`
		Holders []struct {
			AgentID   string `json:"agent_id"`
			Priority  int64  `json:"priority"`
			Conflicts bool   `json:"conflicts"`
		} `json:"holders"`
	}
	kcOK(t, d, &x, "why", "--json", "FILE:/src/a.ts")
	require.Equal(t, "DIE", x.Verdict)
	require.Len(t, x.Holders, 1)
	require.Equal(t, "builder", x.Holders[0].AgentID)
	require.True(t, x.Holders[0].Conflicts)

	kcExpect(t, d, 2, []string{"why takes exactly one RESOURCE"}, "why")
	kcExpect(t, d, 2, []string{"unknown predicate"}, "why", "--predicate", "EATS", "/x")
	kcExpect(t, d, 1, []string{"not registered"}, "why", "--agent", "ghost", "/x")
}
