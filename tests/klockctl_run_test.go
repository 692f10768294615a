package tests

// End-to-end tests of `klockctl run`: the command runs under its leases,
// which are released (or left to expire) however it ends.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/klockd/klock/tests/harness"
)

func TestKlockctlRunPropagatesExitCodeAndReleases(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	envFile := filepath.Join(t.TempDir(), "env")
	cmd := kcCommand(t, d, nil, "run", "--ttl", "30s", "/res/a", "SYMBOL:b", "--",
		"sh", "-c", `echo "$KLOCK_LEASE_IDS $KLOCK_FENCE $KLOCK_AGENT $KLOCK_SESSION" > "$1"; cat; exit 7`, "sh", envFile)
	cmd.Stdin = strings.NewReader("from stdin\n")
	r := runCmd(t, cmd)
	if r.code != 7 {
		t.Fatalf("run -- sh -c 'exit 7' exited %d; want 7 (stderr %q)", r.code, r.stderr)
	}
	if r.stdout != "from stdin\n" || r.stderr != "" {
		t.Errorf("run stdout %q, stderr %q; want stdin passed through to stdout and nothing on stderr", r.stdout, r.stderr)
	}
	env, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(env))
	if len(f) != 4 || len(strings.Split(f[0], ",")) != 2 || len(strings.Split(f[1], ",")) != 2 ||
		!strings.HasPrefix(f[2], "klockctl-") || !strings.HasPrefix(f[3], "run-") {
		t.Errorf("the command saw %q; want 2 lease ids, 2 fences, agent klockctl-..., session run-...", env)
	}
	if n := kcCount(t, d); n != 0 {
		t.Errorf("count after run = %d; want 0 (released on exit)", n)
	}
	var as kcAgents
	kcOK(t, d, &as, "agents", "--json")
	if len(as.Agents) != 0 {
		t.Errorf("agents after run = %+v; want the fresh agent unregistered", as.Agents)
	}

	if r := kc(t, d, "run", "/res/a", "--", "true"); r.code != 0 {
		t.Errorf("run -- true exited %d (stderr %q); want 0", r.code, r.stderr)
	}
	if r := kc(t, d, "run", "/res/a", "--", filepath.Join(t.TempDir(), "missing")); r.code != 127 || kcCount(t, d) != 0 {
		t.Errorf("run of a missing command exited %d (stderr %q); want 127 and the lease released", r.code, r.stderr)
	}
}

func TestKlockctlRunReleasesWhenCommandIsKilled(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := kc(t, d, "run", "/res/k", "--", "sh", "-c", "kill -KILL $$")
	if r.code != 128+int(syscall.SIGKILL) {
		t.Errorf("run of a command killed by SIGKILL exited %d; want %d", r.code, 128+int(syscall.SIGKILL))
	}
	if n := kcCount(t, d); n != 0 {
		t.Errorf("count after the command was killed = %d; want 0", n)
	}
}

func TestKlockctlRunForwardsSIGTERM(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	p := kcStart(t, d, "run", "/res/t", "--", "sleep", "60")
	waitFor(t, "run to hold its lease", func() bool { return kcCount(t, d) == 1 })
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := p.wait(t)
	if r.code != 128+int(syscall.SIGTERM) {
		t.Errorf("run after SIGTERM exited %d (stderr %q); want %d: the command killed by the forwarded signal",
			r.code, r.stderr, 128+int(syscall.SIGTERM))
	}
	if n := kcCount(t, d); n != 0 {
		t.Errorf("count after run was stopped = %d; want 0", n)
	}
}

func TestKlockctlRunDenied(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "acquire", "--agent", "holder", "/res/d")
	marker := filepath.Join(t.TempDir(), "ran")
	r := kc(t, d, "run", "--wait", "300ms", "--json", "/res/d", "--", "touch", marker)
	if r.code != 1 {
		t.Fatalf("run on a held resource exited %d; want 1 (stderr %q)", r.code, r.stderr)
	}
	var den kcDenial
	if err := json.Unmarshal([]byte(r.stdout), &den); err != nil || den.Success || den.HeldBy != "holder" {
		t.Errorf("run --json denial = %q (%v); want held_by holder", r.stdout, err)
	}
	if !strings.Contains(r.stderr, "not granted") {
		t.Errorf("run denial stderr = %q; want it to say the leases were not granted", r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the command ran although the lease was denied")
	}
	if n := kcCount(t, d); n != 1 {
		t.Errorf("count = %d; want only the holder's lease", n)
	}
}

func TestKlockctlRunStopsCommandWhenLeaseLost(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	p := kcStart(t, d, "run", "--ttl", "3s", "--kill-after", "5s", "/res/lost", "--", "sleep", "60")
	var ls kcLeases
	waitFor(t, "run to hold its lease", func() bool {
		kcOK(t, d, &ls, "leases", "--json")
		return len(ls.Leases) == 1
	})
	kcOK(t, d, nil, "revoke", ls.Leases[0].LeaseID)
	r := p.wait(t)
	if r.code != 1 || !strings.Contains(r.stderr, "lease lost") {
		t.Errorf("run whose lease was revoked exited %d, stderr %q; want 1 and \"lease lost\"", r.code, r.stderr)
	}
}

// TestKlockctlRunWaitsForHolder checks that run blocks (no --wait) until a
// younger holder releases, then runs.
func TestKlockctlRunWaitsForHolder(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	held := kcYoungHolds(t, d, "old", "young", "/res/w")
	p := kcStart(t, d, "run", "--agent", "old", "/res/w", "--", "sh", "-c", "exit 5")
	waitFor(t, "run to wait in the daemon", func() bool {
		var as kcAgents
		kcOK(t, d, &as, "agents", "--json")
		return len(as.Agents) > 0 && as.Agents[0].AgentID == "old" && as.Agents[0].Waiting == 1
	})
	kcOK(t, d, nil, "release", held.LeaseID)
	if r := p.wait(t); r.code != 5 {
		t.Errorf("run after the holder released exited %d (stderr %q); want 5", r.code, r.stderr)
	}
	var as kcAgents
	kcOK(t, d, &as, "agents", "--json")
	if len(as.Agents) != 2 {
		t.Errorf("agents after run --agent old = %+v; want old kept (named agents stay registered)", as.Agents)
	}
}

// TestKlockctlRunInterruptedWhileWaiting checks that SIGINT while run waits
// for its leases ends it with 130, never runs the command, and leaves no
// waiter or fresh agent behind.
func TestKlockctlRunInterruptedWhileWaiting(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "agents", "register", "young", "--priority", "999999999999999")
	kcOK(t, d, nil, "acquire", "--agent", "young", "/res/i")
	marker := filepath.Join(t.TempDir(), "ran")
	p := kcStart(t, d, "run", "/res/i", "--", "touch", marker)
	// run's fresh agent registered now, so it is older than "young" and waits.
	waitFor(t, "run to wait in the daemon", func() bool {
		var st struct{ Stats struct{ Waiters int } }
		kcOK(t, d, &st, "status", "--json")
		return st.Stats.Waiters == 1
	})
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	r := p.wait(t)
	if r.code != 128+int(syscall.SIGINT) || !strings.Contains(r.stderr, "interrupted") {
		t.Errorf("run interrupted while waiting exited %d, stderr %q; want %d and \"interrupted\"", r.code, r.stderr, 128+int(syscall.SIGINT))
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the command ran although run was interrupted before the grant")
	}
	waitFor(t, "the waiter and the fresh agent to go", func() bool {
		var as kcAgents
		kcOK(t, d, &as, "agents", "--json")
		return len(as.Agents) == 1 && as.Agents[0].AgentID == "young"
	})
}

// TestKlockctlRunKilledFreesLeaseAndCommand checks the documented SIGKILL
// case: the leases are bound to klockctl's process, so they are released
// at once, long before their 10 minute ttl, and the command gets SIGTERM
// from the kernel (its parent-death signal).
func TestKlockctlRunKilledFreesLeaseAndCommand(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	pidFile := filepath.Join(t.TempDir(), "pid")
	p := kcStart(t, d, "run", "--ttl", "10m", "/res/x", "--", "sh", "-c", `echo $$ > "$1"; exec sleep 100`, "sh", pidFile)
	var childPID int
	waitFor(t, "the command to start", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		childPID, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	var ls kcLeases
	kcOK(t, d, &ls, "leases", "--json")
	if len(ls.Leases) != 1 || ls.Leases[0].BoundPID != int32(p.cmd.Process.Pid) {
		t.Fatalf("leases while run holds one = %+v; want it bound to klockctl (pid %d)", ls.Leases, p.cmd.Process.Pid)
	}
	// The table names the process too, read from /proc.
	if r := kcOK(t, d, nil, "leases"); !strings.Contains(r.stdout, fmt.Sprintf(" %d (klockctl) ", p.cmd.Process.Pid)) {
		t.Errorf("klockctl leases =\n%s\nwant the lease bound to %d (klockctl)", r.stdout, p.cmd.Process.Pid)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	waitFor(t, "the command to be stopped by its parent-death signal", func() bool {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(childPID) + "/stat")
		// Gone, or a zombie waiting for a reaper.
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
	waitFor(t, "the lease to be released with klockctl's process", func() bool { return kcCount(t, d) == 0 })
}
