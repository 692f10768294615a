package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/goleak"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// testServer is an in-process server on a temporary socket.
type testServer struct {
	*Server
	path string
	done chan error
	logs *lockedBuf

	serveOnce sync.Once
	err       error // what Serve returned, once serveErr has seen it
}

type lockedBuf struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// start serves cfg (its Engine defaulted) and closes it at cleanup, then
// checks that no goroutine is left behind.
func start(t *testing.T, cfg Config) *testServer {
	t.Helper()
	if cfg.Engine == nil {
		cfg.Engine = engine.New(engine.Config{Journal: cfg.Journal != nil})
	}
	logs := &lockedBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	path := filepath.Join(shortDir(t), "k.sock")
	ln, err := Listen(ListenConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: New(cfg), path: path, done: make(chan error, 1), logs: logs}
	go func() { ts.done <- ts.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ts.Close()
		var pe *PanicError
		if err := ts.serveErr(t); !errors.Is(err, ErrServerClosed) && !errors.As(err, &pe) {
			t.Errorf("Serve returned %v; want ErrServerClosed", err)
		}
		goleak.VerifyNone(t)
	})
	return ts
}

// serveErr waits for Serve to return and returns its error.
func (ts *testServer) serveErr(t *testing.T) error {
	t.Helper()
	ts.serveOnce.Do(func() {
		select {
		case ts.err = <-ts.done:
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return")
		}
	})
	return ts.err
}

// client is a bare protocol connection.
type client struct {
	t  *testing.T
	nc net.Conn
}

func (ts *testServer) dial(t *testing.T) *client {
	t.Helper()
	nc, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc}
}

func (c *client) send(id uint64, op string, a *protocol.Args) {
	c.t.Helper()
	b, err := protocol.AppendRequest(nil, id, op, a)
	if err != nil {
		c.t.Fatal(err)
	}
	c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) recv() *protocol.Response {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	body, err := protocol.ReadFrame(c.nc, nil, 1<<30)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var r protocol.Response
	if err := protocol.DecodeResponse(body, &r); err != nil {
		c.t.Fatal(err)
	}
	return &r
}

func (c *client) call(id uint64, op string, a *protocol.Args, v any) *protocol.Response {
	c.t.Helper()
	c.send(id, op, a)
	r := c.recv()
	if r.ID != id {
		c.t.Fatalf("%s: answer for id %d; want %d", op, r.ID, id)
	}
	if v != nil {
		if !r.OK {
			c.t.Fatalf("%s: %s: %s", op, r.Error.Code, r.Error.Message)
		}
		if err := protocol.DecodeResult(r.Result, v); err != nil {
			c.t.Fatal(err)
		}
	}
	return r
}

func register(c *client, id uint64, agent string, pri int64) {
	a := &protocol.Args{AgentID: agent, Priority: pri}
	a.Set(protocol.ArgAgentID)
	a.Set(protocol.ArgPriority)
	c.call(id, protocol.OpRegisterAgent, a, &protocol.RegisterResult{})
}

func acquireArgs(agent, path string, ttl, wait int64) *protocol.Args {
	a := &protocol.Args{AgentID: agent, SessionID: "s", ResourceType: "FILE", ResourcePath: path, Predicate: "MUTATES", TTL: ttl, WaitTimeout: wait}
	for _, x := range []protocol.Arg{protocol.ArgAgentID, protocol.ArgSessionID, protocol.ArgResourceType, protocol.ArgResourcePath, protocol.ArgPredicate, protocol.ArgTTL, protocol.ArgWaitTimeout} {
		a.Set(x)
	}
	return a
}

// waitFor polls cond until it holds or ten seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// parkOne registers "young" (priority 10) and "old" (1) over holder, has
// young take path (ids 1-3) and parks old's acquire of it over waiter (id 1).
func (ts *testServer) parkOne(t *testing.T, holder, waiter *client, path string) {
	t.Helper()
	register(holder, 1, "young", 10)
	register(holder, 2, "old", 1)
	holder.call(3, protocol.OpAcquire, acquireArgs("young", path, 60000, 0), &protocol.Grant{})
	waiter.send(1, protocol.OpAcquire, acquireArgs("old", path, 60000, 60000))
	waitFor(t, "the acquire to park", func() bool { return ts.engineWaiters() == 1 })
}

func (ts *testServer) engineWaiters() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.eng.Stats().Waiters
}

// panicJournal panics in its first Append, as a bug in a request would.
type panicJournal struct {
	mu       sync.Mutex
	panicked bool
	seq      uint64
	waited   uint64
}

func (j *panicJournal) Append(recs []engine.Record) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.panicked {
		j.panicked = true
		panic("test: journal append")
	}
	j.seq++
	return j.seq
}

func (j *panicJournal) Wait(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if seq > j.waited {
		j.waited = seq
	}
	return nil
}

// TestPanicInAChangeStopsServing: a panic in a state change (here in the
// journal, as a bug in encoding its records would) is answered INTERNAL
// saying the change was not made; then nothing more is read or changed,
// and Serve returns a *PanicError so that the daemon exits and restarts
// from its log.
func TestPanicInAChangeStopsServing(t *testing.T) {
	j := &panicJournal{}
	ts := start(t, Config{Journal: j})
	c := ts.dial(t)
	a := &protocol.Args{AgentID: "a"}
	a.Set(protocol.ArgAgentID)
	r := c.call(1, protocol.OpRegisterAgent, a, nil)
	if r.OK || r.Error.Code != protocol.CodeInternal || !strings.Contains(r.Error.Message, "was not made") {
		t.Fatalf("answer to the panicking change = %+v; want INTERNAL saying it was not made", r)
	}
	for i, op := range []string{protocol.OpStats, protocol.OpRegisterAgent, protocol.OpListLeases} {
		r := c.call(uint64(2+i), op, a, nil)
		if r.OK || r.Error.Code != protocol.CodeShuttingDown {
			t.Errorf("%s after the panic = %+v; want SHUTTING_DOWN", op, r)
		}
	}
	var pe *PanicError
	if err := ts.serveErr(t); !errors.As(err, &pe) || pe.Op != protocol.OpRegisterAgent || pe.Recorded {
		t.Fatalf("Serve returned %v; want a *PanicError for register_agent, not recorded", err)
	}
	if !strings.Contains(ts.logs.String(), "panic while changing state") || !strings.Contains(ts.logs.String(), "goroutine") {
		t.Errorf("the panic and its stack were not logged:\n%s", ts.logs.String())
	}
}

// TestPanicAfterTheEngineChangedIsNeverJournaled: a change that panics
// after the engine made it and before its records reached the journal
// leaves the journal without them, and no later change reaches it either.
func TestPanicAfterTheEngineChangedIsNeverJournaled(t *testing.T) {
	j := &recordingJournal{}
	ts := start(t, Config{Journal: j})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	midChangeHook = func(op string) {
		if op == protocol.OpAcquire {
			panic("test: mid-change")
		}
	}
	t.Cleanup(func() { midChangeHook = nil })
	r := c.call(2, protocol.OpAcquire, acquireArgs("a", "/x", 60000, 0), nil)
	if r.OK || r.Error.Code != protocol.CodeInternal {
		t.Fatalf("acquire that panicked = %+v; want INTERNAL", r)
	}
	r = c.call(3, protocol.OpRelease, &protocol.Args{LeaseID: "x"}, nil)
	if r.OK || r.Error.Code != protocol.CodeShuttingDown {
		t.Fatalf("release after the panic = %+v; want SHUTTING_DOWN", r)
	}
	ts.serveErr(t)
	if kinds := j.kinds(); len(kinds) != 1 || kinds[0] != engine.RecRegister {
		t.Fatalf("journal holds record kinds %v; want only the register", kinds)
	}
}

// TestPanicOutsideAChangeKeepsServing: a panic while serving a read (here
// the clock) is answered INTERNAL and the daemon serves on.
func TestPanicOutsideAChangeKeepsServing(t *testing.T) {
	clock := newFakeClock()
	ts := start(t, Config{Clock: clock})
	c := ts.dial(t)
	clock.bomb.Store(true)
	r := c.call(1, protocol.OpListAgents, nil, nil)
	clock.bomb.Store(false)
	if r.OK || r.Error.Code != protocol.CodeInternal {
		t.Fatalf("answer to the panicking read = %+v; want INTERNAL", r)
	}
	register(c, 2, "b", 7)
	if !strings.Contains(ts.logs.String(), "panic while serving a request") {
		t.Errorf("the panic was not logged:\n%s", ts.logs.String())
	}
}

// recordingJournal keeps every record appended.
type recordingJournal struct {
	mu   sync.Mutex
	recs []engine.Record
}

func (j *recordingJournal) Append(recs []engine.Record) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.recs = append(j.recs, recs...)
	return uint64(len(j.recs))
}

func (j *recordingJournal) Wait(uint64) error { return nil }

func (j *recordingJournal) kinds() []engine.RecordKind {
	j.mu.Lock()
	defer j.mu.Unlock()
	var ks []engine.RecordKind
	for _, r := range j.recs {
		ks = append(ks, r.Kind)
	}
	return ks
}

// TestAnswersWaitForTheJournal: every answer to a change is sent only after
// Wait has been called for the change's sequence.
func TestAnswersWaitForTheJournal(t *testing.T) {
	j := &panicJournal{panicked: true}
	ts := start(t, Config{Journal: j})
	c := ts.dial(t)
	for i := uint64(1); i <= 20; i++ {
		register(c, i, "agent-"+string(rune('a'+i)), int64(i))
		j.mu.Lock()
		seq, waited := j.seq, j.waited
		j.mu.Unlock()
		if waited < seq {
			t.Fatalf("answer %d sent with journal at %d but waited only for %d", i, seq, waited)
		}
	}
}

func TestMaxInflightCountsParkedAcquires(t *testing.T) {
	ts := start(t, Config{MaxInflight: 2})
	c := ts.dial(t)
	register(c, 1, "young", 10)
	register(c, 2, "old", 1)
	c.call(3, protocol.OpAcquire, acquireArgs("young", "/a", 60000, 0), &protocol.Grant{})
	c.call(4, protocol.OpAcquire, acquireArgs("young", "/b", 60000, 0), &protocol.Grant{})
	c.send(5, protocol.OpAcquire, acquireArgs("old", "/a", 60000, 60000))
	c.send(6, protocol.OpAcquire, acquireArgs("old", "/b", 60000, 60000))
	r := c.call(7, protocol.OpAcquire, acquireArgs("old", "/c", 60000, 60000), nil)
	if r.OK || r.Error.Code != protocol.CodeResourceExhausted {
		t.Fatalf("third parked acquire = %+v; want RESOURCE_EXHAUSTED", r)
	}
	// Non-waiting requests are still served.
	c.call(8, protocol.OpHello, nil, &protocol.HelloResult{})
}

func TestClosedConnectionCancelsItsWaiters(t *testing.T) {
	ts := start(t, Config{})
	holder, waiter := ts.dial(t), ts.dial(t)
	ts.parkOne(t, holder, waiter, "/a")
	waiter.nc.Close()
	waitFor(t, "the parked acquire to be cancelled", func() bool { return ts.engineWaiters() == 0 })
}

func TestExpiryTimerWakesWaiter(t *testing.T) {
	ts := start(t, Config{})
	c := ts.dial(t)
	register(c, 1, "young", 10)
	register(c, 2, "old", 1)
	var held protocol.Grant
	c.call(3, protocol.OpAcquire, acquireArgs("young", "/a", 50, 0), &held)
	// The holder never releases: only the timer, at its expiry, can grant.
	var g protocol.Grant
	c.call(4, protocol.OpAcquire, acquireArgs("old", "/a", 60000, 30000), &g)
	if !g.Success || g.AcquiredAt < held.ExpiresAt {
		t.Fatalf("parked acquire = %+v; want a grant at or after %d", g, held.ExpiresAt)
	}
}

// TestPeerThatNeverReadsIsDropped: a client that floods requests and never
// reads is dropped after WriteTimeout, and others are served meanwhile.
func TestPeerThatNeverReadsIsDropped(t *testing.T) {
	ts := start(t, Config{WriteTimeout: 200 * time.Millisecond, MaxOutbound: 64 << 10})
	flood := ts.dial(t)
	other := ts.dial(t)
	frame, _ := protocol.AppendRequest(nil, 1, protocol.OpStats, nil)
	var batch []byte
	for len(batch) < 64<<10 {
		batch = append(batch, frame...)
	}
	errc := make(chan error, 1)
	go func() {
		flood.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for {
			if _, err := flood.nc.Write(batch); err != nil {
				errc <- err
				return
			}
		}
	}()
	for i := uint64(1); i <= 50; i++ {
		other.call(i, protocol.OpHello, nil, &protocol.HelloResult{})
	}
	err := <-errc
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the flooding peer was never dropped: %v", err)
	}
	waitFor(t, "the drop to be logged", func() bool {
		return strings.Contains(ts.logs.String(), "dropping a connection")
	})
	other.call(100, protocol.OpHello, nil, &protocol.HelloResult{})
}

// TestWriteThatWaitedLeavesNoDeadline: a client that reads its answers
// late, so that the daemon's write waited for the socket, is still served
// once WriteTimeout has passed since: the deadline of that wait (conn.go,
// writeWaiting) does not outlive it.
func TestWriteThatWaitedLeavesNoDeadline(t *testing.T) {
	ts := start(t, Config{WriteTimeout: 300 * time.Millisecond})
	c := ts.dial(t)
	frame, _ := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
	const n = 20000 // answers: more than the socket's buffers hold
	var batch []byte
	for range n {
		batch = append(batch, frame...)
	}
	errc := make(chan error, 1)
	go func() {
		c.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
		_, err := c.nc.Write(batch)
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond) // the daemon's write waits meanwhile
	for range n {
		if r := c.recv(); r.ID != 1 || !r.OK {
			t.Fatalf("answer %+v; want hello's", r)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // past the deadline of that wait
	c.call(2, protocol.OpHello, nil, &protocol.HelloResult{})

	// A client that never reads is dropped once the write has waited
	// WriteTimeout: its answers stop at the socket (the reader waits in
	// its write), so MaxOutbound never drops it.
	stuck := ts.dial(t)
	go stuck.nc.Write(batch) // fails once the connection is dropped
	waitFor(t, "the drop to be logged", func() bool {
		return strings.Contains(ts.logs.String(), "writing answers failed")
	})
}

func TestShutdownAnswersParkedAcquires(t *testing.T) {
	ts := start(t, Config{})
	c := ts.dial(t)
	register(c, 1, "young", 10)
	register(c, 2, "old", 1)
	c.call(3, protocol.OpAcquire, acquireArgs("young", "/a", 60000, 0), &protocol.Grant{})
	c.send(4, protocol.OpAcquire, acquireArgs("old", "/a", 60000, 60000))
	waitFor(t, "the acquire to park", func() bool { return ts.engineWaiters() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	r := c.recv()
	if r.ID != 4 || r.OK || r.Error.Code != protocol.CodeShuttingDown {
		t.Fatalf("parked acquire at shutdown = %+v; want SHUTTING_DOWN", r)
	}
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := protocol.ReadFrame(c.nc, nil, 1<<20); !errors.Is(err, io.EOF) {
		t.Fatalf("after shutdown read = %v; want EOF", err)
	}
}

// TestLongListIsCutToOneFrame: a list_leases answer that would exceed
// max_frame is cut to fit and marked truncated.
func TestLongListIsCutToOneFrame(t *testing.T) {
	ts := start(t, Config{MaxFrame: 16 << 10})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	long := "/" + strings.Repeat("p", 900)
	for i := 0; i < 40; i++ {
		c.call(uint64(10+i), protocol.OpAcquire, acquireArgs("a", long+string(rune('A'+i)), 60000, 0), &protocol.Grant{})
	}
	c.send(100, protocol.OpListLeases, nil)
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	body, err := protocol.ReadFrame(c.nc, nil, 16<<10)
	if err != nil {
		t.Fatalf("list_leases answer: %v", err)
	}
	var resp protocol.Response
	var list protocol.ListLeasesResult
	if err := protocol.DecodeResponse(body, &resp); err != nil || !resp.OK {
		t.Fatalf("list_leases = %+v, %v", resp, err)
	}
	if err := protocol.DecodeResult(resp.Result, &list); err != nil {
		t.Fatal(err)
	}
	if !list.Truncated || len(list.Leases) == 0 || len(list.Leases) >= 40 {
		t.Fatalf("list of %d leases, truncated %v; want some but not all 40, truncated", len(list.Leases), list.Truncated)
	}
}

// rawBody sends a hand-built request body and returns the answer.
func (c *client) rawBody(body map[string]any) *protocol.Response {
	c.t.Helper()
	b, err := msgpack.Marshal(body)
	if err != nil {
		c.t.Fatal(err)
	}
	c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(protocol.AppendFrame(nil, b)); err != nil {
		c.t.Fatal(err)
	}
	return c.recv()
}

// TestArgsOfOtherOpsAreIgnored: a bad value under a key the op does not
// take is an unknown key for it; an unknown op is UNKNOWN_OP whatever its
// args; the op's own bad argument is still INVALID_ARGUMENT.
func TestArgsOfOtherOpsAreIgnored(t *testing.T) {
	ts := start(t, Config{})
	c := ts.dial(t)
	for _, tc := range []struct {
		op   string
		args map[string]any
		code protocol.Code // "" = success
	}{
		{"hello", map[string]any{"ttl": -1}, ""},
		{"stats", map[string]any{"ttl": "x", "intents": 5}, ""},
		{"register_agent", map[string]any{"agent_id": "b", "ttl": "x"}, ""},
		{"register_agent", map[string]any{"agent_id": "", "ttl": "x"}, protocol.CodeInvalidArgument},
		{"register_agent", map[string]any{"agent_id": "c", "priority": -1, "ttl": "x"}, protocol.CodeInvalidArgument},
		{"list_agents", map[string]any{"resource_prefix": 7}, ""},
		{"nope", map[string]any{"ttl": -1}, protocol.CodeUnknownOp},
	} {
		r := c.rawBody(map[string]any{"id": 5, "op": tc.op, "args": tc.args})
		switch {
		case tc.code == "" && !r.OK:
			t.Errorf("%s %v = %s %s; want success", tc.op, tc.args, r.Error.Code, r.Error.Message)
		case tc.code != "" && (r.OK || r.Error.Code != tc.code):
			t.Errorf("%s %v = %+v; want %s", tc.op, tc.args, r, tc.code)
		case r.ID != 5:
			t.Errorf("%s: answer id %d; want 5", tc.op, r.ID)
		}
	}
}

func TestHeartbeatTTLZeroIsInvalid(t *testing.T) {
	ts := start(t, Config{})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	var g protocol.Grant
	c.call(2, protocol.OpAcquire, acquireArgs("a", "/x", 60000, 0), &g)
	r := c.rawBody(map[string]any{"id": 3, "op": "heartbeat", "args": map[string]any{"lease_id": g.LeaseID, "ttl": 0}})
	if r.OK || r.Error.Code != protocol.CodeInvalidArgument {
		t.Fatalf("heartbeat ttl 0 = %+v; want INVALID_ARGUMENT", r)
	}
	var hb protocol.HeartbeatResult
	a := &protocol.Args{LeaseID: g.LeaseID}
	a.Set(protocol.ArgLeaseID)
	c.call(4, protocol.OpHeartbeat, a, &hb)
	if hb.ExpiresAt < g.ExpiresAt {
		t.Fatalf("heartbeat without ttl moved expiry back: %d < %d", hb.ExpiresAt, g.ExpiresAt)
	}
}

// TestUnknownOpIsEchoedAsValidUTF8: an op name that is not UTF-8, or that
// is long enough to be cut inside a character, is quoted in UNKNOWN_OP's
// message as valid UTF-8.
func TestUnknownOpIsEchoedAsValidUTF8(t *testing.T) {
	ts := start(t, Config{})
	c := ts.dial(t)
	for i, op := range []string{"\xff\xfe", "bad\xc3", strings.Repeat("a", 63) + "é and more", "ctl\u0085\x01", "ok-é"} {
		r := c.rawBody(map[string]any{"id": i + 1, "op": op})
		if r.OK || r.Error.Code != protocol.CodeUnknownOp {
			t.Fatalf("op %q = %+v; want UNKNOWN_OP", op, r)
		}
		if !utf8.ValidString(r.Error.Message) {
			t.Errorf("op %q: message %q is not valid UTF-8", op, r.Error.Message)
		}
	}
	if got := quote("ok-é"); got != `"ok-é"` {
		t.Errorf("quote(ok-é) = %s; want it unchanged", got)
	}
}
