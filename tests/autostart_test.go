package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// Autostart and socket resolution (issue 19 §1, §2), as a user would meet
// them: real processes of a fresh non-root user, with the binaries on its
// PATH and no daemon running. Creating users needs root (CI runs as root).

// userShell runs programs as a test user, as a login shell would: its own
// HOME, PATH holding the klock binaries, nothing of the test's environment.
type userShell struct {
	u    osUser
	bin  string // on PATH: klockd, klockctl, seedexample (unless left out)
	home string
}

var (
	seedOnce sync.Once
	seedBin  string
	seedErr  error
)

// seedExample builds clientlib/examples/seed once and returns its path.
func seedExample(t *testing.T) string {
	t.Helper()
	seedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "klock-seed-")
		if err != nil {
			seedErr = err
			return
		}
		seedBin = filepath.Join(dir, "seedexample")
		out, err := exec.Command("go", "build", "-o", seedBin, "../clientlib/examples/seed").CombinedOutput()
		if err != nil {
			seedErr = err
			seedBin = string(out)
		}
	})
	if seedErr != nil {
		t.Fatalf("go build ./clientlib/examples/seed: %v\n%s", seedErr, seedBin)
	}
	return seedBin
}

// newUserShell creates (if needed) a user for this test process, named
// name-PID, and a shell for it with the given programs on its PATH
// ("klockd", "klockctl", "seedexample"). The pid keeps two test runs on
// one machine (a lander's full run and a focused one) from sharing a user,
// whose daemons and socket directories each run stops and removes. When
// the test ends, every klockd the user runs is stopped and its per-user
// socket directories are removed.
func newUserShell(t *testing.T, name string, programs ...string) *userShell {
	t.Helper()
	requireRoot(t)
	u := ensureUser(t, fmt.Sprintf("%s-%d", name, os.Getpid()))
	dir := publicDir(t)
	sh := &userShell{u: u, bin: filepath.Join(dir, "bin"), home: filepath.Join(dir, "home")}
	for _, d := range []string{sh.bin, sh.home} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(sh.home, int(u.uid), int(u.gid)); err != nil {
		t.Fatal(err)
	}
	klockd, klockctl := harness.Binaries(t)
	src := map[string]string{"klockd": klockd, "klockctl": klockctl}
	for _, p := range programs {
		if p == "seedexample" {
			src[p] = seedExample(t)
		}
		copyExecutable(t, src[p], sh.bin)
	}
	sh.cleanup(t) // a daemon left by an earlier, interrupted run
	t.Cleanup(func() { sh.cleanup(t) })
	return sh
}

// cleanup stops the user's daemons and removes its socket directories.
func (sh *userShell) cleanup(t *testing.T) {
	for _, pid := range daemonsOf(sh.u.uid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	waitFor(t, "the test user's klockd to exit", func() bool { return len(daemonsOf(sh.u.uid)) == 0 })
	os.RemoveAll("/tmp/klock-" + strconv.Itoa(int(sh.u.uid)))
	os.RemoveAll("/run/user/" + strconv.Itoa(int(sh.u.uid)))
}

// run runs program (from the shell's bin) as the user, with env added to
// the login environment.
func (sh *userShell) run(t *testing.T, env []string, program string, args ...string) cmdResult {
	t.Helper()
	return runCmd(t, sh.command(env, program, args...))
}

func (sh *userShell) command(env []string, program string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(sh.bin, program), args...)
	cmd.Env = append([]string{"PATH=" + sh.bin + ":/usr/bin:/bin", "HOME=" + sh.home, "USER=" + sh.u.name}, env...)
	cmd.Dir = sh.home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: sh.u.uid, Gid: sh.u.gid}}
	return cmd
}

// status runs klockctl status --json as the user and returns the socket,
// the daemon kind and pid it reports; it fails the test unless it exits 0.
func (sh *userShell) status(t *testing.T, env ...string) (socket, kind string, pid int, stderr string) {
	t.Helper()
	r := sh.run(t, env, "klockctl", "status", "--json")
	if r.code != 0 {
		t.Fatalf("klockctl status as %s (env %q) exited %d: %s", sh.u.name, env, r.code, r.stderr)
	}
	var st struct {
		Socket string `json:"socket"`
		Daemon string `json:"daemon"`
		Hello  struct {
			PID int `json:"pid"`
		} `json:"hello"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("klockctl status --json printed %q: %v", r.stdout, err)
	}
	return st.Socket, st.Daemon, st.Hello.PID, r.stderr
}

// daemonsOf returns the pids of the klockd processes running as uid.
func daemonsOf(uid uint32) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		var name string
		var owner int = -1
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "Name:"); ok {
				name = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					owner, _ = strconv.Atoi(f[0])
				}
			}
		}
		if name == "klockd" && owner == int(uid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// startedLines counts the lines announcing an autostart.
func startedLines(stderr string) int { return strings.Count(stderr, "klock: started klockd (pid ") }

// TestAutostartSeedExample runs the seed's Complete Example (in Go, with
// clientlib.Dial and no options) as a user with klockd on PATH and no
// daemon running, twice: the first run starts one daemon and says so on
// stderr, the second uses it; one daemon runs afterwards.
func TestAutostartSeedExample(t *testing.T) {
	sh := newUserShell(t, "klkas1", "klockd", "klockctl", "seedexample")
	want := "Senior: success=true resource=FILE:/src/auth.ts\n" +
		"Junior: success=false reason=DIE held_by=agent-senior\n" +
		"Junior (other file): success=true resource=FILE:/src/utils.ts\n" +
		"Active leases: 0\n"
	socket := "/tmp/klock-" + strconv.Itoa(int(sh.u.uid)) + "/klockd.sock"
	for run := 1; run <= 2; run++ {
		r := sh.run(t, nil, "seedexample")
		if r.code != 0 || r.stdout != want {
			t.Fatalf("run %d of the seed example: exit %d\nstdout:\n%s\nstderr:\n%s\nwant stdout:\n%s", run, r.code, r.stdout, r.stderr, want)
		}
		if n := startedLines(r.stderr); n != 2-run || (n == 1 && !strings.Contains(r.stderr, socket)) {
			t.Errorf("run %d: stderr %q; want %d line(s) saying klockd was started on %s", run, r.stderr, 2-run, socket)
		}
		if run == 1 && strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("run 1: stderr %q; want exactly one line", r.stderr)
		}
	}
	if pids := daemonsOf(sh.u.uid); len(pids) != 1 {
		t.Fatalf("klockd processes of the user after two runs: %v; want exactly one", pids)
	}
	got, kind, _, _ := sh.status(t)
	if got != socket || kind != "per-user" {
		t.Errorf("klockctl status: socket %q (%s daemon); want %q (per-user daemon)", got, kind, socket)
	}
	// Its log went to the state directory, under the user's home.
	if _, err := os.Stat(filepath.Join(sh.home, ".local/state/klock/klockd.log")); err != nil {
		t.Errorf("the autostarted klockd's log: %v", err)
	}
}

// TestAutostartConcurrentFirstUse starts several clients at once with no
// daemon running: they end with one daemon, started by one of them.
func TestAutostartConcurrentFirstUse(t *testing.T) {
	sh := newUserShell(t, "klkas2", "klockd", "klockctl")
	cmds := make([]*exec.Cmd, 4)
	for i := range cmds {
		cmds[i] = sh.command(nil, "klockctl", "count")
	}
	checkOneDaemonStarted(t, sh.u.uid, cmds)
}

// checkOneDaemonStarted starts the clients at once, with no daemon running
// for uid, each printing the lease count: every one prints 0 and exits 0,
// and they end with one daemon, started by one of them.
func checkOneDaemonStarted(t *testing.T, uid uint32, cmds []*exec.Cmd) {
	t.Helper()
	procs := make([]*kcProc, len(cmds))
	for i, cmd := range cmds {
		procs[i] = &kcProc{cmd: cmd}
		cmd.Stdout, cmd.Stderr = &procs[i].out, &procs[i].errb
	}
	for _, p := range procs {
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	started := 0
	for i, p := range procs {
		r := p.wait(t)
		if r.code != 0 || strings.TrimSpace(r.stdout) != "0" {
			t.Errorf("client %d: exit %d, stdout %q, stderr %q; want 0 and a count of 0", i, r.code, r.stdout, r.stderr)
		}
		started += startedLines(r.stderr)
	}
	if pids := daemonsOf(uid); len(pids) != 1 || started != 1 {
		t.Fatalf("after %d concurrent first uses: klockd pids %v, %d said they started one; want one daemon, one start", len(cmds), pids, started)
	}
}

// TestAutostartOptOut: KLOCK_NO_AUTOSTART, KLOCK_DISABLE_AUTOSTART and a
// named socket never start klockd; without klockd to start, the error says
// where to get it.
func TestAutostartOptOut(t *testing.T) {
	sh := newUserShell(t, "klkas3", "klockd", "klockctl")
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"KLOCK_NO_AUTOSTART=1"}, "autostart is off"},
		{[]string{"KLOCK_DISABLE_AUTOSTART=1"}, "autostart is off"},
		{[]string{"KLOCK_SOCKET=" + sh.home + "/none.sock"}, sh.home + "/none.sock"},
	} {
		r := sh.run(t, tc.env, "klockctl", "status")
		if r.code != 3 || !strings.Contains(r.stderr, tc.want) || startedLines(r.stderr) != 0 {
			t.Errorf("klockctl status with %q: exit %d, stderr %q; want exit 3 and %q", tc.env, r.code, r.stderr, tc.want)
		}
		if pids := daemonsOf(sh.u.uid); len(pids) != 0 {
			t.Fatalf("with %q a klockd was started: %v", tc.env, pids)
		}
	}

	bare := newUserShell(t, "klkas3", "klockctl") // klockd neither on PATH nor beside klockctl
	r := bare.run(t, nil, "klockctl", "status")
	if r.code != 3 || !strings.Contains(r.stderr, "go install github.com/klockd/klock/cmd/klockd@latest") {
		t.Errorf("klockctl status without klockd: exit %d, stderr %q; want exit 3 and where to get klockd", r.code, r.stderr)
	}
}

// TestSocketSameForSuShells: a shell without XDG_RUNTIME_DIR (su, some ssh)
// reaches the same per-user daemon as a desktop shell that has it, whether
// the daemon was started while the user had a login session
// (/run/user/$UID exists) or not.
func TestSocketSameForSuShells(t *testing.T) {
	sh := newUserShell(t, "klkas4", "klockd", "klockctl")
	uid := strconv.Itoa(int(sh.u.uid))
	runtimeDir := "/run/user/" + uid
	desktop := []string{"XDG_RUNTIME_DIR=" + runtimeDir}

	// No session: the daemon starts on /tmp/klock-$UID.
	socket, _, pid, stderr := sh.status(t)
	if want := "/tmp/klock-" + uid + "/klockd.sock"; socket != want || startedLines(stderr) != 1 {
		t.Fatalf("first use without a session: socket %q, stderr %q; want a daemon started on %q", socket, stderr, want)
	}
	// A session begins: logind makes /run/user/$UID. Both kinds of shell
	// still find the daemon already running.
	if err := os.MkdirAll(runtimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(runtimeDir, int(sh.u.uid), int(sh.u.gid)); err != nil {
		t.Fatal(err)
	}
	for _, env := range [][]string{desktop, nil} {
		s, _, p, e := sh.status(t, env...)
		if s != socket || p != pid || startedLines(e) != 0 {
			t.Errorf("shell with %q: daemon %s pid %d (stderr %q); want the running one, %s pid %d", env, s, p, e, socket, pid)
		}
	}

	// The daemon gone, a desktop shell starts one in the runtime directory
	// and a shell without XDG_RUNTIME_DIR finds that one.
	sh.cleanup(t)
	if err := os.MkdirAll(runtimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(runtimeDir, int(sh.u.uid), int(sh.u.gid)); err != nil {
		t.Fatal(err)
	}
	socket, _, pid, stderr = sh.status(t, desktop...)
	if want := runtimeDir + "/klock/klockd.sock"; socket != want || startedLines(stderr) != 1 {
		t.Fatalf("desktop shell with a session: socket %q, stderr %q; want a daemon started on %q", socket, stderr, want)
	}
	if s, _, p, e := sh.status(t); s != socket || p != pid || startedLines(e) != 0 {
		t.Errorf("shell without XDG_RUNTIME_DIR: daemon %s pid %d (stderr %q); want %s pid %d", s, p, e, socket, pid)
	}
}

// TestSystemDaemonBeforeAutostart: a user with no daemon of its own uses
// the system daemon when it may connect to it, and starts its own when it
// may not.
func TestSystemDaemonBeforeAutostart(t *testing.T) {
	sh := newUserShell(t, "klkas5", "klockd", "klockctl")
	if _, err := os.Stat(protocol.SystemSocket); err == nil {
		t.Skipf("%s exists (a system klockd runs here); this test needs to own it", protocol.SystemSocket)
	}
	if _, err := os.Stat(filepath.Dir(protocol.SystemSocket)); os.IsNotExist(err) {
		t.Cleanup(func() { os.Remove(filepath.Dir(protocol.SystemSocket)) })
	}
	d := harness.Start(t, harness.Options{Socket: protocol.SystemSocket, StateDir: "none", Args: []string{"--socket-mode", "0666"}})
	socket, kind, _, stderr := sh.status(t)
	if socket != protocol.SystemSocket || kind != "system" || startedLines(stderr) != 0 {
		t.Fatalf("with a system daemon open to all: socket %q (%s), stderr %q; want %s (system), nothing started",
			socket, kind, stderr, protocol.SystemSocket)
	}
	d.Stop(t)

	harness.Start(t, harness.Options{Socket: protocol.SystemSocket, StateDir: "none"}) // 0660 root:root
	socket, kind, _, stderr = sh.status(t)
	if socket == protocol.SystemSocket || kind != "per-user" || startedLines(stderr) != 1 {
		t.Fatalf("with a system daemon the user may not connect to: socket %q (%s), stderr %q; want a per-user daemon started",
			socket, kind, stderr)
	}
}
