package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// StartTimeout bounds how long Start waits for a daemon to answer hello,
// and Stop for it to exit.
const StartTimeout = 15 * time.Second

var (
	buildOnce    sync.Once
	buildDir     string
	buildErr     error
	klockdOnce   sync.Once
	klockdErr    error
	klockctlOnce sync.Once
	klockctlErr  error
	hooksOnce    sync.Once
	hooksErr     error
	holderOnce   sync.Once
	holderErr    error
)

// repoRoot is the module root, found from this file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// build compiles ./cmd/<name> into the shared binary directory, as out
// (name when ""), with the given build tags.
func build(name, out string, tags ...string) error {
	if out == "" {
		out = name
	}
	return buildPackage("./cmd/"+name, out, tags...)
}

// buildPackage compiles the main package pkg (a path from the module root)
// into the shared binary directory as out.
func buildPackage(pkg, out string, tags ...string) error {
	buildOnce.Do(func() { buildDir, buildErr = os.MkdirTemp("", "klock-bin-") })
	if buildErr != nil {
		return buildErr
	}
	args := []string{"build", "-o", filepath.Join(buildDir, out)}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// BoundHolder builds the test helper ./tests/harness/boundholder once per
// test process and returns its path: a process that takes a lease bound
// to itself through clientlib and then exits, waits or reconnects (see its
// -help).
func BoundHolder(tb testing.TB) string {
	tb.Helper()
	holderOnce.Do(func() { holderErr = buildPackage("./tests/harness/boundholder", "boundholder") })
	if holderErr != nil {
		tb.Fatalf("harness: %v", holderErr)
	}
	return filepath.Join(buildDir, "boundholder")
}

// RemoveBinaries deletes the directory the binaries were built into. Call it
// from TestMain once every test has run.
func RemoveBinaries() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Klockd builds ./cmd/klockd once per test process and returns its path.
func Klockd(tb testing.TB) string {
	tb.Helper()
	klockdOnce.Do(func() { klockdErr = build("klockd", "") })
	if klockdErr != nil {
		tb.Fatalf("harness: %v", klockdErr)
	}
	return filepath.Join(buildDir, "klockd")
}

// KlockdTestHooks builds ./cmd/klockd with the klockd_testhooks build tag
// once per test process and returns its path: a daemon that obeys the
// test-only fault hooks (KLOCKD_TEST_PANIC, see daemon/server).
func KlockdTestHooks(tb testing.TB) string {
	tb.Helper()
	hooksOnce.Do(func() { hooksErr = build("klockd", "klockd-testhooks", "klockd_testhooks") })
	if hooksErr != nil {
		tb.Fatalf("harness: %v", hooksErr)
	}
	return filepath.Join(buildDir, "klockd-testhooks")
}

// Binaries builds ./cmd/klockd and ./cmd/klockctl once per test process
// (into a temporary directory) and returns their paths.
func Binaries(tb testing.TB) (klockd, klockctl string) {
	tb.Helper()
	klockd = Klockd(tb)
	klockctlOnce.Do(func() { klockctlErr = build("klockctl", "") })
	if klockctlErr != nil {
		tb.Fatalf("harness: %v", klockctlErr)
	}
	return klockd, filepath.Join(buildDir, "klockctl")
}

// Options say how to start a daemon.
type Options struct {
	Args     []string // extra klockd flags
	Env      []string // extra environment, "KEY=value"; KLOCK_* from the test's own environment are dropped
	StateDir string   // "" = a new temporary directory; "none" = --state-dir '' (in memory)
	Socket   string   // "" = a socket in a new short temporary directory
	// TestHooks runs the klockd built with the test-only fault hooks
	// (KlockdTestHooks), which Env then sets.
	TestHooks bool
	// Wrap runs klockd under this command (e.g. unshare(1) to start it in
	// its own pid namespace), with klockd's path and arguments appended.
	// Signals then go to the wrapper.
	Wrap []string
	// Cluster starts klockd in cluster mode on these etcd settings. Left
	// nil, Start still runs cluster mode when KLOCK_TEST_ETCD is set (see
	// ClusterMode), each daemon on its own prefix of one shared etcd.
	Cluster *ClusterOptions
}

// ClusterOptions say how a klockd joins a cluster.
type ClusterOptions struct {
	Etcd   string // etcd client URLs, comma-separated (--etcd)
	Prefix string // --etcd-prefix
	NodeID string // --node-id
	// SessionTTL is --etcd-session-ttl; "" = 2s, so that tests see a
	// killed node's parked acquires dropped soon.
	SessionTTL string
}

// Daemon is a running (or stopped) klockd.
type Daemon struct {
	Socket   string
	StateDir string // "" when in memory
	Cmd      *exec.Cmd
	Stderr   *Buffer // everything klockd wrote to stderr (its logs), across restarts

	opts Options
	mu   sync.Mutex
	done chan struct{} // closed when the current process has exited
	err  error         // its Wait error, once done
}

// Start builds klockd if needed, starts it and waits until it answers
// hello on its socket. The daemon is stopped (SIGTERM, then SIGKILL) when
// the test ends.
func Start(tb testing.TB, opts Options) *Daemon {
	tb.Helper()
	d := &Daemon{opts: opts, Stderr: &Buffer{}}
	if opts.Socket == "" {
		// Socket paths are limited to 108 bytes, so the directory is short
		// rather than t.TempDir(), whose name holds the test's name.
		dir, err := os.MkdirTemp("", "klk")
		if err != nil {
			tb.Fatalf("harness: %v", err)
		}
		tb.Cleanup(func() { os.RemoveAll(dir) })
		d.Socket = filepath.Join(dir, "klockd.sock")
	} else {
		d.Socket = opts.Socket
	}
	switch opts.StateDir {
	case "":
		d.StateDir = tb.TempDir()
	case "none":
	default:
		d.StateDir = opts.StateDir
	}
	if opts.Cluster == nil && ClusterMode() {
		d.opts.Cluster = sharedCluster(tb)
	}
	tb.Cleanup(func() { d.cleanup(tb) })
	d.start(tb)
	return d
}

// start starts the process and waits for hello.
func (d *Daemon) start(tb testing.TB) {
	tb.Helper()
	bin := Klockd(tb)
	if d.opts.TestHooks {
		bin = KlockdTestHooks(tb)
	}
	args := []string{"run", "--socket", d.Socket, "--state-dir", d.StateDir}
	if co := d.opts.Cluster; co != nil {
		ttl := co.SessionTTL
		if ttl == "" {
			ttl = "2s"
		}
		args = append(args, "--etcd", co.Etcd, "--etcd-prefix", co.Prefix, "--node-id", co.NodeID, "--etcd-session-ttl", ttl)
	}
	args = append(args, d.opts.Args...)
	if len(d.opts.Wrap) > 0 {
		args = append(append(d.opts.Wrap[1:len(d.opts.Wrap):len(d.opts.Wrap)], bin), args...)
		bin = d.opts.Wrap[0]
	}
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KLOCK_") && !strings.HasPrefix(kv, "LISTEN_") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, d.opts.Env...)
	cmd.Stdout = d.Stderr
	cmd.Stderr = d.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("harness: start klockd: %v", err)
	}
	done := make(chan struct{})
	d.mu.Lock()
	d.Cmd, d.done, d.err = cmd, done, nil
	d.mu.Unlock()
	go func() {
		err := cmd.Wait()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(done)
	}()

	deadline := time.Now().Add(StartTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if lastErr = hello(d.Socket, time.Second); lastErr == nil {
			return
		}
		select {
		case <-done:
			tb.Fatalf("harness: klockd exited before answering hello (%v); logs:\n%s", d.exitErr(), d.Logs())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("harness: klockd did not answer hello on %s within %s (last: %v); logs:\n%s", d.Socket, StartTimeout, lastErr, d.Logs())
		}
	}
}

// hello dials socket and exchanges one hello.
func hello(socket string, timeout time.Duration) error {
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	frame, err := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
	if err != nil {
		return err
	}
	if _, err := c.Write(frame); err != nil {
		return err
	}
	body, err := protocol.ReadFrame(c, nil, protocol.DefaultMaxFrame)
	if err != nil {
		return err
	}
	var resp protocol.Response
	if err := protocol.DecodeResponse(body, &resp); err != nil {
		return err
	}
	if !resp.OK {
		return fmt.Errorf("hello answered %s: %s", resp.Error.Code, resp.Error.Message)
	}
	return nil
}

func (d *Daemon) exitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// ExitCode waits up to StartTimeout for the current klockd process to exit
// on its own and returns its exit code (-1 when a signal ended it); it
// fails the test if the process is still running.
func (d *Daemon) ExitCode(tb testing.TB) int {
	tb.Helper()
	select {
	case <-d.Done():
	case <-time.After(StartTimeout):
		tb.Fatalf("harness: klockd did not exit within %s; logs:\n%s", StartTimeout, d.Logs())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.Cmd.ProcessState.ExitCode()
}

// Running reports whether the current klockd process has not exited.
func (d *Daemon) Running() bool {
	d.mu.Lock()
	done := d.done
	d.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Done returns a channel closed when the current process exits.
func (d *Daemon) Done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done
}

// signal sends sig and waits up to StartTimeout for the exit; it returns
// the process's Wait error, or an error if it did not exit.
func (d *Daemon) signal(sig os.Signal) error {
	d.mu.Lock()
	cmd, done := d.Cmd, d.done
	d.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return d.exitErr()
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-done:
		return d.exitErr()
	case <-time.After(StartTimeout):
		return fmt.Errorf("klockd did not exit within %s of %v", StartTimeout, sig)
	}
}

// Stop sends SIGTERM, waits for klockd to exit and fails the test unless
// it exited with code 0.
func (d *Daemon) Stop(tb testing.TB) {
	tb.Helper()
	if err := d.signal(syscall.SIGTERM); err != nil {
		tb.Fatalf("harness: klockd stop: %v; logs:\n%s", err, d.Logs())
	}
}

// Kill sends SIGKILL and waits for klockd to exit.
func (d *Daemon) Kill(tb testing.TB) {
	tb.Helper()
	err := d.signal(syscall.SIGKILL)
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		tb.Fatalf("harness: klockd kill: %v", err)
	}
}

// Restart starts klockd again with the same options, socket and state
// directory; a daemon still running is stopped first (SIGTERM).
func (d *Daemon) Restart(tb testing.TB) {
	tb.Helper()
	if d.Running() {
		d.Stop(tb)
	}
	d.start(tb)
}

// cleanup stops a daemon still running when the test ends.
func (d *Daemon) cleanup(tb testing.TB) {
	if !d.Running() {
		return
	}
	if err := d.signal(syscall.SIGTERM); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			d.signal(syscall.SIGKILL)
		}
		tb.Logf("harness: klockd stop at cleanup: %v", err)
	}
}

// Client dials the daemon with the client library; the client is closed
// when the test ends.
func (d *Daemon) Client(tb testing.TB) *clientlib.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: d.Socket})
	if err != nil {
		tb.Fatalf("harness: dial %s: %v", d.Socket, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Logs returns everything klockd has written to stderr so far.
func (d *Daemon) Logs() string { return d.Stderr.String() }

// Buffer is a bytes.Buffer safe for one writer and concurrent readers.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns a copy of the contents.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
