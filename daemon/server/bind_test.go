package server

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// These tests bind leases to this test process (the peer of its own
// connections) and to child processes it starts and kills. The tests in
// tests/ do the same against the real klockd with processes that connect
// on their own.

func boundArgs(agent, path string, ttl int64) *protocol.Args {
	a := acquireArgs(agent, path, ttl, 0)
	a.Bind = bindProcess
	a.Set(protocol.ArgBind)
	return a
}

// self is this process as a lease bound to it records it.
func self(t *testing.T) engine.Process {
	t.Helper()
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skipf("pidfd_open: %v", err)
	}
	defer unix.Close(fd)
	p, err := identifyBound(int32(os.Getpid()), fd)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// child starts a process that sleeps until killed and returns it with its
// identity; it is killed at cleanup.
func child(t *testing.T) (*exec.Cmd, engine.Process) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Skipf("pidfd_open: %v", err)
	}
	defer unix.Close(fd)
	p, err := identifyBound(int32(cmd.Process.Pid), fd)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, p
}

// bindLocked grants agent a lease on path bound to p, watched as the
// server watches a bound acquire's process, as if p had asked.
func (ts *testServer) bind(t *testing.T, agent, path string, p engine.Process) engine.Lease {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	err := ts.procs.holdLocked(ts.Server, p, -1, func() (int, error) { return unix.PidfdOpen(int(p.PID), 0) })
	if err != nil {
		t.Fatal(err)
	}
	req := engine.AcquireRequest{AgentID: agent, SessionID: "s", Bind: &p,
		Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: path, Predicate: "MUTATES"}}}
	res, err := ts.eng.Acquire(ts.nowMS(), engine.Caller{PID: p.PID}, req)
	if err != nil || !res.Granted {
		t.Fatalf("bound acquire for %d: %v %+v", p.PID, err, res.Denial)
	}
	ts.journalLocked(ts.eng.Records())
	return res.Leases[0]
}

func (ts *testServer) stats(t *testing.T, c *client, id uint64) protocol.StatsResult {
	t.Helper()
	var st protocol.StatsResult
	c.call(id, protocol.OpStats, nil, &st)
	return st
}

func TestBoundAcquireOverTheSocket(t *testing.T) {
	me := self(t)
	ts := start(t, Config{})
	c := ts.dial(t)
	register(c, 1, "a", 1)

	// Without a ttl: expires_at 0, bound to this process.
	var g protocol.AcquireResult
	a := boundArgs("a", "/x", 0)
	c.call(2, protocol.OpAcquire, a, &g)
	if !g.Success || g.BoundPID != me.PID || g.ExpiresAt != 0 {
		t.Fatalf("bound acquire = %+v; want a grant bound to pid %d with expires_at 0", g, me.PID)
	}
	var hb protocol.HeartbeatResult
	hbArgs := &protocol.Args{LeaseID: g.LeaseID}
	hbArgs.Set(protocol.ArgLeaseID)
	c.call(3, protocol.OpHeartbeat, hbArgs, &hb)
	if hb.ExpiresAt != 0 {
		t.Errorf("heartbeat of a lease without a ttl = %+v; want expires_at 0", hb)
	}

	// With a ttl, from a second connection of the same process: one pidfd.
	c2 := ts.dial(t)
	var many protocol.AcquireResult
	m := &protocol.Args{AgentID: "a", SessionID: "s", TTL: 60_000, Bind: bindProcess,
		Intents: []protocol.Intent{{ResourceType: "FILE", ResourcePath: "/y", Predicate: "MUTATES"}, {ResourceType: "SYMBOL", ResourcePath: "p.F", Predicate: "PROVIDES"}}}
	m.Set(protocol.ArgAgentID | protocol.ArgSessionID | protocol.ArgTTL | protocol.ArgBind | protocol.ArgIntents)
	c2.call(4, protocol.OpAcquireMany, m, &many)
	if len(many.Leases) != 2 || many.Leases[0].BoundPID != me.PID || many.Leases[0].ExpiresAt == 0 {
		t.Fatalf("bound acquire_many = %+v; want two leases bound to %d with an expiry", many, me.PID)
	}

	var ls protocol.ListLeasesResult
	c.call(5, protocol.OpListLeases, &protocol.Args{}, &ls)
	if len(ls.Leases) != 3 {
		t.Fatalf("list_leases = %+v; want 3", ls)
	}
	for _, l := range ls.Leases {
		if l.BoundPID != me.PID {
			t.Errorf("list_leases entry %+v; want bound_pid %d", l, me.PID)
		}
		if (l.Resource == "FILE:/x") != (l.ExpiresAt == 0) {
			t.Errorf("list_leases entry %+v; want expires_at 0 exactly for the lease without a ttl", l)
		}
	}
	if st := ts.stats(t, c, 6); st.BoundProcesses != 1 || st.Pidfds != 1 || st.Goroutines == 0 {
		t.Errorf("stats = %+v; want 1 bound process, 1 pidfd and some goroutines", st)
	}

	// An unbound lease is unchanged: no bound_pid.
	c.call(7, protocol.OpAcquire, acquireArgs("a", "/free", 1000, 0), &g)
	if !g.Success || g.BoundPID != 0 || g.ExpiresAt == 0 {
		t.Errorf("unbound acquire = %+v; want no bound_pid and an expiry", g)
	}
}

func TestBindArgumentErrors(t *testing.T) {
	self(t)
	ts := start(t, Config{})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	for i, tt := range []struct {
		name string
		args *protocol.Args
		code protocol.Code
		want string
	}{
		{"unknown bind", func() *protocol.Args { a := boundArgs("a", "/x", 0); a.Bind = "thread"; return a }(),
			protocol.CodeInvalidArgument, `bind is "thread"; allowed "none" (the default) or "process"`},
		{"ttl 0 unbound", func() *protocol.Args { a := boundArgs("a", "/x", 0); a.Bind = bindNone; return a }(),
			protocol.CodeInvalidArgument, "ttl 0 is out of range"},
		{"ttl 0 no bind", acquireArgs("a", "/x", 0, 0), protocol.CodeInvalidArgument, `or 0 (none) for a lease bound to its process`},
		{"bad path, bound", boundArgs("a", "", 0), protocol.CodeInvalidArgument, "resource_path is required"},
	} {
		r := c.call(uint64(10+i), protocol.OpAcquire, tt.args, nil)
		if r.OK || r.Error.Code != tt.code || !strings.Contains(r.Error.Message, tt.want) {
			t.Errorf("%s: answer %+v; want %s mentioning %q", tt.name, r.Error, tt.code, tt.want)
		}
	}
}

// TestBindUnavailable: without pidfds (an old kernel, seccomp) a bound
// acquire is refused, saying why, while unbound ones are served; bad
// arguments are still INVALID_ARGUMENT.
func TestBindUnavailable(t *testing.T) {
	old := pidfds
	pidfds = func() error { return unix.ENOSYS }
	t.Cleanup(func() { pidfds = old })
	ts := start(t, Config{})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	r := c.call(2, protocol.OpAcquire, boundArgs("a", "/x", 0), nil)
	if r.OK || r.Error.Code != protocol.CodeBindUnavailable || !strings.Contains(r.Error.Message, "pidfd_open") ||
		!strings.Contains(r.Error.Message, `bind "none"`) {
		t.Errorf("bound acquire without pidfds = %+v; want BIND_UNAVAILABLE naming pidfd_open and the way out", r.Error)
	}
	if r := c.call(3, protocol.OpAcquire, boundArgs("a", "", 0), nil); r.OK || r.Error.Code != protocol.CodeInvalidArgument {
		t.Errorf("bound acquire with a bad path = %+v; want INVALID_ARGUMENT first", r.Error)
	}
	var g protocol.AcquireResult
	if c.call(4, protocol.OpAcquire, acquireArgs("a", "/x", 1000, 0), &g); !g.Success {
		t.Errorf("unbound acquire = %+v; want it granted", g)
	}
}

// TestPeerOutsidePidNamespace: the kernel reports a peer outside klockd's
// pid namespace as pid 0; binding it is refused, saying why. (tests/
// checks the same with klockd in a real pid namespace.)
func TestPeerOutsidePidNamespace(t *testing.T) {
	self(t)
	_, _, err := peerProcess(nil, 0)
	var ee *engine.Error
	if !asEngineError(err, &ee) || ee.Code != protocol.CodeBindUnavailable || !strings.Contains(ee.Message, "pid namespace") {
		t.Errorf("peerProcess(pid 0) = %v; want BIND_UNAVAILABLE explaining the pid namespace", err)
	}
}

func asEngineError(err error, ee **engine.Error) bool {
	e, ok := err.(*engine.Error)
	*ee = e
	return ok
}

// TestProcessEndReleasesAndWakes: when a process that leases are bound to
// is killed, its leases end at once and a waiter parked on one is granted,
// long before the leases' ttl would have.
func TestProcessEndReleasesAndWakes(t *testing.T) {
	self(t)
	ts := start(t, Config{})
	c := ts.dial(t)
	register(c, 1, "old", 1)
	register(c, 2, "young", 2)
	cmd, p := child(t)
	ts.bind(t, "young", "/x", p)
	ts.bind(t, "young", "/y", p)

	c.send(3, protocol.OpAcquire, acquireArgs("old", "/x", 60_000, 600_000))
	waitFor(t, "the acquire to park", func() bool { return ts.engineWaiters() == 1 })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	r := c.recv()
	var g protocol.AcquireResult
	if !r.OK || protocol.DecodeResult(r.Result, &g) != nil || !g.Success {
		t.Fatalf("parked acquire answered %+v; want granted once the holder's process died", r)
	}
	if st := ts.stats(t, c, 4); st.Leases != 1 || st.ExitReleases != 2 || st.BoundProcesses != 0 || st.Pidfds != 0 {
		t.Errorf("stats = %+v; want old's lease only, 2 exit releases, no process and no pidfd left", st)
	}
}

// TestPidfdLimit: past --max-pidfds processes, a bound acquire from a new
// process is RESOURCE_EXHAUSTED; processes that no longer hold anything
// bound make room.
func TestPidfdLimit(t *testing.T) {
	self(t)
	ts := start(t, Config{MaxPidfds: 1})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	_, p := child(t)
	held := ts.bind(t, "a", "/child", p)
	r := c.call(2, protocol.OpAcquire, boundArgs("a", "/me", 0), nil)
	if r.OK || r.Error.Code != protocol.CodeResourceExhausted || !strings.Contains(r.Error.Message, "--max-pidfds") {
		t.Fatalf("bound acquire past the limit = %+v; want RESOURCE_EXHAUSTED naming --max-pidfds", r.Error)
	}
	rel := &protocol.Args{LeaseID: held.ID}
	rel.Set(protocol.ArgLeaseID)
	c.call(3, protocol.OpRelease, rel, &protocol.ReleaseResult{})
	var g protocol.AcquireResult
	if c.call(4, protocol.OpAcquire, boundArgs("a", "/me", 0), &g); !g.Success {
		t.Errorf("bound acquire after the child's lease was released = %+v; want granted", g)
	}
	if st := ts.stats(t, c, 5); st.Pidfds != 1 {
		t.Errorf("pidfds = %d; want 1: the child's watch was closed to make room", st.Pidfds)
	}
}

// TestRecoveryChecksBoundProcesses: a restarted server ends, before it
// serves, the leases of processes that are gone, including one whose pid
// is now another process's (a reused pid, simulated by a wrong start
// time) and one from another boot; it keeps and watches the live one.
func TestRecoveryChecksBoundProcesses(t *testing.T) {
	me := self(t)
	cmd, gone := child(t)
	cmd.Process.Kill()
	cmd.Wait()
	reused := me
	reused.Start++
	rebooted := me
	rebooted.Boot++

	eng := engine.New(engine.Config{Journal: true})
	if _, err := eng.Register(1, engine.Caller{}, "a", 1, true); err != nil {
		t.Fatal(err)
	}
	for i, p := range []engine.Process{me, gone, reused, rebooted} {
		req := engine.AcquireRequest{AgentID: "a", SessionID: "s", Bind: &p,
			Intents: []engine.Intent{{ResourceType: "FILE", ResourcePath: "/" + string(rune('a'+i)), Predicate: "MUTATES"}}}
		if res, err := eng.Acquire(1, engine.Caller{}, req); err != nil || !res.Granted {
			t.Fatalf("acquire %d: %v", i, err)
		}
	}
	eng.Records()
	j := &recordingJournal{}
	ts := start(t, Config{Engine: eng, Journal: j})
	c := ts.dial(t)
	var ls protocol.ListLeasesResult
	c.call(1, protocol.OpListLeases, &protocol.Args{}, &ls)
	if len(ls.Leases) != 1 || ls.Leases[0].Resource != "FILE:/a" {
		t.Fatalf("leases after recovery = %+v; want only the one bound to this live process", ls.Leases)
	}
	ends := 0
	for _, k := range j.kinds() {
		if k == engine.RecProcessEnd {
			ends++
		}
	}
	if ends != 3 {
		t.Errorf("%d process-end records; want 3", ends)
	}
	if st := ts.stats(t, c, 2); st.Pidfds != 1 || st.BoundProcesses != 1 {
		t.Errorf("stats = %+v; want this process watched", st)
	}
	if !strings.Contains(ts.logs.String(), "ended=3") {
		t.Errorf("logs do not report the 3 processes that ended:\n%s", ts.logs)
	}
}

// TestStartTimeParsing: field 22 is found after a command name holding
// spaces and parentheses.
func TestStartTimeParsing(t *testing.T) {
	dir := t.TempDir()
	old := procRoot
	procRoot = dir
	t.Cleanup(func() { procRoot = old })
	fields := "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21"
	for pid, comm := range map[int]string{7: "sleep", 8: "a) (b c) d", 9: ""} {
		os.MkdirAll(filepath.Join(dir, itoa(pid)), 0o755)
		os.WriteFile(filepath.Join(dir, itoa(pid), "stat"), []byte(itoa(pid)+" ("+comm+") "+fields+"\n"), 0o644)
		if got, err := startTime(int32(pid)); err != nil || got != 424242 {
			t.Errorf("startTime with comm %q = %d, %v; want 424242", comm, got, err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "10"), 0o755)
	os.WriteFile(filepath.Join(dir, "10", "stat"), []byte("10 (short) S 1 2\n"), 0o644)
	if _, err := startTime(10); err == nil {
		t.Errorf("startTime of a short stat line: no error")
	}
}

// TestProcessEndLostToADiskFault: a process end whose record the journal
// failed to write is rolled back with the rest; klockd does not forget it,
// but ends the leases again once the journal heals.
func TestProcessEndLostToADiskFault(t *testing.T) {
	self(t)
	j := &flakyJournal{}
	ts := start(t, Config{Journal: j})
	c := ts.dial(t)
	register(c, 1, "a", 1)
	cmd, p := child(t)
	ts.bind(t, "a", "/x", p)

	j.mu.Lock()
	j.failAt = uint64(len(j.recs)) + 1 // the process end's record
	j.refuse = true
	j.mu.Unlock()
	cmd.Process.Kill()
	cmd.Wait()
	waitFor(t, "the process end to be seen", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return ts.procs.len() == 0
	})
	// A change whose answer waits for the journal meets the fault: the
	// process end is rolled back with it.
	if r := c.call(2, protocol.OpRegisterAgent, &protocol.Args{AgentID: "b"}, nil); r.OK || r.Error.Code != protocol.CodeUnavailable {
		t.Fatalf("register during the fault = %+v; want UNAVAILABLE", r)
	}
	var ls protocol.ListLeasesResult
	c.call(3, protocol.OpListLeases, &protocol.Args{}, &ls)
	if len(ls.Leases) != 1 {
		t.Fatalf("leases after the rollback = %+v; want the dead process's lease back, until the journal heals", ls.Leases)
	}
	j.mu.Lock()
	j.refuse = false
	j.mu.Unlock()
	waitFor(t, "the lease to end once the journal heals", func() bool {
		c.call(4, protocol.OpListLeases, &protocol.Args{}, &ls)
		return len(ls.Leases) == 0
	})
}
