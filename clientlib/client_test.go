package clientlib

import (
	"context"
	"errors"
	"fmt"
	"io"
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

	"go.uber.org/goleak"

	"github.com/klockd/klock/protocol"
)

// AtTestExit are run once every test has run; the examples (package
// clientlib_test) add the removal of the klockd binary they built.
var AtTestExit []func()

func TestMain(m *testing.M) {
	// goleak's Cleanup replaces its os.Exit, so it exits itself.
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		for _, f := range AtTestExit {
			f()
		}
		os.Exit(code)
	}))
}

func dialFake(t *testing.T, f *fakeDaemon, opts Options) *Client {
	t.Helper()
	opts.Socket = f.path
	c, err := Dial(context.Background(), opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pendingCount returns how many calls wait for an answer.
func (c *Client) pendingCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

func TestPipeliningManyGoroutines(t *testing.T) {
	f := newFakeDaemon(t)
	f.answerConcurrently()
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	const goroutines, calls = 100, 50
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				session := strings.Repeat("s", 1+(g*calls+i)%200)
				n, err := c.EndSession(ctx, "agent", session)
				if err != nil {
					errs <- err
					return
				}
				if n != len(session) {
					errs <- fmt.Errorf("EndSession(%d-byte session) = %d; want the answer to its own request", len(session), n)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := f.count(protocol.OpEndSession); got != goroutines*calls {
		t.Errorf("daemon saw %d requests; want %d", got, goroutines*calls)
	}
	if n := c.pendingCount(); n != 0 {
		t.Errorf("%d calls still pending after all returned", n)
	}
}

func TestCancelWhileReading(t *testing.T) {
	_, c, held := blockingFake(t, Options{})

	// The only call in flight reads the socket itself; cancelling it must
	// interrupt that read.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.EndSession(ctx, "a", "block-1")
		done <- err
	}()
	late := <-held
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled EndSession = %v; want context.Canceled", err)
	}
	late() // the abandoned answer arrives and is dropped
	n, err := c.EndSession(testCtx(t), "a", "abc")
	if err != nil || n != 3 {
		t.Fatalf("EndSession after a cancelled call = %d, %v; want 3, nil", n, err)
	}
	if n := c.pendingCount(); n != 0 {
		t.Errorf("%d calls pending; want 0", n)
	}
}

func TestCancelHandsReaderRoleOver(t *testing.T) {
	_, c, held := blockingFake(t, Options{})

	ctx1, cancel1 := context.WithCancel(context.Background())
	err1 := make(chan error, 1)
	go func() {
		_, err := c.EndSession(ctx1, "a", "block-1")
		err1 <- err
	}()
	reply1 := <-held
	type answer struct {
		n   int
		err error
	}
	ans2 := make(chan answer, 1)
	go func() {
		n, err := c.EndSession(testCtx(t), "a", "block-22")
		ans2 <- answer{n, err}
	}()
	reply2 := <-held
	cancel1()
	if err := <-err1; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled EndSession = %v; want context.Canceled", err)
	}
	reply2()
	if a := <-ans2; a.err != nil || a.n != len("block-22") {
		t.Fatalf("second EndSession = %d, %v; want %d, nil", a.n, a.err, len("block-22"))
	}
	reply1()
}

func TestDeadlineWhileQueued(t *testing.T) {
	_, c, held := blockingFake(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.EndSession(ctx, "a", fmt.Sprintf("block-%d", i))
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("EndSession past its deadline = %v; want context.DeadlineExceeded", err)
			}
		}()
	}
	wg.Wait()
	for range 5 {
		(<-held)()
	}
	if _, err := c.Hello(testCtx(t)); err != nil {
		t.Fatalf("Hello after expired calls: %v", err)
	}
}

func TestCloseFailsCallsInFlight(t *testing.T) {
	_, c, held := blockingFake(t, Options{})
	done := make(chan error, 1)
	go func() {
		_, err := c.EndSession(testCtx(t), "a", "block")
		done <- err
	}()
	<-held
	c.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("EndSession in flight during Close = %v; want ErrClosed", err)
	}
	if _, err := c.Hello(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Hello after Close = %v; want ErrClosed", err)
	}
}

func TestDialUnreachable(t *testing.T) {
	sock := t.TempDir() + "/nothing.sock"
	_, err := Dial(context.Background(), Options{Socket: sock})
	if !errors.Is(err, ErrDaemonUnreachable) {
		t.Fatalf("Dial(%q) = %v; want ErrDaemonUnreachable", sock, err)
	}
	msg := err.Error()
	for _, want := range []string{sock, "klockd", "go run ./cmd/klockd"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Dial error %q does not mention %q", msg, want)
		}
	}
}

func TestDialPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may connect to any socket")
	}
	f := newFakeDaemon(t)
	if err := os.Chmod(f.path, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Dial(context.Background(), Options{Socket: f.path})
	if !errors.Is(err, ErrDaemonUnreachable) || !errors.Is(err, os.ErrPermission) {
		t.Fatalf("Dial of a mode-000 socket = %v; want ErrDaemonUnreachable and os.ErrPermission", err)
	}
	if !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Dial error %q does not say permission denied", err)
	}
}

func TestAutostartDisabled(t *testing.T) {
	for _, tc := range []struct {
		no, disable string
		want        bool
	}{
		{"", "", false}, {"0", "", false}, {"false", "no", false}, {" off ", "", false},
		{"1", "", true}, {"", "1", true}, {"yes", "", true}, {"", "TRUE", true},
	} {
		env := map[string]string{EnvNoAutostart: tc.no, EnvDisableAutostart: tc.disable}
		if got := AutostartDisabled(func(k string) string { return env[k] }); got != tc.want {
			t.Errorf("AutostartDisabled(%s=%q, %s=%q) = %v; want %v", EnvNoAutostart, tc.no, EnvDisableAutostart, tc.disable, got, tc.want)
		}
	}
}

// TestNamedSocketNeverAutostarts: a socket named by Options.Socket or
// $KLOCK_SOCKET that nothing answers is an error at once, even with a
// klockd on PATH to start.
func TestNamedSocketNeverAutostarts(t *testing.T) {
	bin := t.TempDir()
	marker := filepath.Join(bin, "started")
	if err := os.WriteFile(filepath.Join(bin, "klockd"), []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	missing := filepath.Join(t.TempDir(), "none.sock")
	var stderr strings.Builder
	if _, err := Dial(testCtx(t), Options{Socket: missing, Stderr: &stderr}); !errors.Is(err, ErrDaemonUnreachable) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Dial(Socket: %s) = %v; want ErrDaemonUnreachable naming it", missing, err)
	}
	t.Setenv("KLOCK_SOCKET", missing)
	if _, err := Dial(testCtx(t), Options{Stderr: &stderr}); !errors.Is(err, ErrDaemonUnreachable) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Dial with KLOCK_SOCKET=%s = %v; want ErrDaemonUnreachable naming it", missing, err)
	}
	if _, err := os.Stat(marker); err == nil || stderr.Len() > 0 {
		t.Fatalf("a named socket started klockd (stderr %q)", stderr.String())
	}
}

func TestRemoteErrors(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	_, err := c.AcquireLease(testCtx(t), "ghost", "s", "FILE", "/a", "MUTATES", time.Second)
	var e *Error
	if !errors.As(err, &e) || e.Code != protocol.CodeUnknownAgent {
		t.Fatalf("AcquireLease for an unregistered agent = %v; want *Error UNKNOWN_AGENT", err)
	}
	if !errors.Is(err, ErrUnknownAgent) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrClosed) {
		t.Errorf("errors.Is(%v) matches the wrong sentinels", err)
	}
	if strings.Count(err.Error(), "klock:") != 1 {
		t.Errorf("error %q should carry one klock: prefix", err)
	}
}

func TestClosedErrorFlavours(t *testing.T) {
	op := func(err error) error { return &net.OpError{Op: "read", Net: "unix", Err: err} }
	for _, err := range []error{
		io.EOF, io.ErrUnexpectedEOF, op(net.ErrClosed), op(os.NewSyscallError("write", syscall.EPIPE)),
		op(os.NewSyscallError("read", syscall.ECONNRESET)), ErrClosed,
	} {
		if got := closedErr(err); got != ErrClosed {
			t.Errorf("closedErr(%v) = %v; want ErrClosed", err, got)
		}
	}
	other := errors.New("klock: malformed response: no id")
	if got := closedErr(other); !errors.Is(got, ErrClosed) || !strings.Contains(got.Error(), "malformed") {
		t.Errorf("closedErr(%v) = %v; want it to match ErrClosed and keep its cause", other, got)
	}
}

// TestNoDaemonDependency enforces that clientlib never imports daemon/...
// (STYLE.md rule 5): of this module, it may depend only on protocol and on
// what protocol itself depends on (internal/msgpackwire).
func TestNoDaemonDependency(t *testing.T) {
	deps := func(pkg string) []string {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return strings.Fields(string(out))
	}
	allowed := map[string]bool{"github.com/klockd/klock/clientlib": true}
	for _, pkg := range deps("github.com/klockd/klock/protocol") {
		allowed[pkg] = true
	}
	for _, pkg := range deps(".") {
		if strings.HasPrefix(pkg, "github.com/klockd/klock/") && (!allowed[pkg] || strings.HasPrefix(pkg, "github.com/klockd/klock/daemon")) {
			t.Errorf("clientlib depends on %s; it may import only protocol (and what protocol imports)", pkg)
		}
	}
}

func TestDialErrorMessages(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		want  []string
	}{
		{syscall.ENOENT, []string{"/s/klockd.sock", "no such file", "`klockd`", "go run ./cmd/klockd", "KLOCK_SOCKET"}},
		{syscall.ECONNREFUSED, []string{"/s/klockd.sock", "connection refused", "`klockd`"}},
		{syscall.EACCES, []string{"/s/klockd.sock", "permission denied", "group"}},
	} {
		err := error(&DialError{Socket: "/s/klockd.sock", Err: &net.OpError{
			Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", tc.errno)}})
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("DialError(%v) = %q; want it to mention %q", tc.errno, err, w)
			}
		}
		if !errors.Is(err, ErrDaemonUnreachable) || !errors.Is(err, tc.errno) {
			t.Errorf("DialError(%v) does not match ErrDaemonUnreachable and its cause", tc.errno)
		}
	}
}

// TestLargePipelinedVolume sends and receives megabytes in flight at once
// on one connection to a daemon that answers in its read loop (so it stops
// reading while its writes are blocked): the client must keep reading while
// it writes, or both sides would wait for each other forever.
func TestLargePipelinedVolume(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for g := range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 {
				prefix := fmt.Sprintf("%d/%d/", g, i) + strings.Repeat("p", 4<<10) // within resource_prefix's 4128 bytes
				leases, _, err := c.ListLeases(ctx, LeaseFilter{Prefix: prefix})
				if err != nil || len(leases) != 1 || leases[0].Resource != prefix {
					t.Errorf("ListLeases = %d leases, %v; want its own prefix echoed", len(leases), err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestOversizeRequestRefusedLocally: the client learns the daemon's
// max_frame from hello and refuses a larger request itself, instead of
// sending a frame the daemon would answer by closing the connection.
func TestOversizeRequestRefusedLocally(t *testing.T) {
	f := newFakeDaemon(t)
	f.mu.Lock()
	f.maxFrame = 1000
	f.mu.Unlock()
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.ListLeases(ctx, LeaseFilter{Prefix: strings.Repeat("p", 2000)})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "max_frame is 1000") {
		t.Fatalf("ListLeases with a 2000-byte prefix = %v; want INVALID_ARGUMENT naming max_frame", err)
	}
	if n, err := c.EndSession(ctx, "a", "ok"); err != nil || n != 2 {
		t.Fatalf("EndSession after = %d, %v; want the connection still serving", n, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.conns) != 1 {
		t.Errorf("%d connections; want the first one kept", len(f.conns))
	}
}

// TestArgumentLimitsCheckedLocally: an argument over its limit is refused
// before anything is sent, naming the argument and its limit (the frame
// limit would otherwise be what a 1 MB path reports).
func TestArgumentLimitsCheckedLocally(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	big := "/" + strings.Repeat("p", 1<<20)
	for _, tc := range []struct {
		call func() error
		want string
	}{
		{func() error {
			_, err := c.AcquireLease(ctx, "a", "s", "SYMBOL", big, "MUTATES", time.Minute)
			return err
		},
			"klock: resource_path is 1048577 bytes; at most 4096 are allowed"},
		{func() error {
			_, err := c.AcquireLease(ctx, strings.Repeat("a", 300), "s", "FILE", "/x", "MUTATES", time.Minute)
			return err
		},
			"klock: agent_id is 300 bytes; at most 256 are allowed"},
		{func() error { _, err := c.ReleaseLease(ctx, "id\x00"); return err },
			"klock: lease_id contains control character 0x00 at byte 2; control characters are not allowed"},
		{func() error {
			_, err := c.AcquireMany(ctx, AcquireRequest{AgentID: "a", SessionID: "s", TTL: time.Second,
				Intents: []Intent{{ResourceType: "SYMBOL", ResourcePath: "ok", Predicate: "MUTATES"},
					{ResourceType: "SYMBOL", ResourcePath: "bad\u0085", Predicate: "MUTATES"}}})
			return err
		}, "klock: intents[1].resource_path contains control character U+0085; control characters are not allowed"},
	} {
		err := tc.call()
		var e *Error
		if !errors.As(err, &e) || e.Code != protocol.CodeInvalidArgument || e.Message != tc.want {
			t.Errorf("err = %v; want INVALID_ARGUMENT %q", err, tc.want)
		}
	}
	if n := f.count(protocol.OpAcquire) + f.count(protocol.OpAcquireMany) + f.count(protocol.OpRelease); n != 0 {
		t.Errorf("the daemon received %d of those requests; want none sent", n)
	}
}

// TestOneCallerReadsItsOwnAnswers: with one call in flight at a time, every
// answer is read by the goroutine that asked (no hand-off to another
// goroutine) and the client starts no goroutine of its own.
func TestOneCallerReadsItsOwnAnswers(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	goroutines := runtime.NumGoroutine()
	before, oneStep := c.handoffs.Load(), c.oneStep.Load()
	for i := range 1000 {
		if n, err := c.EndSession(ctx, "a", strings.Repeat("s", 1+i%100)); err != nil || n != 1+i%100 {
			t.Fatalf("EndSession = %d, %v", n, err)
		}
	}
	if h := c.handoffs.Load() - before; h != 0 {
		t.Errorf("%d answers were handed to another goroutine; want 0 with one call in flight", h)
	}
	// Each was written and its answer awaited in one step, without a
	// read that finds nothing yet.
	if n := c.oneStep.Load() - oneStep; n != 1000 {
		t.Errorf("%d of 1000 sequential calls were written and read in one step; want all", n)
	}
	if g := runtime.NumGoroutine(); g > goroutines {
		t.Errorf("%d goroutines after 1000 sequential calls, %d before; want none started", g, goroutines)
	}
}

// TestOneStepSendLargerThanTheSocket: a call alone in flight writes its
// request and waits for the answer in one step; a request larger than the
// socket's buffer cannot be written at once, and the rest must still be
// sent (the ordinary way) and the answer read, on a connection that then
// keeps serving.
func TestOneStepSendLargerThanTheSocket(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	args := &protocol.Args{AgentID: "a", SessionID: "s", Intents: make([]protocol.Intent, protocol.MaxIntents)}
	args.Set(protocol.ArgAgentID | protocol.ArgSessionID | protocol.ArgIntents)
	for i := range args.Intents {
		path := fmt.Sprintf("/%d/", i) + strings.Repeat("p", protocol.MaxPathLen-16)
		args.Intents[i] = protocol.Intent{ResourceType: "NAME", ResourcePath: path, Predicate: "MUTATES", ClientPath: path}
	}
	for i := range 3 {
		oneStep := c.oneStep.Load()
		err := c.do(ctx, "big_op", args, nil)
		if !errors.Is(err, ErrUnknownOp) {
			t.Fatalf("call %d with a %d-intent request = %v; want the fake's UNKNOWN_OP answer", i, len(args.Intents), err)
		}
		if c.oneStep.Load() == oneStep {
			t.Fatalf("call %d was not sent in one step", i)
		}
		if n, err := c.EndSession(ctx, "a", "after"); err != nil || n != len("after") {
			t.Fatalf("EndSession after call %d = %d, %v; want the connection still serving", i, n, err)
		}
	}
}
