package tests

// Leases bound to their process (bind "process"), against the real klockd
// and real processes: boundholder (tests/harness/boundholder) takes a
// lease through clientlib, which binds it to its own process by default,
// and the tests kill it, restart klockd around it, and spawn a thousand.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// holder is a running boundholder and the lease it was granted.
type holder struct {
	cmd   *exec.Cmd
	grant struct {
		LeaseID  string `json:"lease_id"`
		PID      int    `json:"pid"`
		BoundPID int32  `json:"bound_pid"`
	}
}

// startHolder starts boundholder for agent on FILE:path with ttl and
// waits for its grant. then is "wait", "exit" or "reconnect"; wrap, if
// given, is a command boundholder runs under (unshare ...). A holder still
// running is killed when the test ends.
func startHolder(t *testing.T, d *harness.Daemon, agent, path, ttl, then string, wrap ...string) *holder {
	t.Helper()
	return runHolder(t, append(wrap, harness.BoundHolder(t), "-socket", d.Socket, "-agent", agent, "-path", path, "-ttl", ttl, "-then", then)...)
}

// runHolder is startHolder with boundholder's command line given whole.
func runHolder(t *testing.T, argv ...string) *holder {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = testEnv()
	var stderr harness.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if err := json.Unmarshal([]byte(s), &h.grant); err != nil {
			t.Fatalf("boundholder printed %q (%v); stderr %q", s, err, stderr.String())
		}
	case <-time.After(waitTimeout):
		t.Fatalf("boundholder was not granted within %s; stderr %q", waitTimeout, stderr.String())
	}
	return h
}

// killFreesLease kills the holder and waits until klockd, asked through r,
// lists no lease any more: the holder's ended with its process.
func (h *holder) killFreesLease(t *testing.T, r *harness.Raw, what string) {
	t.Helper()
	h.kill(t)
	waitFor(t, what, func() bool { return len(leases(t, r, 99)) == 0 })
}

// kill sends SIGKILL and reaps the process.
func (h *holder) kill(t *testing.T) {
	t.Helper()
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	h.cmd.Wait()
}

// leases lists the active leases through r.
func leases(t *testing.T, r *harness.Raw, id uint64) []protocol.LeaseInfo {
	t.Helper()
	var ls protocol.ListLeasesResult
	mustOK(t, "list_leases", r.Call(id, protocol.OpListLeases, nil), &ls)
	return ls.Leases
}

func rawStats(t *testing.T, r *harness.Raw, id uint64) protocol.StatsResult {
	t.Helper()
	var st protocol.StatsResult
	mustOK(t, "stats", r.Call(id, protocol.OpStats, nil), &st)
	return st
}

// TestKill9GrantsTheWaiter: a child holds a bound lease with a 10 minute
// ttl and an older agent waits for it in the daemon; kill -9 of the child
// grants the waiter within its 10 s wait (a few seconds, not the ttl). The
// delay from the kill to the grant is measured over several runs and
// logged, never asserted.
func TestKill9GrantsTheWaiter(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	mustOK(t, "register old", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "old", protocol.ArgPriority, 1)), nil)
	mustOK(t, "register young", r.Call(2, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "young", protocol.ArgPriority, 2)), nil)
	runs := 20
	if testing.Short() {
		runs = 3
	}
	watch := d.Raw(t)
	var delays []time.Duration
	for i := range runs {
		path := fmt.Sprintf("/kill9/%d", i)
		h := startHolder(t, d, "young", path, "10m", "wait")
		if h.grant.BoundPID != int32(h.grant.PID) {
			t.Fatalf("the holder's grant is bound to pid %d; want its own, %d", h.grant.BoundPID, h.grant.PID)
		}
		id := uint64(100 + 10*i)
		r.Send(id, protocol.OpAcquire, parkArgs("old", "o", path, "MUTATES", 60_000, 10_000))
		waitFor(t, "the older agent to wait in the daemon", func() bool { return waiters(t, watch, 1) == 1 })
		start := time.Now()
		if err := h.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		resp := r.Recv()
		delays = append(delays, time.Since(start))
		h.cmd.Wait()
		var g protocol.AcquireResult
		mustOK(t, "the parked acquire", resp, &g)
		if resp.ID != id || !g.Success {
			t.Fatalf("run %d: the waiter was answered %+v; want granted within its 10 s wait once the holder was killed", i, g)
		}
		mustOK(t, "release", r.Call(id+1, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), nil)
	}
	slices.Sort(delays)
	t.Logf("kill -9 of the holder to the waiter's grant, %d runs: median %v, max %v (min %v)",
		runs, delays[len(delays)/2], delays[len(delays)-1], delays[0])
}

// TestProcessWithManyLeasesEnds: a process holding more bound leases
// than klockd ends in one step (1000) is killed; klockd ends every one of
// them, in steps with other requests served in between, and an older
// agent waiting for the last of them is granted.
func TestProcessWithManyLeasesEnds(t *testing.T) {
	const n = 2500
	d := harness.Start(t, harness.Options{})
	r := d.Raw(t)
	mustOK(t, "register old", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "old", protocol.ArgPriority, 1)), nil)
	mustOK(t, "register young", r.Call(2, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "young", protocol.ArgPriority, 2)), nil)
	h := runHolder(t, harness.BoundHolder(t), "-socket", d.Socket, "-agent", "young", "-path", "/many",
		"-count", strconv.Itoa(n), "-ttl", "10m", "-then", "wait")
	if st := rawStats(t, r, 3); st.Leases != n || st.BoundProcesses != 1 {
		t.Fatalf("stats with the holder running = %+v; want %d leases bound to 1 process", st, n)
	}
	last := fmt.Sprintf("/many/%d", n-1)
	r.Send(4, protocol.OpAcquire, parkArgs("old", "o", last, "MUTATES", 60_000, 30_000))
	waitFor(t, "the older agent to wait in the daemon", func() bool { return waiters(t, d.Raw(t), 1) == 1 })
	h.kill(t)
	var g protocol.AcquireResult
	mustOK(t, "the parked acquire", r.Recv(), &g)
	if !g.Success || g.Resource != "FILE:"+last {
		t.Fatalf("the waiter was answered %+v; want granted once the holder was killed", g)
	}
	waitFor(t, "every lease of the holder to end", func() bool { return rawStats(t, r, 5).Leases == 1 })
	if st := rawStats(t, r, 6); st.ExitReleases != n || st.BoundProcesses != 0 || st.Pidfds != 0 {
		t.Errorf("stats after the holder was killed = %+v; want %d exit releases and no process left", st, n)
	}
	if ls := leases(t, r, 7); len(ls) != 1 || ls[0].AgentID != "old" {
		t.Errorf("leases after the holder was killed = %+v; want the older agent's only", ls)
	}
}

// TestBoundLeaseSurvivesItsReconnect: the holder drops its connection and
// renews its lease from a new one; the lease is still there, and still
// ends with the process.
func TestBoundLeaseSurvivesItsReconnect(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "holder", protocol.ArgPriority, 1)), nil)
	h := startHolder(t, d, "holder", "/re", "10m", "reconnect")
	ls := leases(t, r, 2)
	if len(ls) != 1 || ls[0].LeaseID != h.grant.LeaseID || ls[0].BoundPID != int32(h.grant.PID) {
		t.Fatalf("leases after the holder reconnected = %+v; want its bound lease", ls)
	}
	h.killFreesLease(t, r, "the lease to end with its process")
}

// TestBoundLeaseSurvivesRestart: klockd restarts while the holder lives;
// the lease comes back bound, klockd watches the process again, and the
// lease ends when it is killed.
func TestBoundLeaseSurvivesRestart(t *testing.T) {
	harness.SkipInClusterMode(t, "a restarted node's etcd session is a new one: the leader drops the old one, "+
		"and with it the leases without a ttl bound to its processes (daemon/server/replica.go)")
	d := harness.Start(t, harness.Options{})
	kcOK(t, d, nil, "agents", "register", "holder", "--priority", "1")
	h := startHolder(t, d, "holder", "/restart", "0", "wait")
	d.Restart(t)
	r := d.Raw(t)
	ls := leases(t, r, 1)
	if len(ls) != 1 || ls[0].LeaseID != h.grant.LeaseID || ls[0].BoundPID != int32(h.grant.PID) || ls[0].ExpiresAt != 0 {
		t.Fatalf("leases after the restart = %+v; want the holder's bound lease without a ttl", ls)
	}
	if st := rawStats(t, r, 2); st.Pidfds != 1 {
		t.Errorf("stats after the restart = %+v; want the holder watched again", st)
	}
	h.killFreesLease(t, r, "the lease to end with its process after the restart")
}

// TestBoundLeaseOfProcessDeadAtRecovery: the holder dies while klockd is
// down; klockd releases its lease at start, in a record, before serving.
func TestBoundLeaseOfProcessDeadAtRecovery(t *testing.T) {
	harness.SkipInClusterMode(t, "the state lives in etcd, not in log and snapshot files")
	d := harness.Start(t, harness.Options{})
	kcOK(t, d, nil, "agents", "register", "holder", "--priority", "1")
	startHolder(t, d, "holder", "/alive-ttl", "10m", "wait")
	startHolder(t, d, "holder", "/alive-no-ttl", "0", "wait")
	dead := startHolder(t, d, "holder", "/gone", "10m", "wait")
	d.Kill(t)
	dead.kill(t)
	d.Restart(t)
	r := d.Raw(t)
	// The first answer klockd ever gives already lacks the dead lease.
	ls := leases(t, r, 1)
	if len(ls) != 2 || slices.ContainsFunc(ls, func(l protocol.LeaseInfo) bool { return l.LeaseID == dead.grant.LeaseID }) {
		t.Fatalf("leases after recovery = %+v; want the two live holders' only", ls)
	}
	if !strings.Contains(d.Logs(), "why=start checked=3 ended=1") {
		t.Errorf("klockd did not log the process that ended while it was down:\n%s", d.Logs())
	}
	// The release was recorded: it holds across another restart.
	d.Restart(t)
	if ls := leases(t, d.Raw(t), 1); len(ls) != 2 {
		t.Errorf("leases after a second restart = %+v; want 2", ls)
	}
}

// TestThousandShortLivedBoundProcesses spawns bound holders in waves, each
// exiting (or killed) without releasing; klockd must end every lease and
// keep neither a pidfd nor a goroutine per process.
func TestThousandShortLivedBoundProcesses(t *testing.T) {
	total, wave := 1000, 50
	if testing.Short() {
		total = 100
	}
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "agents", "register", "holder", "--priority", "1")
	r := d.Raw(t)
	// One holder first: klockd's one goroutine and epoll set for watching
	// processes start with the first bound lease and stay.
	startHolder(t, d, "holder", "/warm-up", "10m", "exit").cmd.Wait()
	waitFor(t, "the warm-up lease to end", func() bool { return rawStats(t, r, 1).Pidfds == 0 })
	pid := d.Cmd.Process.Pid
	fds := func() int {
		ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := rawStats(t, r, 1)
	fdBefore := fds()
	peakFD, peakG, peakPidfds := 0, 0, 0
	bin := harness.BoundHolder(t)
	for w := 0; w < total/wave; w++ {
		cmds := make([]*exec.Cmd, wave)
		for i := range cmds {
			n := w*wave + i
			then := "exit"
			if n%5 == 0 {
				then = "wait" // killed below
			}
			cmds[i] = exec.Command(bin, "-socket", d.Socket, "-path", fmt.Sprintf("/wave/%d", n), "-ttl", "10m", "-then", then)
			cmds[i].Env = testEnv()
			if then == "wait" {
				cmds[i].Stdout = &killOnGrant{cmd: cmds[i]}
			}
			if err := cmds[i].Start(); err != nil {
				t.Fatal(err)
			}
		}
		st := rawStats(t, r, uint64(10+w))
		peakFD, peakG, peakPidfds = max(peakFD, fds()), max(peakG, st.Goroutines), max(peakPidfds, st.Pidfds)
		for _, c := range cmds {
			err := c.Wait()
			var ee *exec.ExitError
			if err != nil && !(errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL) {
				t.Fatalf("a holder failed: %v", err)
			}
		}
		waitFor(t, "the wave's leases to end with their processes", func() bool {
			st := rawStats(t, r, 1)
			return st.Leases == 0 && st.Pidfds == 0
		})
	}
	var after protocol.StatsResult
	waitFor(t, "klockd's descriptors and goroutines to come back", func() bool {
		after = rawStats(t, r, 2)
		return fds() == fdBefore && after.Goroutines <= before.Goroutines
	})
	if after.ExitReleases != uint64(total+1) || after.Grants != uint64(total+1) {
		t.Errorf("stats = %+v; want %d grants (the warm-up's too), each ended by its process's exit", after, total+1)
	}
	t.Logf("%d bound processes in waves of %d: klockd fds %d before, peak %d, %d after; goroutines %d before, peak %d, %d after; pidfds peak %d",
		total, wave, fdBefore, peakFD, fds(), before.Goroutines, peakG, after.Goroutines, peakPidfds)
}

// killOnGrant is a holder's stdout: it kills the holder once the grant is
// printed, so the lease ends with a SIGKILL rather than an exit.
type killOnGrant struct {
	cmd  *exec.Cmd
	once sync.Once
}

func (k *killOnGrant) Write(p []byte) (int, error) {
	k.once.Do(func() { k.cmd.Process.Kill() })
	return len(p), nil
}

// TestBindAcrossPidNamespaces: a holder in a child pid namespace (a
// container on klockd's host) binds its lease as klockd sees it; a client
// outside klockd's pid namespace (klockd in a container) is refused with
// a message that says why, and may still take unbound leases.
func TestBindAcrossPidNamespaces(t *testing.T) {
	unshare := []string{"unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc"}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create pid namespaces with unshare(1)")
	}
	if out, err := exec.Command(unshare[0], append(unshare[1:], "true")...).CombinedOutput(); err != nil {
		t.Skipf("unshare(1) cannot create a pid namespace here: %v %s", err, out)
	}

	t.Run("holder in a child namespace", func(t *testing.T) {
		d := harness.Start(t, harness.Options{StateDir: "none"})
		kcOK(t, d, nil, "agents", "register", "holder", "--priority", "1")
		h := startHolder(t, d, "holder", "/ns", "10m", "wait", unshare...)
		if h.grant.PID != 1 || h.grant.BoundPID <= 1 {
			t.Fatalf("holder in its own pid namespace: pid %d there, bound_pid %d; want pid 1 there and its pid as klockd sees it",
				h.grant.PID, h.grant.BoundPID)
		}
		r := d.Raw(t)
		if ls := leases(t, r, 1); len(ls) != 1 || ls[0].BoundPID != h.grant.BoundPID {
			t.Fatalf("leases = %+v; want the holder's, bound to %d", ls, h.grant.BoundPID)
		}
		// Killing unshare takes the holder with it (--kill-child).
		h.killFreesLease(t, r, "the lease to end with the namespaced holder")
	})

	t.Run("klockd in a child namespace", func(t *testing.T) {
		d := harness.Start(t, harness.Options{StateDir: "none", Wrap: unshare})
		r := d.Raw(t)
		mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 1)), nil)
		resp := r.Call(2, protocol.OpAcquire, boundAcquireArgs("a", "s", "/ns", "MUTATES", 0))
		expectCode(t, "bound acquire from outside klockd's pid namespace", resp, protocol.CodeBindUnavailable)
		if !resp.OK && !strings.Contains(resp.Error.Message, "pid namespace") {
			t.Errorf("BIND_UNAVAILABLE message %q does not say it is about the pid namespace", resp.Error.Message)
		}
		mustOK(t, "unbound acquire", r.Call(3, protocol.OpAcquire, acquireArgs("a", "s", "/ns", "MUTATES", 60_000)), nil)
		// unshare ignores SIGTERM while its child runs; killed, it hands
		// klockd the SIGTERM of --kill-child.
		d.Kill(t)
	})
}

// TestMaxPidfds: with --max-pidfds 1, klockd watches one process; a bound
// acquire from a second process is RESOURCE_EXHAUSTED naming the flag, an
// unbound one is still granted, and once the first process has exited the
// second binds.
func TestMaxPidfds(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-pidfds", "1"}})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 1)), nil)
	h := startHolder(t, d, "a", "/limit/held", "10m", "wait")
	resp := r.Call(2, protocol.OpAcquire, boundAcquireArgs("a", "s", "/limit/mine", "MUTATES", 0))
	expectCode(t, "a second process's bound acquire with --max-pidfds 1", resp, protocol.CodeResourceExhausted)
	if !resp.OK && !strings.Contains(resp.Error.Message, "--max-pidfds") {
		t.Errorf("RESOURCE_EXHAUSTED message %q does not name --max-pidfds", resp.Error.Message)
	}
	mustOK(t, "unbound acquire past the limit", r.Call(3, protocol.OpAcquire, acquireArgs("a", "s", "/limit/free", "MUTATES", 60_000)), nil)
	h.kill(t)
	waitFor(t, "the holder's process to stop being watched", func() bool { return rawStats(t, r, 4).Pidfds == 0 })
	var g protocol.AcquireResult
	mustOK(t, "bound acquire once the holder exited", r.Call(5, protocol.OpAcquire, boundAcquireArgs("a", "s", "/limit/mine", "MUTATES", 0)), &g)
	if !g.Success || g.BoundPID != int32(os.Getpid()) {
		t.Errorf("bound acquire once the holder exited = %+v; want granted, bound to this test (pid %d)", g, os.Getpid())
	}
}
