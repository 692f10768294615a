package tests

// klockd under a service manager, with the real binaries: units pass
// systemd-analyze; socket activation with systemd-socket-activate and with a
// socket held across restarts (as klockd.socket does); sd_notify READY,
// STOPPING and WATCHDOG; `klockd install` with and without a service manager.

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// systemdWait bounds every wait in these tests; it is a hang guard, never a
// timing assertion.
const systemdWait = 20 * time.Second

// sdRequireTool returns the path of a systemd tool. Without it the test is
// skipped on a developer machine and fails in CI (CI set), where .ci/run
// installs Debian's systemd package.
func sdRequireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; CI must have it (apt-get install -y systemd)", name)
	}
	t.Skipf("%s is not installed (apt-get install -y systemd); skipped outside CI", name)
	return ""
}

// sdShortDir is a temporary directory short enough for socket paths.
func sdShortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ksd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// sdRepoFile is a path in the repository, from the tests directory.
func sdRepoFile(rel string) string { return filepath.Join("..", rel) }

// sdProc is a process started by a test, with its combined output.
type sdProc struct {
	cmd  *exec.Cmd
	out  *harness.Buffer
	done chan struct{}
	err  error
}

func sdStart(t *testing.T, cmd *exec.Cmd) *sdProc {
	t.Helper()
	p := &sdProc{cmd: cmd, out: &harness.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// stop sends SIGTERM and requires a clean exit.
func (p *sdProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.exited(t)
}

// exited waits for p, already sent SIGTERM, and requires a clean exit. (A
// second SIGTERM would end klockd at once, by design.)
func (p *sdProc) exited(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(systemdWait):
		t.Fatalf("%s did not exit within %s of SIGTERM; output:\n%s", p.cmd.Path, systemdWait, p.out)
	}
	if p.err != nil {
		t.Fatalf("%s exited with %v after SIGTERM; output:\n%s", p.cmd.Path, p.err, p.out)
	}
}

// sdHelloPID sends one hello on conn and returns the daemon's pid.
func sdHelloPID(conn net.Conn) (int, error) {
	conn.SetDeadline(time.Now().Add(systemdWait))
	frame, _ := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
	if _, err := conn.Write(frame); err != nil {
		return 0, err
	}
	return sdReadHelloPID(conn)
}

func sdReadHelloPID(conn net.Conn) (int, error) {
	conn.SetDeadline(time.Now().Add(systemdWait))
	body, err := protocol.ReadFrame(conn, nil, protocol.DefaultMaxFrame)
	if err != nil {
		return 0, err
	}
	var resp protocol.Response
	if err := protocol.DecodeResponse(body, &resp); err != nil {
		return 0, err
	}
	if !resp.OK {
		return 0, errors.New(resp.Error.Message)
	}
	var hello protocol.HelloResult
	if err := msgpack.Unmarshal(resp.Result, &hello); err != nil {
		return 0, err
	}
	return hello.PID, nil
}

// sdDial connects the client library to socket.
func sdDial(t *testing.T, socket string) *clientlib.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), systemdWait)
	defer cancel()
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: socket})
	if err != nil {
		t.Fatalf("dial %s: %v", socket, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sdAcquireHour registers agent and takes an hour-long MUTATES lease on path.
func sdAcquireHour(t *testing.T, c *clientlib.Client, agent, path string) *clientlib.AcquireResult {
	t.Helper()
	ctx := testCtx(t)
	if err := c.RegisterAgent(ctx, agent, 1); err != nil {
		t.Fatalf("register %s: %v", agent, err)
	}
	res, err := c.AcquireLease(ctx, agent, "s1", "FILE", path, "MUTATES", time.Hour)
	if err != nil || !res.Success {
		t.Fatalf("AcquireLease(%s) = %+v, %v; want a grant", path, res, err)
	}
	return res
}

// sdRequireLease fails unless the daemon lists the lease with its fence.
func sdRequireLease(t *testing.T, c *clientlib.Client, want *clientlib.AcquireResult) {
	t.Helper()
	leases, _, err := c.ListLeases(testCtx(t), clientlib.LeaseFilter{})
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	if !slices.ContainsFunc(leases, func(l protocol.LeaseInfo) bool { return l.LeaseID == want.LeaseID && l.Fence == want.Fence }) {
		t.Fatalf("lease %s (fence %d) is gone after the restart; leases: %+v", want.LeaseID, want.Fence, leases)
	}
}

// sdUnitCopy writes the unit files to a temporary directory with ExecStart
// pointing at the freshly built klockd, which systemd-analyze checks is
// executable; the directory keeps socket and service side by side.
func sdUnitCopy(t *testing.T, klockd string, files ...string) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for _, f := range files {
		data, err := os.ReadFile(sdRepoFile(f))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(data), "/usr/local/bin/klockd", klockd)
		p := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// sdAnalyze runs systemd-analyze and fails on a non-zero exit or any output:
// verify only warns, exit 0, about unknown keys and bad values.
func sdAnalyze(t *testing.T, tool string, user bool, args ...string) string {
	t.Helper()
	if user {
		args = append([]string{"--user"}, args...)
	}
	cmd := exec.Command(tool, args...)
	cmd.Env = testEnv("XDG_RUNTIME_DIR=" + t.TempDir()) // a user manager needs one
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestSystemdUnitsVerify(t *testing.T) {
	tool := sdRequireTool(t, "systemd-analyze")
	klockd := harness.Klockd(t)
	for _, set := range []struct {
		user  bool
		files []string
	}{
		{false, []string{"systemd/klockd.service", "systemd/klockd.socket"}},
		{true, []string{"systemd/user/klockd.service", "systemd/user/klockd.socket"}},
	} {
		paths := sdUnitCopy(t, klockd, set.files...)
		if out := sdAnalyze(t, tool, set.user, append([]string{"verify"}, paths...)...); out != "" {
			t.Errorf("systemd-analyze verify %v reported:\n%s", set.files, out)
		}
	}
	// The account entry parses (--dry-run: nothing is created).
	if sysusers, err := exec.LookPath("systemd-sysusers"); err == nil {
		conf, _ := filepath.Abs(sdRepoFile("systemd/klock.sysusers.conf")) // a bare name is looked up in sysusers.d
		out, err := exec.Command(sysusers, "--dry-run", conf).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-sysusers --dry-run klock.sysusers.conf: %v\n%s", err, out)
		}
	}
	// The system unit stays hardened: exposure at most 2.0 of 10
	// (--threshold counts tenths).
	paths := sdUnitCopy(t, klockd, "systemd/klockd.service")
	out := sdAnalyze(t, tool, false, "security", "--offline=yes", "--threshold=20", paths[0])
	if i := strings.Index(out, "Overall exposure level"); i >= 0 {
		t.Logf("%s", strings.TrimSpace(out[i:]))
	}
}

// The real systemd-socket-activate holds the socket, starts klockd on the
// first connection and hands it the socket; klockd serves on it (and does
// not create its own). Started again on the same socket and state directory
// it still has the leases.
func TestSocketActivation(t *testing.T) {
	activate := sdRequireTool(t, "systemd-socket-activate")
	klockd := harness.Klockd(t)
	dir := sdShortDir(t)
	socket := filepath.Join(dir, "klockd.sock")
	ownSocket := filepath.Join(dir, "own.sock") // --socket, ignored when a socket is inherited
	state := t.TempDir()

	start := func() *sdProc {
		cmd := exec.Command(activate, "-l", socket, klockd, "run", "--socket", ownSocket, "--state-dir", state)
		cmd.Env = testEnv()
		p := sdStart(t, cmd)
		waitFor(t, "systemd-socket-activate to listen", func() bool { return strings.Contains(p.out.String(), "Listening on") })
		return p
	}

	first := start()
	exe, err := os.Readlink("/proc/" + strconv.Itoa(first.cmd.Process.Pid) + "/exe")
	if err != nil || filepath.Base(exe) != "systemd-socket-activate" {
		t.Fatalf("before any connection the process runs %q (%v); want systemd-socket-activate still waiting", exe, err)
	}
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := sdHelloPID(conn)
	conn.Close()
	if err != nil {
		t.Fatalf("hello through the activated socket: %v\n%s", err, first.out)
	}
	// systemd-socket-activate execs the service in its own process.
	if pid != first.cmd.Process.Pid {
		t.Errorf("hello answered by pid %d; want the activated process %d", pid, first.cmd.Process.Pid)
	}
	lease := sdAcquireHour(t, sdDial(t, socket), "agent-a", "/src/activated.go")
	if _, err := os.Stat(ownSocket); err == nil {
		t.Errorf("klockd created %s although it was given a socket", ownSocket)
	}
	first.stop(t)

	second := start()
	c := sdDial(t, socket)
	sdRequireLease(t, c, lease)
	next := sdAcquireHour(t, c, "agent-b", "/src/other.go")
	if next.Fence <= lease.Fence {
		t.Errorf("fence after restart = %d; want above %d", next.Fence, lease.Fence)
	}
	second.stop(t)
}

// As klockd.socket does, the test holds the listening socket while klockd
// stops and starts again on the same state directory: a client that
// connects in between is not refused but served by the new daemon, and the
// leases are still there.
func TestSocketHeldAcrossRestart(t *testing.T) {
	klockd := harness.Klockd(t)
	dir := sdShortDir(t)
	socket := filepath.Join(dir, "klockd.sock")
	state := t.TempDir()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	start := func() *sdProc {
		// LISTEN_PID must be klockd's own pid, set between fork and exec as
		// systemd does; the shell's exec keeps its pid.
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`,
			klockd, "run", "--socket", filepath.Join(dir, "own.sock"), "--state-dir", state)
		cmd.Env = testEnv("LISTEN_FDS=1")
		cmd.ExtraFiles = []*os.File{held} // fd 3
		return sdStart(t, cmd)
	}

	first := start()
	keeper := sdDial(t, socket) // waits in the backlog until served; reconnects across the restart
	lease := sdAcquireHour(t, keeper, "agent-a", "/src/held.go")
	first.stop(t)

	// No daemon runs now, yet the socket accepts: the connection waits in
	// the backlog for the next klockd.
	gap, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("connecting while klockd is down: %v", err)
	}
	defer gap.Close()
	frame, _ := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
	if _, err := gap.Write(frame); err != nil {
		t.Fatal(err)
	}

	second := start()
	pid, err := sdReadHelloPID(gap)
	if err != nil || pid != second.cmd.Process.Pid {
		t.Fatalf("hello sent during the restart = pid %d, %v; want an answer from the new klockd (pid %d)\n%s",
			pid, err, second.cmd.Process.Pid, second.out)
	}
	sdRequireLease(t, sdDial(t, socket), lease)
	// The client connected before the restart redials and keeps its lease.
	if _, err := keeper.Heartbeat(testCtx(t), lease.LeaseID, time.Hour); err != nil {
		t.Errorf("heartbeat of the pre-restart lease through the reconnected client: %v", err)
	}
	second.stop(t)
}

// sdNextNotify returns the next notification's assignments.
func sdNextNotify(t *testing.T, conn *net.UnixConn, p *sdProc) []string {
	t.Helper()
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(systemdWait))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("waiting for a notification: %v; klockd output:\n%s", err, p.out)
	}
	return strings.Split(strings.TrimSpace(string(buf[:n])), "\n")
}

// klockd tells its service manager READY=1 only once the socket is served,
// pings WATCHDOG=1 when WATCHDOG_USEC asks for it, and says STOPPING=1 on
// SIGTERM.
func TestSdNotify(t *testing.T) {
	klockd := harness.Klockd(t)
	dir := sdShortDir(t)
	notifyPath, socket := filepath.Join(dir, "notify.sock"), filepath.Join(dir, "klockd.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"}) // systemd's side
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	cmd := exec.Command(klockd, "run", "--socket", socket, "--state-dir", t.TempDir())
	cmd.Env = testEnv("NOTIFY_SOCKET="+notifyPath, "WATCHDOG_USEC=200000") // pings every 100ms
	p := sdStart(t, cmd)

	// STATUS= or watchdog pings may come first; READY=1 must come, alone.
	for msg := sdNextNotify(t, notify, p); !slices.Contains(msg, "READY=1"); msg = sdNextNotify(t, notify, p) {
		if slices.Contains(msg, "STOPPING=1") {
			t.Fatalf("notification %q before READY=1", msg)
		}
	}
	// Ready means served: one attempt, no retry, must be answered.
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("connecting right after READY=1: %v", err)
	}
	pid, err := sdHelloPID(conn)
	conn.Close()
	if err != nil || pid != cmd.Process.Pid {
		t.Fatalf("hello right after READY=1 = pid %d, %v; want pid %d", pid, err, cmd.Process.Pid)
	}

	for pings := 0; pings < 2; {
		msg := sdNextNotify(t, notify, p)
		if slices.Contains(msg, "READY=1") || slices.Contains(msg, "STOPPING=1") {
			t.Fatalf("unexpected notification before SIGTERM: %q", msg)
		}
		if slices.Contains(msg, "WATCHDOG=1") {
			pings++
		}
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	for {
		msg := sdNextNotify(t, notify, p)
		if slices.Contains(msg, "STOPPING=1") {
			break
		}
		if !slices.Contains(msg, "WATCHDOG=1") {
			t.Fatalf("notification %q after SIGTERM; want STOPPING=1", msg)
		}
	}
	p.exited(t)
}

// sdRun runs klockd with args and returns its stdout, stderr and exit code.
func sdRun(t *testing.T, klockd string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(klockd, args...)
	cmd.Env = testEnv()
	r := runCmd(t, cmd)
	return r.stdout, r.stderr, r.code
}

// systemdRunning reports whether systemd is the service manager here.
func systemdRunning() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}

// Where no systemd runs (CI here: PID 1 is not systemd), every service
// action fails with one line that says so and points to the README, and
// nothing is written.
func TestServiceWithoutServiceManager(t *testing.T) {
	if systemdRunning() {
		t.Skip("systemd runs here; see TestServiceInstallForReal")
	}
	klockd := harness.Klockd(t)
	for _, args := range [][]string{
		{"install", "--socket", "/srv/klock/k.sock", "--fsync", "always"},
		{"uninstall"}, {"start"}, {"stop"}, {"restart"}, {"status"},
	} {
		stdout, stderr, code := sdRun(t, klockd, args...)
		msg := strings.TrimSpace(stderr)
		if code == 0 || strings.Contains(msg, "\n") || !strings.Contains(msg, "no service manager") ||
			!strings.Contains(msg, "systemd/README.md") {
			t.Errorf("klockd %s: exit %d, stderr %q; want one line saying there is no service manager", args[0], code, stderr)
		}
		if args[0] == "status" && !strings.Contains(stdout, "socket: ") {
			t.Errorf("klockd status printed %q; want the socket it would serve", stdout)
		}
	}
	unit := "/etc/systemd/system/klockd.service"
	if os.Geteuid() != 0 {
		home, _ := os.UserHomeDir()
		unit = filepath.Join(home, ".config/systemd/user/klockd.service")
	}
	if _, err := os.Stat(unit); err == nil {
		t.Errorf("%s exists after installs that failed", unit)
	}
}

// install --dry-run prints the unit install would write: ExecStart runs
// this klockd with "run" and the flags given (plus the service's socket and
// state directory when not given), and systemd-analyze accepts it.
func TestServiceInstallDryRunUnit(t *testing.T) {
	klockd := harness.Klockd(t)
	stdout, stderr, code := sdRun(t, klockd, "install", "--dry-run",
		"--socket", "/srv/klock/agents.sock", "--fsync", "always", "--max-leases", "100", "--log-format=json")
	if code != 0 {
		t.Fatalf("klockd install --dry-run: exit %d: %s", code, stderr)
	}
	stateDir, user := "/var/lib/klock", os.Geteuid() != 0
	if user {
		stateDir = "%S/klock"
	}
	want := "ExecStart=" + klockd + " run --socket /srv/klock/agents.sock --state-dir " + stateDir +
		" --fsync always --log-format json --max-leases 100\n"
	if !strings.Contains(stdout, "\n"+want) {
		t.Fatalf("dry-run unit lacks %q:\n%s", want, stdout)
	}
	for _, line := range []string{"Type=notify\n", "ProtectSystem=strict\n", "RuntimeDirectory=klock\n", "StateDirectory=klock\n"} {
		if !user && !strings.Contains(stdout, "\n"+line) {
			t.Errorf("dry-run unit lacks %q", line)
		}
	}
	tool := sdRequireTool(t, "systemd-analyze")
	path := filepath.Join(t.TempDir(), "klockd.service")
	if err := os.WriteFile(path, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := sdAnalyze(t, tool, user, "verify", path); out != "" {
		t.Errorf("systemd-analyze verify of the dry-run unit reported:\n%s", out)
	}
}

// With systemd running, install/start/status/stop/uninstall for real. It
// changes the machine's services (and as root creates the klock account),
// so it runs only when asked: KLOCK_TEST_SERVICE=1.
func TestServiceInstallForReal(t *testing.T) {
	if !systemdRunning() {
		t.Skip("no systemd here; TestServiceWithoutServiceManager covers this machine")
	}
	if os.Getenv("KLOCK_TEST_SERVICE") != "1" {
		t.Skip("installs a real klockd service; set KLOCK_TEST_SERVICE=1 to run")
	}
	klockd := harness.Klockd(t)
	// The default socket: the service's own directory, which its account
	// (klock for a system service) can write.
	socket := "/run/klock/klockd.sock"
	if os.Geteuid() != 0 {
		socket = filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "klock", "klockd.sock")
	} else {
		// The system unit has a private /tmp, where the built binary is, and
		// runs as klock: install a copy it can see and execute.
		dir, err := os.MkdirTemp("/usr/local/lib", "klock-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		data, err := os.ReadFile(klockd)
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err == nil {
			klockd = filepath.Join(dir, "klockd")
			err = os.WriteFile(klockd, data, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, stderr, code := sdRun(t, klockd, "install", "--state-dir", ""); code != 0 {
		t.Fatalf("install: %s", stderr)
	}
	t.Cleanup(func() { sdRun(t, klockd, "uninstall") })
	if _, stderr, code := sdRun(t, klockd, "start"); code != 0 {
		t.Fatalf("start: %s", stderr)
	}
	waitFor(t, "the service to serve its socket", func() bool {
		c, err := net.Dial("unix", socket)
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = sdHelloPID(c)
		return err == nil
	})
	stdout, _, _ := sdRun(t, klockd, "status")
	if !strings.Contains(stdout, "running") || !strings.Contains(stdout, "socket: "+socket+" (accepting connections)") {
		t.Errorf("status while running printed:\n%s", stdout)
	}
	if _, stderr, code := sdRun(t, klockd, "stop"); code != 0 {
		t.Fatalf("stop: %s", stderr)
	}
	if _, stderr, code := sdRun(t, klockd, "uninstall"); code != 0 {
		t.Fatalf("uninstall: %s", stderr)
	}
	if stdout, _, _ := sdRun(t, klockd, "status"); !strings.Contains(stdout, "not installed") {
		t.Errorf("status after uninstall printed:\n%s", stdout)
	}
}
