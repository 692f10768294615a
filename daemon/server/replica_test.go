package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/klockd/klock/daemon/cluster"
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// Cluster mode feeds every node's server the same log entries
// (stateMachine.Apply); the nodes agree only if the state after each entry
// is a function of the entries. TestReplicasAgree feeds one random log,
// through the real change encoding, to two servers and to a third restored
// from a snapshot taken partway, and compares what they answer and their
// snapshots byte for byte.

func newReplica(t require.TestingT) *stateMachine {
	s := New(Config{
		Engine: engine.New(engine.Config{MaxTTL: 1000, MaxLeases: 12, MaxWaiters: 6}),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return (*stateMachine)(s)
}

// logEntry draws one entry of a random log. Leases are named by their index
// among the grants seen so far.
type logGen struct {
	t      *rapid.T
	now    int64
	leases []string
	wait   []engine.WaiterID
}

func (g *logGen) entry(rev int64) *cluster.Entry {
	t := g.t
	if rev <= 3 {
		// The agents first, so that most acquires mean something.
		ch := &change{op: protocol.OpRegisterAgent, args: &protocol.Args{AgentID: fmt.Sprintf("a%d", rev-1), Priority: rev}}
		ch.args.Set(protocol.ArgAgentID)
		ch.args.Set(protocol.ArgPriority)
		body, err := encodeChange(ch)
		require.NoError(t, err)
		return &cluster.Entry{Rev: rev, Time: g.now, Kind: cluster.KindChange, Owner: "a.1", Body: body}
	}
	g.now += int64(rapid.IntRange(0, 40).Draw(t, "dt"))
	e := &cluster.Entry{Rev: rev, Time: g.now, Kind: cluster.KindChange,
		Owner: rapid.SampledFrom([]string{"a.1", "b.2", "c.3"}).Draw(t, "owner")}
	e.Seed[0], e.Seed[1] = byte(rev), byte(rev>>8)
	agent := rapid.SampledFrom([]string{"a0", "a1", "a2"}).Draw(t, "agent")
	ch := &change{caller: engine.Caller{UID: 0, PID: 7}, args: &protocol.Args{AgentID: agent, SessionID: "s"}}
	a := ch.args
	a.Set(protocol.ArgAgentID)
	a.Set(protocol.ArgSessionID)
	lease := func() {
		a.LeaseID = "none"
		if len(g.leases) > 0 {
			a.LeaseID = rapid.SampledFrom(g.leases).Draw(t, "lease")
		}
		a.Set(protocol.ArgLeaseID)
	}
	switch rapid.IntRange(0, 13).Draw(t, "op") {
	case 12:
		ch.op = protocol.OpAcquire
		a.ResourceType, a.ResourcePath, a.Predicate = "FILE", rapid.SampledFrom([]string{"/a", "/b"}).Draw(t, "path"), "MUTATES"
		a.TTL = int64(rapid.SampledFrom([]int{0, 50}).Draw(t, "bound ttl")) // 0: none
		for _, x := range []protocol.Arg{protocol.ArgResourceType, protocol.ArgResourcePath, protocol.ArgPredicate, protocol.ArgTTL} {
			a.Set(x)
		}
		ch.bind = &engine.Process{PID: int32(rapid.IntRange(1, 2).Draw(t, "pid")), Start: 1}
	case 13:
		ch = &change{op: opProcessEnd, proc: engine.Process{PID: int32(rapid.IntRange(1, 2).Draw(t, "pid")), Start: 1}}
	case 0:
		ch.op = protocol.OpRegisterAgent
		a.Priority = int64(rapid.IntRange(1, 3).Draw(t, "prio"))
		a.Set(protocol.ArgPriority)
	case 1, 2, 3:
		ch.op = protocol.OpAcquire
		a.ResourceType, a.ResourcePath = "FILE", rapid.SampledFrom([]string{"/a", "/b", "/c"}).Draw(t, "path")
		a.Predicate = rapid.SampledFrom([]string{"MUTATES", "CONSUMES"}).Draw(t, "pred")
		a.TTL = int64(rapid.IntRange(1, 100).Draw(t, "ttl"))
		a.WaitTimeout = int64(rapid.SampledFrom([]int{0, 30, 500}).Draw(t, "wait"))
		for _, x := range []protocol.Arg{protocol.ArgResourceType, protocol.ArgResourcePath, protocol.ArgPredicate, protocol.ArgTTL, protocol.ArgWaitTimeout} {
			a.Set(x)
		}
	case 4:
		ch.op = protocol.OpAcquireMany
		a.Intents = []protocol.Intent{{ResourceType: "FILE", ResourcePath: "/a", Predicate: "MUTATES"}, {ResourceType: "FILE", ResourcePath: "/c", Predicate: "MUTATES"}}
		a.TTL = 50
		a.Set(protocol.ArgIntents)
		a.Set(protocol.ArgTTL)
	case 5, 6:
		ch.op = protocol.OpRelease
		lease()
	case 7:
		ch.op = protocol.OpHeartbeat
		lease()
	case 8:
		ch.op = protocol.OpEndSession
	case 9:
		if len(g.wait) == 0 {
			return g.entry(rev)
		}
		ch = &change{op: opCancel, waiter: rapid.SampledFrom(g.wait).Draw(t, "waiter")}
	case 10:
		e.Kind = cluster.KindTick
		return e
	case 11:
		e.Kind = cluster.KindDropOwner
		e.Body = []byte(rapid.SampledFrom([]string{"a.1", "b.2", "c.3"}).Draw(t, "drop"))
		return e
	}
	body, err := encodeChange(ch)
	require.NoError(t, err)
	e.Body = body
	return e
}

// observe records the grants and parked requests of an answer, so later
// entries can name them.
func (g *logGen) observe(res any) {
	o := res.(outcome)
	switch r := o.result.(type) {
	case *protocol.Grant:
		g.leases = append(g.leases, r.LeaseID)
	case *protocol.AcquireManyGrant:
		for _, l := range r.Leases {
			g.leases = append(g.leases, l.LeaseID)
		}
	}
	for _, w := range o.wakes {
		for _, l := range w.Result.Leases {
			g.leases = append(g.leases, l.ID)
		}
	}
	if o.parked != 0 {
		g.wait = append(g.wait, o.parked)
	}
}

// answerText is an answer as text, without what depends on which of
// several holders the engine looked at first (wait_time, held_by and the
// message of a denial): those are answers of the proposer only, and a
// restored engine holds its leases in another order (daemon/engine
// TestDeterminism).
func answerText(res any) string {
	o := res.(outcome)
	text := fmt.Sprintf("err=%v parked=%d ", o.err, o.parked)
	if d, ok := o.result.(*protocol.Denial); ok {
		text += "denial " + string(d.Reason)
	} else {
		text += fmt.Sprintf("%T %+v", o.result, o.result)
	}
	for _, w := range o.wakes {
		text += fmt.Sprintf(" wake %d granted=%v %+v %s", w.Waiter, w.Result.Granted, w.Result.Leases, w.Result.Denial.Reason)
	}
	return text
}

func TestReplicasAgree(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a, b := newReplica(t), newReplica(t)
		var c *stateMachine
		g := &logGen{t: t, now: 1_700_000_000_000}
		n := rapid.IntRange(4, 120).Draw(t, "entries")
		cut := rapid.IntRange(0, n).Draw(t, "cut")
		for i := range n {
			if i == cut {
				c = restored(t, b)
			}
			e := g.entry(int64(i + 1))
			ra := a.Apply(e, nil)
			g.observe(ra)
			want := answerText(ra)
			require.Equal(t, want, answerText(b.Apply(e, nil)), "entry %d", i)
			if c != nil {
				require.Equal(t, want, answerText(c.Apply(e, nil)), "entry %d after restoring at %d", i, cut)
			}
		}
		if c == nil {
			c = restored(t, b)
		}
		sa, err := a.Snapshot()
		require.NoError(t, err)
		sb, err := b.Snapshot()
		require.NoError(t, err)
		sc, err := c.Snapshot()
		require.NoError(t, err)
		require.Equal(t, sa, sb)
		require.Equal(t, sa, sc)
	})
}

func restored(t require.TestingT, from *stateMachine) *stateMachine {
	b, err := from.Snapshot()
	require.NoError(t, err)
	r := newReplica(t)
	require.NoError(t, r.Restore(b))
	return r
}

// TestReplicaSnapshotKeepsOwners: who parked each request survives a
// snapshot, so a restored node drops a lapsed node's requests too.
func TestReplicaSnapshotKeepsOwners(t *testing.T) {
	a := newReplica(t)
	apply := func(m *stateMachine, owner string, ch *change) outcome {
		body, err := encodeChange(ch)
		require.NoError(t, err)
		return m.Apply(&cluster.Entry{Rev: 1, Time: 1_700_000_000_000, Kind: cluster.KindChange, Owner: owner, Body: body}, nil).(outcome)
	}
	req := func(op, agent string, prio, wait int64) *change {
		ch := &change{op: op, args: &protocol.Args{AgentID: agent, SessionID: "s", Priority: prio, ResourceType: "FILE",
			ResourcePath: "/x", Predicate: "MUTATES", TTL: 500, WaitTimeout: wait}}
		for _, x := range []protocol.Arg{protocol.ArgAgentID, protocol.ArgSessionID, protocol.ArgPriority, protocol.ArgResourceType,
			protocol.ArgResourcePath, protocol.ArgPredicate, protocol.ArgTTL, protocol.ArgWaitTimeout} {
			ch.args.Set(x)
		}
		return ch
	}
	apply(a, "n1.1", req(protocol.OpRegisterAgent, "old", 1, 0))
	apply(a, "n1.1", req(protocol.OpRegisterAgent, "young", 2, 0))
	require.NotNil(t, apply(a, "n1.1", req(protocol.OpAcquire, "young", 0, 0)).result)
	require.NotZero(t, apply(a, "n2.7", req(protocol.OpAcquire, "old", 0, 500)).parked)
	b := restored(t, a)
	require.Equal(t, []string{"n2.7"}, b.Owners())
	drop := &cluster.Entry{Rev: 2, Time: 1_700_000_000_001, Kind: cluster.KindDropOwner, Body: []byte("n2.7")}
	b.Apply(drop, nil)
	require.Empty(t, b.Owners())
	st, _, _ := readLocal((*Server)(b), func(int64) (engine.Stats, error) { return b.eng.Stats(), nil })
	require.Zero(t, st.Waiters)
}

// TestReplicaPanicAnswersInternal: a panic while a node applies a change is
// answered INTERNAL, and the node applies the next entries.
func TestReplicaPanicAnswersInternal(t *testing.T) {
	m := newReplica(t)
	midChangeHook = func(op string) {
		if op == protocol.OpRegisterAgent {
			panic("test: mid-change")
		}
	}
	t.Cleanup(func() { midChangeHook = nil })
	ch := &change{op: protocol.OpRegisterAgent, args: &protocol.Args{AgentID: "a", Priority: 1}}
	ch.args.Set(protocol.ArgAgentID)
	ch.args.Set(protocol.ArgPriority)
	body, err := encodeChange(ch)
	require.NoError(t, err)
	o := m.Apply(&cluster.Entry{Rev: 1, Time: 1, Kind: cluster.KindChange, Body: body}, nil).(outcome)
	require.ErrorContains(t, o.err, "internal error while applying this change")
	o = m.Apply(&cluster.Entry{Rev: 2, Time: 2, Kind: cluster.KindTick}, nil).(outcome)
	require.NoError(t, o.err)
}

// TestDropOwnerReleasesUntimedBoundLeases: when a node is gone, the leases
// bound to its clients' processes without a ttl are released (nothing else
// would end them), on a restored node too; those with a ttl run on.
func TestDropOwnerReleasesUntimedBoundLeases(t *testing.T) {
	m := newReplica(t)
	rev := int64(0)
	apply := func(m *stateMachine, owner string, ch *change) outcome {
		body, err := encodeChange(ch)
		require.NoError(t, err)
		rev++
		return m.Apply(&cluster.Entry{Rev: rev, Time: 1_700_000_000_000, Kind: cluster.KindChange, Owner: owner, Body: body}, nil).(outcome)
	}
	acquire := func(path string, ttl int64) *change {
		ch := &change{op: protocol.OpAcquire, bind: &engine.Process{PID: 42, Start: 7, Boot: 9},
			args: &protocol.Args{AgentID: "a", SessionID: "s", ResourceType: "FILE", ResourcePath: path, Predicate: "MUTATES", TTL: ttl}}
		for _, x := range []protocol.Arg{protocol.ArgAgentID, protocol.ArgSessionID, protocol.ArgResourceType,
			protocol.ArgResourcePath, protocol.ArgPredicate, protocol.ArgTTL} {
			ch.args.Set(x)
		}
		return ch
	}
	reg := &change{op: protocol.OpRegisterAgent, args: &protocol.Args{AgentID: "a", Priority: 1}}
	reg.args.Set(protocol.ArgAgentID)
	reg.args.Set(protocol.ArgPriority)
	apply(m, "n1.1", reg)
	require.NotNil(t, apply(m, "n2.7", acquire("/untimed", 0)).result)
	require.NotNil(t, apply(m, "n2.7", acquire("/timed", 900)).result)
	require.Equal(t, []string{"n2.7"}, m.Owners())
	for _, r := range []*stateMachine{m, restored(t, m)} {
		r.Apply(&cluster.Entry{Rev: 10, Time: 1_700_000_000_001, Kind: cluster.KindDropOwner, Body: []byte("n2.7")}, nil)
		ls, _, err := r.eng.ListLeases(1_700_000_000_001, engine.LeaseFilter{})
		require.NoError(t, err)
		require.Len(t, ls, 1)
		require.Equal(t, "FILE:/timed", ls[0].Resource)
		require.Empty(t, r.Owners())
	}
}

// proposalLog is a Replicator that keeps what is proposed and applies
// nothing: what a node would have applied alone shows in its engine.
type proposalLog struct {
	mu      sync.Mutex
	changes []*change
}

func (l *proposalLog) Propose(kind cluster.Kind, body []byte, _ any, _ func(any, error)) {
	ch, err := decodeChange(body)
	if kind != cluster.KindChange || err != nil {
		panic(fmt.Sprintf("proposed %v %v", kind, err))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes = append(l.changes, ch)
}

func (l *proposalLog) proposed() []*change {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.changes)
}

func (*proposalLog) Barrier(context.Context) error { return nil }
func (*proposalLog) Owner() string                 { return "n1.1" }
func (*proposalLog) Status() cluster.Status        { return cluster.Status{NodeID: "n1"} }

// TestProcessEndsGoThroughTheLog: in cluster mode, the end of a process
// that this node's clients bound leases to, whether found when the node
// joins (it died meanwhile) or seen by its pidfd, is proposed to the log
// for every node to apply, never applied by this node alone.
func TestProcessEndsGoThroughTheLog(t *testing.T) {
	self(t)
	live, liveP := child(t)
	dead, deadP := child(t)
	dead.Process.Kill()
	dead.Wait()

	m := newReplica(t)
	s := (*Server)(m)
	t.Cleanup(func() { s.Close() })
	rev := int64(0)
	apply := func(ch *change) {
		body, err := encodeChange(ch)
		require.NoError(t, err)
		rev++
		o := m.Apply(&cluster.Entry{Rev: rev, Time: 1_700_000_000_000, Kind: cluster.KindChange, Owner: "n1.1", Body: body}, nil).(outcome)
		require.NoError(t, o.err)
	}
	reg := &change{op: protocol.OpRegisterAgent, args: &protocol.Args{AgentID: "a", Priority: 1}}
	reg.args.Set(protocol.ArgAgentID)
	reg.args.Set(protocol.ArgPriority)
	apply(reg)
	for i, p := range []engine.Process{liveP, deadP} {
		ch := &change{op: protocol.OpAcquire, bind: &p, args: acquireArgs("a", fmt.Sprintf("/p%d", i), 900, 0)}
		apply(ch)
	}

	l := &proposalLog{}
	s.SetReplicator(l) // checks the bound processes: deadP has ended
	if err := live.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both process ends to be proposed", func() bool { return len(l.proposed()) == 2 })
	var ended []engine.Process
	for _, ch := range l.proposed() {
		require.Equal(t, opProcessEnd, ch.op)
		ended = append(ended, ch.proc)
	}
	require.ElementsMatch(t, []engine.Process{liveP, deadP}, ended)
	s.mu.Lock()
	ls, _, err := s.eng.ListLeases(1_700_000_000_000, engine.LeaseFilter{})
	s.mu.Unlock()
	require.NoError(t, err)
	require.Len(t, ls, 2, "leases this node ended alone, outside the log")
}

// stepLog is a proposalLog that also keeps each proposal's callback, for
// the test to answer it.
type stepLog struct {
	proposalLog
	done []func(any, error)
}

func (l *stepLog) Propose(kind cluster.Kind, body []byte, tag any, done func(any, error)) {
	l.proposalLog.Propose(kind, body, tag, done)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done = append(l.done, done)
}

// TestLongChangeStepsKeepTheirArguments: in cluster mode the next step of
// a long change (an end_session over many leases) is proposed from the
// log's callback, after the connection's reader has decoded later requests
// into its reused arguments; the step must still carry its own request's.
func TestLongChangeStepsKeepTheirArguments(t *testing.T) {
	m := newReplica(t)
	s := (*Server)(m)
	t.Cleanup(func() { s.Close() })
	l := &stepLog{}
	s.SetReplicator(l)
	client, server := socketPair(t)
	defer client.Close()
	defer server.Close()
	c := newConn(s, server, Peer{})

	end := &protocol.Args{AgentID: "a", SessionID: "s"}
	end.Set(protocol.ArgAgentID)
	end.Set(protocol.ArgSessionID)
	body, _ := protocol.AppendRequest(nil, 1, protocol.OpEndSession, end)
	s.handle(c, body[protocol.HeaderSize:])
	rel := &protocol.Args{LeaseID: "other"}
	rel.Set(protocol.ArgLeaseID)
	body, _ = protocol.AppendRequest(nil, 2, protocol.OpRelease, rel)
	s.handle(c, body[protocol.HeaderSize:])
	require.Len(t, l.proposed(), 2)

	// The first step's outcome says more remain: its next step is proposed.
	l.mu.Lock()
	first := l.done[0]
	l.mu.Unlock()
	first(outcome{result: &protocol.EndSessionResult{Released: stepWork}, more: true}, nil)
	got := l.proposed()
	require.Len(t, got, 3)
	next := got[2]
	require.Equal(t, protocol.OpEndSession, next.op)
	require.Equal(t, "a", next.args.AgentID, "the next step's agent_id")
	require.Equal(t, "s", next.args.SessionID, "the next step's session_id")
}
