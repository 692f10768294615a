package engine

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/klockd/klock/protocol"
)

// stepFor is the step each reason may come from.
var stepFor = map[protocol.Reason][]Step{
	"":                            {StepNoConflict},
	protocol.ReasonResourceLocked: {StepFrozen},
	protocol.ReasonSessionExpired: {StepSessionEnded},
	protocol.ReasonConflict:       {StepOwnAgent},
	protocol.ReasonDie:            {StepSeniorHolder, StepSeniorQueued},
	protocol.ReasonWait:           {StepOlderThanHolders},
}

// explainThenAcquire explains a random request, checks that explaining
// changed nothing, then makes the acquire and checks that it got the
// verdict explain announced.
func (m *model) explainThenAcquire(n int) {
	req := ExplainRequest{ResourceType: "FILE", ResourcePath: rapid.SampledFrom(m.paths).Draw(m.t, "xpath")}
	if rapid.IntRange(0, 4).Draw(m.t, "xpred?") > 0 {
		req.Predicate = Predicate(rapid.IntRange(1, 6).Draw(m.t, "xpred")).String()
	}
	newAgent := rapid.IntRange(0, 5).Draw(m.t, "new agent?") == 0
	if !newAgent {
		req.AgentID = m.agent()
	}
	session := fmt.Sprintf("fresh%d", n) // a session never seen: what "no session" means
	if rapid.Bool().Draw(m.t, "named session") {
		req.SessionID = m.session()
		session = req.SessionID
	}

	before, stats := m.e.Snapshot(), m.e.Stats()
	deadline, due := m.e.NextDeadline()
	x, err := m.e.Explain(m.now, req)
	require.Equal(m.t, before, m.e.Snapshot(), "explain changed the state")
	require.Equal(m.t, stats, m.e.Stats(), "explain changed the counters")
	dl, ok := m.e.NextDeadline()
	require.Equal(m.t, []any{deadline, due}, []any{dl, ok}, "explain changed the next deadline")
	require.Empty(m.t, m.e.Records(), "explain wrote a record")
	require.Empty(m.t, m.e.Events(), "explain produced an event")

	agentID := req.AgentID
	if newAgent {
		require.NoError(m.t, err)
		agentID = fmt.Sprintf("new%d", n)
		ag, err := m.e.Register(m.now, m.caller(), agentID, 0, false)
		require.NoError(m.t, err)
		require.Equal(m.t, x.Priority, ag.Priority, "explain assumed another priority for a new agent")
		m.agents = append(m.agents, agentID)
		m.recs = append(m.recs, m.e.Records()...)
	}
	pred := req.Predicate
	if pred == "" {
		pred = "MUTATES"
	}
	acq := AcquireRequest{AgentID: agentID, SessionID: session, TTL: int64(rapid.IntRange(1, 100).Draw(m.t, "xttl")),
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: req.ResourcePath, Predicate: pred}}}
	if rapid.Bool().Draw(m.t, "xwait") {
		acq.WaitTimeout = int64(rapid.IntRange(1, 100).Draw(m.t, "xwait_timeout"))
	}
	r, aerr := m.e.Acquire(m.now, m.caller(), acq)
	if err != nil {
		require.Equal(m.t, codeOf(err), codeOf(aerr), "explain failed with %v, acquire with %v", err, aerr)
		return
	}
	require.NoError(m.t, aerr)
	require.Contains(m.t, stepFor[x.Reason], x.Step, "explain's step does not fit its reason")
	require.NotEmpty(m.t, x.Message)
	if x.Reason == "" {
		require.Truef(m.t, r.Granted, "explain said grant (%s), acquire said %s: %s", x.Message, r.Denial.Reason, r.Denial.Message)
		m.granted(r.Leases)
	} else {
		require.Falsef(m.t, r.Granted, "explain said %s (%s), acquire granted", x.Reason, x.Message)
		require.Equal(m.t, x.Reason, r.Denial.Reason, "explain: %s; acquire: %s", x.Message, r.Denial.Message)
		require.Equal(m.t, x.HeldBy, r.Denial.HeldBy)
		require.Equal(m.t, x.WaitTime, r.Denial.WaitTime)
		require.Equal(m.t, x.Reason == protocol.ReasonWait && acq.WaitTimeout > 0, r.Queued)
		if r.Queued {
			m.waiters = append(m.waiters, r.Waiter)
		}
	}
	m.recs = append(m.recs, m.e.Records()...)
	m.check()
}

// TestExplainAgreesWithAcquire: on random histories, explain then acquire
// with nothing in between agree on the verdict, and explain changes nothing.
func TestExplainAgreesWithAcquire(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := newModel(t)
		m.e.SetEvents(rapid.Bool().Draw(t, "events"))
		for i, n := 0, rapid.IntRange(1, 100).Draw(t, "steps"); i < n; i++ {
			m.step()
			m.e.Events()
			if rapid.Bool().Draw(t, "explain?") {
				m.explainThenAcquire(i)
				m.e.Events()
			}
		}
	})
}

func TestExplainHoldersAndQueue(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "old", 1)
	mustRegister(t, e, "mid", 5)
	mustRegister(t, e, "young", 9)
	reader := mustGrant(t, e, t0, "mid", "s", "/x", "CONSUMES")
	dep := mustGrant(t, e, t0, "young", "s", "/x", "DEPENDS_ON")
	// old waits for the young DEPENDS_ON holder? No: MUTATES conflicts
	// with both, and mid is older than young; old is older than both.
	w, err := e.Acquire(t0, alice, AcquireRequest{AgentID: "old", SessionID: "s", TTL: 1000, WaitTimeout: 500,
		Intents: []Intent{{ResourceType: "FILE", ResourcePath: "/x", Predicate: "MUTATES"}}})
	require.NoError(t, err)
	require.True(t, w.Queued)

	x, err := e.Explain(t0+10, ExplainRequest{AgentID: "mid", SessionID: "s2", ResourceType: "file", ResourcePath: "/./x", Predicate: "consumes"})
	require.NoError(t, err)
	require.Equal(t, "FILE:/x", x.Resource)
	require.Equal(t, Consumes, x.Predicate)
	require.Len(t, x.Holders, 2)
	require.Equal(t, reader.ID, x.Holders[0].ID)
	require.False(t, x.Holders[0].Conflicts, "CONSUMES and CONSUMES coexist")
	require.Equal(t, dep.ID, x.Holders[1].ID)
	require.False(t, x.Holders[1].Conflicts, "CONSUMES and DEPENDS_ON coexist")
	require.Equal(t, int64(9), x.Holders[1].Priority)
	require.Len(t, x.Queue, 1)
	require.Equal(t, "old", x.Queue[0].AgentID)
	require.True(t, x.Queue[0].Conflicts)
	require.Equal(t, "mid", x.Queue[0].WaitsFor, "old waits for the oldest conflicting holder")
	// The queued MUTATES of old (priority 1) is senior: mid must not barge past.
	require.Equal(t, protocol.ReasonDie, x.Reason)
	require.Equal(t, StepSeniorQueued, x.Step)
	require.Equal(t, "old", x.HeldBy)
	require.Contains(t, x.Message, "DIE: FILE:/x is awaited first by old")

	// The same agent and session holding it is re-entrant: not a conflict.
	x, err = e.Explain(t0+10, ExplainRequest{AgentID: "young", SessionID: "s", ResourceType: "FILE", ResourcePath: "/x", Predicate: "DEPENDS_ON"})
	require.NoError(t, err)
	require.False(t, x.Holders[1].Conflicts)

	// No agent: a new agent, younger than all.
	x, err = e.Explain(t0+10, ExplainRequest{ResourceType: "FILE", ResourcePath: "/x"})
	require.NoError(t, err)
	require.Equal(t, Mutates, x.Predicate)
	require.True(t, x.Holders[0].Conflicts)
	require.Equal(t, protocol.ReasonDie, x.Reason)
	require.Equal(t, StepSeniorHolder, x.Step)
	require.Contains(t, x.Message, "you (a new agent, priority ")

	// Nothing there: grant, no holders.
	x, err = e.Explain(t0, ExplainRequest{AgentID: "old", ResourceType: "FILE", ResourcePath: "/free"})
	require.NoError(t, err)
	require.Empty(t, x.Holders)
	require.Equal(t, protocol.Reason(""), x.Reason)
	require.Equal(t, StepNoConflict, x.Step)
	require.Contains(t, x.Message, "GRANT")

	_, err = e.Explain(t0, ExplainRequest{AgentID: "nobody", ResourceType: "FILE", ResourcePath: "/x"})
	requireCode(t, err, protocol.CodeUnknownAgent, "nobody")
	_, err = e.Explain(t0, ExplainRequest{ResourceType: "DISK", ResourcePath: "/x"})
	requireCode(t, err, protocol.CodeInvalidArgument, "resource_type")
	_, err = e.Explain(t0, ExplainRequest{ResourceType: "FILE", ResourcePath: "/x", Predicate: "EATS"})
	requireCode(t, err, protocol.CodeInvalidArgument, "predicate")
	_, err = e.Explain(t0, ExplainRequest{ResourceType: "FILE"})
	requireCode(t, err, protocol.CodeInvalidArgument, "resource_path")
}

func TestExplainSentences(t *testing.T) {
	e := newTestEngine(t)
	mustRegister(t, e, "builder", 100)
	mustRegister(t, e, "tester", 200)
	mustRegister(t, e, "lead", 50)
	mustGrantReq(t, e, t0, req1("builder", "s", "FILE", "/src/a.ts", "MUTATES", 120_000))
	x, err := e.Explain(t0, ExplainRequest{AgentID: "tester", ResourceType: "FILE", ResourcePath: "/src/a.ts"})
	require.NoError(t, err)
	require.Equal(t, "DIE: FILE:/src/a.ts is held by builder (priority 100, MUTATES, 2m0s left); "+
		"you (tester, priority 200) are younger, so Wait-Die says abort and retry in 1s", x.Message)
	x, err = e.Explain(t0+500, ExplainRequest{AgentID: "lead", ResourceType: "FILE", ResourcePath: "/src/a.ts"})
	require.NoError(t, err)
	require.Equal(t, "WAIT: FILE:/src/a.ts is held by builder (priority 100, MUTATES, 1m59s left); "+
		"you (lead, priority 50) are older than every holder, so Wait-Die lets you wait for it", x.Message)
	x, err = e.Explain(t0, ExplainRequest{AgentID: "builder", ResourceType: "FILE", ResourcePath: "/src/a.ts"})
	require.NoError(t, err)
	require.Equal(t, protocol.ReasonConflict, x.Reason)
	require.Equal(t, StepOwnAgent, x.Step)
	x, err = e.Explain(t0, ExplainRequest{AgentID: "builder", SessionID: "s", ResourceType: "FILE", ResourcePath: "/src/a.ts"})
	require.NoError(t, err)
	require.Equal(t, "GRANT: nothing on FILE:/src/a.ts conflicts with MUTATES, so you (builder, priority 100) would get the lease at once", x.Message)
	_, _, err = e.Freeze(t0, root, "FILE", "/src/a.ts")
	require.NoError(t, err)
	x, err = e.Explain(t0, ExplainRequest{AgentID: "lead", ResourceType: "FILE", ResourcePath: "/src/a.ts"})
	require.NoError(t, err)
	require.Equal(t, StepFrozen, x.Step)
	require.Equal(t, protocol.ReasonResourceLocked, x.Reason)
}

func TestLeft(t *testing.T) {
	for ms, want := range map[int64]string{-5: "0s", 0: "0s", 300: "300ms", 1000: "1s", 1500: "1.5s", 59_949: "59.9s",
		60_000: "1m0s", 119_000: "1m59s", 3_600_000: "1h0m", 5_400_000: "1h30m"} {
		require.Equalf(t, want, left(ms), "left(%d)", ms)
	}
}
