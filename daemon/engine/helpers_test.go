package engine

import (
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

const t0 int64 = 1_700_000_000_000 // a fixed "now" for tests

var (
	alice = Caller{UID: 1000, PID: 42}
	bob   = Caller{UID: 1001, PID: 43}
	root  = Caller{UID: 0, PID: 1}
)

func newTestEngine(t testing.TB) *Engine {
	t.Helper()
	return New(Config{Journal: true, AdminUID: 999})
}

func mustRegister(t testing.TB, e *Engine, id string, prio int64) Agent {
	t.Helper()
	a, err := e.Register(t0, alice, id, prio, true)
	require.NoError(t, err)
	return a
}

func req1(agent, session, typ, path, pred string, ttl int64) AcquireRequest {
	return AcquireRequest{
		AgentID: agent, SessionID: session, TTL: ttl,
		Intents: []Intent{{ResourceType: typ, ResourcePath: path, Predicate: pred}},
	}
}

func mustAcquire(t testing.TB, e *Engine, now int64, agent, session, path, pred string) Result {
	t.Helper()
	r, err := e.Acquire(now, alice, req1(agent, session, "FILE", path, pred, 60_000))
	require.NoError(t, err)
	return r
}

func mustGrant(t testing.TB, e *Engine, now int64, agent, session, path, pred string) Lease {
	t.Helper()
	return mustGrantReq(t, e, now, req1(agent, session, "FILE", path, pred, 60_000))
}

// mustGrantReq is mustGrant for any single-intent request (another ttl or
// resource type, a wait_timeout, an idem key).
func mustGrantReq(t testing.TB, e *Engine, now int64, req AcquireRequest) Lease {
	t.Helper()
	r, err := e.Acquire(now, alice, req)
	require.NoError(t, err)
	require.Truef(t, r.Granted, "Acquire(%+v) denied: %+v", req, r.Denial)
	require.Len(t, r.Leases, 1)
	return r.Leases[0]
}

func mustDeny(t testing.TB, e *Engine, now int64, agent, session, path, pred string, want protocol.Reason) Denial {
	t.Helper()
	r := mustAcquire(t, e, now, agent, session, path, pred)
	require.Falsef(t, r.Granted, "Acquire(%s, %s, %s, %s) granted; want %s", agent, session, path, pred, want)
	require.Equalf(t, want, r.Denial.Reason, "Acquire(%s, %s, %s, %s): %s", agent, session, path, pred, r.Denial.Message)
	return r.Denial
}

func codeOf(err error) protocol.Code {
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	return ""
}

// requireCode checks that err is an *Error with the given code and that its
// message mentions every want string.
func requireCode(t testing.TB, err error, code protocol.Code, want ...string) {
	t.Helper()
	require.Error(t, err)
	require.Equalf(t, code, codeOf(err), "error %v", err)
	for _, w := range want {
		require.Contains(t, err.Error(), w)
	}
	require.Regexp(t, `^klock: `, err.Error())
}

// replayEqual replays e's records on a fresh engine and checks both
// snapshots are equal.
func replayEqual(t testing.TB, e *Engine, recs []Record) {
	t.Helper()
	f := New(Config{})
	for i, r := range recs {
		require.NoErrorf(t, f.Apply(r), "record %d: %+v", i, r)
	}
	require.Equal(t, e.Snapshot(), f.Snapshot())
}

// replayMsgpack is replayEqual with every record through msgpack first, as
// the store writes them; it returns the replayed engine.
func replayMsgpack(t testing.TB, e *Engine, recs []Record) *Engine {
	t.Helper()
	f := New(Config{})
	for _, r := range recs {
		b, err := msgpack.Marshal(&r)
		require.NoError(t, err)
		var back Record
		require.NoError(t, msgpack.Unmarshal(b, &back))
		require.NoError(t, f.Apply(back))
	}
	require.Equal(t, e.Snapshot(), f.Snapshot())
	return f
}

// liveResources counts the resources that hold something (subtree keys
// kept only because keys below them are kept do not count).
func liveResources(e *Engine) int {
	n := 0
	for r := range e.resources.all() {
		if len(r.holders()) > 0 || len(r.queue()) > 0 || r.frozen || r.isDirty {
			n++
		}
	}
	return n
}

func TestIdleResourcesBounded(t *testing.T) {
	e := New(Config{})
	mustRegister(t, e, "a", 1)
	for i := 0; i < 3*maxIdleResources; i++ {
		l := mustGrant(t, e, t0, "a", "s", "/f"+string(rune('a'+i%26))+itoa(i), "MUTATES")
		ok, _, err := e.Release(t0, alice, l.ID)
		require.NoError(t, err)
		require.True(t, ok)
	}
	require.LessOrEqual(t, e.resources.len(), maxIdleResources+1)
	require.LessOrEqual(t, len(e.idle), maxIdleResources+1)
	require.Zero(t, liveResources(e))
	require.LessOrEqual(t, len(e.freeLeases), maxFreeLeases)
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
