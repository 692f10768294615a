package tests

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/tests/harness"
)

// tmux runs tmux on a server of its own (-L), so the test never touches a
// user's sessions; the server is killed when the test ends.
type tmux struct {
	t      *testing.T
	socket string
}

func newTmux(t *testing.T) *tmux {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tmux is not installed; CI must have it (apt-get install -y tmux)")
		}
		t.Skip("tmux is not installed (apt-get install -y tmux); skipped outside CI")
	}
	tm := &tmux{t: t, socket: fmt.Sprintf("klock-test-%d-%d", os.Getpid(), time.Now().UnixNano())}
	t.Cleanup(func() { exec.Command("tmux", "-L", tm.socket, "kill-server").Run() })
	return tm
}

func (tm *tmux) run(args ...string) string {
	tm.t.Helper()
	cmd := exec.Command("tmux", append([]string{"-L", tm.socket}, args...)...)
	cmd.Env = testEnv()
	out, err := cmd.CombinedOutput()
	require.NoError(tm.t, err, "tmux %q: %s", args, out)
	return string(out)
}

// screen returns what the pane shows now.
func (tm *tmux) screen() string { return tm.run("capture-pane", "-p", "-t", "top") }

// TestKlockctlTopUnderTmux runs klockctl top in a real terminal (a tmux
// pane), checks that it shows agents, the longest-held leases, a queue
// and that it redraws as leases come, then quits it with q.
func TestKlockctlTopUnderTmux(t *testing.T) {
	tm := newTmux(t)
	d := harness.Start(t, harness.Options{StateDir: "none"})
	_, klockctl := harness.Binaries(t)
	kcOK(t, d, nil, "agents", "register", "--priority", "10", "lead")
	kcOK(t, d, nil, "agents", "register", "--priority", "100", "builder")
	kcOK(t, d, nil, "acquire", "--agent", "builder", "--ttl", "10m", "FILE:/top/held-first.go")

	// The shell prints the exit code once top returns, then waits, so the
	// pane stays readable.
	script := fmt.Sprintf("KLOCK_SOCKET=%s %s top --every 200ms; echo top-exited-$?; sleep 600", d.Socket, klockctl)
	tm.run("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", script)
	waitFor(t, "top to draw the held lease", func() bool { return strings.Contains(tm.screen(), "FILE:/top/held-first.go") })
	s := tm.screen()
	require.Contains(t, s, "klockd: 2 agents, 1 leases, 0 waiting")
	require.Contains(t, s, "HELD LONGEST")
	require.Regexp(t, `(?m)^builder\s+100\s+1\s+0$`, s)
	require.Contains(t, s, "nobody is waiting")

	// A queue appears: lead (older) waits for builder.
	waiter := kcStart(t, d, "acquire", "--agent", "lead", "--wait", "1m", "FILE:/top/held-first.go")
	waitFor(t, "top to show the queue", func() bool {
		return regexpMatch(`FILE:/top/held-first\.go\s+1\s+lead \(\S+ so far\) waits for builder`, tm.screen())
	})
	kcOK(t, d, nil, "acquire", "--agent", "builder", "--ttl", "10m", "FILE:/top/later.go")
	waitFor(t, "top to redraw with the new lease", func() bool { return strings.Contains(tm.screen(), "FILE:/top/later.go") })
	s = tm.screen()
	require.Less(t, strings.Index(s, "held-first.go"), strings.Index(s, "later.go"), "held longest first")
	require.Regexp(t, `per second: [0-9.]+ grants`, s)

	tm.run("send-keys", "-t", "top", "q")
	waitFor(t, "top to exit on q", func() bool { return strings.Contains(tm.screen(), "top-exited-0") })
	require.NotContains(t, tm.screen(), "HELD LONGEST", "top restores the screen it found")
	kcOK(t, d, nil, "release", leaseOf(t, d, "FILE:/top/held-first.go"))
	require.Equal(t, 0, waiter.wait(t).code)
}

func regexpMatch(re, s string) bool {
	ok, _ := regexp.MatchString(re, s)
	return ok
}

// leaseOf returns the id of the lease on resource.
func leaseOf(t *testing.T, d *harness.Daemon, resource string) string {
	t.Helper()
	var ls kcLeases
	kcOK(t, d, &ls, "leases", "--json", "--prefix", resource)
	require.Len(t, ls.Leases, 1)
	return ls.Leases[0].LeaseID
}
