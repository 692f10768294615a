package clientlib

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

func TestNoReconnect(t *testing.T) {
	f, c, held := blockingFake(t, Options{NoReconnect: true})
	done := make(chan error, 1)
	go func() {
		_, err := c.EndSession(testCtx(t), "a", "block")
		done <- err
	}()
	<-held
	f.stop()
	if err := <-done; err != ErrClosed {
		t.Fatalf("EndSession when the daemon went away = %v; want ErrClosed", err)
	}
	if _, err := c.Hello(testCtx(t)); err != ErrClosed {
		t.Fatalf("Hello after the connection broke = %v; want ErrClosed", err)
	}
}

func TestReconnectResendsInFlight(t *testing.T) {
	f, c, held := blockingFake(t, Options{ClientName: "reconnect-test"})
	ctx := testCtx(t)
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			session := fmt.Sprintf("block-%03d", i)
			got, err := c.EndSession(ctx, "a", session)
			if err != nil || got != len(session) {
				t.Errorf("EndSession across a restart = %d, %v; want %d, nil", got, err, len(session))
			}
		}()
	}
	for range n {
		<-held // every request reached the first daemon, none answered
	}
	f.setHook(nil)
	f.restart()
	wg.Wait()
	if got := f.count(protocol.OpEndSession); got != 2*n {
		t.Errorf("daemon saw %d end_session requests; want %d (each sent, then resent once)", got, 2*n)
	}
	// The connection is usable afterwards and was announced again.
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.count(protocol.OpHello); got < 3 {
		t.Errorf("daemon saw %d hellos; want one per connection plus ours", got)
	}
}

func TestReconnectAfterIdleBreak(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	f.restart()
	// The first call may be written to the dead socket; it must be resent.
	for i := range 3 {
		if _, err := c.Hello(ctx); err != nil {
			t.Fatalf("Hello %d after a restart: %v", i, err)
		}
	}
}

// TestReconnectUnderLoad restarts the daemon ten times while 32 goroutines
// keep calling: every call returns its own answer and no error.
func TestReconnectUnderLoad(t *testing.T) {
	f := newFakeDaemon(t)
	f.answerConcurrently()
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls sync.Map
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for i := 0; ; i++ {
				select {
				case <-stop:
					calls.Store(g, n)
					return
				default:
				}
				session := strings.Repeat("x", 1+(g+i)%50)
				got, err := c.EndSession(ctx, "a", session)
				if err != nil || got != len(session) {
					t.Errorf("EndSession = %d, %v; want %d, nil", got, err, len(session))
					return
				}
				n++
			}
		}()
	}
	for range 10 {
		f.waitForEndSessions("traffic", 100)
		f.restart()
	}
	f.waitForEndSessions("traffic after the last restart", 100)
	close(stop)
	wg.Wait()
	if n := c.pendingCount(); n != 0 {
		t.Errorf("%d calls pending after all returned", n)
	}
}

// TestShuttingDownIsResent: a request refused with SHUTTING_DOWN by a
// stopping daemon is resent to the next one instead of failing.
func TestShuttingDownIsResent(t *testing.T) {
	f := newFakeDaemon(t)
	refused := make(chan struct{}, 1)
	f.setHook(func(req *protocol.Request, reply func(any, *protocol.Error)) bool {
		if req.Op != protocol.OpActiveLeaseCount {
			return false
		}
		reply(nil, protocol.Errorf(protocol.CodeShuttingDown, "klock: daemon is shutting down"))
		refused <- struct{}{}
		return true
	})
	c := dialFake(t, f, Options{})
	done := make(chan error, 1)
	go func() {
		_, err := c.ActiveLeaseCount(testCtx(t))
		done <- err
	}()
	<-refused
	f.setHook(nil)
	f.restart()
	if err := <-done; err != nil {
		t.Fatalf("ActiveLeaseCount across a shutdown = %v; want it resent and answered", err)
	}
}

// TestChaos mixes everything at once: 32 goroutines calling with contexts
// cancelled at random points, answers out of order, and daemon restarts.
// Every call must return its own answer or its context's error, and the
// client must end with nothing pending.
func TestChaos(t *testing.T) {
	f := newFakeDaemon(t)
	f.answerConcurrently()
	c := dialFake(t, f, Options{})
	ctx := testCtx(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithCancel(ctx)
				if (g+i)%3 == 0 {
					go cancel() // races with the call
				}
				session := strings.Repeat("c", 1+(g*7+i)%60)
				n, err := c.EndSession(cctx, "a", session)
				cancel()
				switch {
				case errors.Is(err, context.Canceled):
				case err != nil || n != len(session):
					t.Errorf("EndSession = %d, %v; want %d or context.Canceled", n, err, len(session))
					return
				}
			}
		}()
	}
	for range 10 {
		f.waitForEndSessions("traffic", 1000)
		f.restart()
	}
	close(stop)
	wg.Wait()
	if n := c.pendingCount(); n != 0 {
		t.Errorf("%d calls pending after all returned", n)
	}
	if n, err := c.EndSession(ctx, "a", "end"); err != nil || n != 3 {
		t.Errorf("EndSession after the chaos = %d, %v", n, err)
	}
}

// TestGaveUpWhileDaemonDown: a call whose context ends while the daemon is
// gone says both: the context's error and that the daemon is unreachable.
func TestGaveUpWhileDaemonDown(t *testing.T) {
	f := newFakeDaemon(t)
	c := dialFake(t, f, Options{})
	f.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Hello(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrDaemonUnreachable) || !strings.Contains(err.Error(), f.path) {
		t.Fatalf("Hello with the daemon gone = %v; want DeadlineExceeded and ErrDaemonUnreachable naming the socket", err)
	}
	t.Log(err)
}

// TestRefusedConnection: a daemon that refuses the connection (id-0
// RESOURCE_EXHAUSTED, then close) is reported as such, with and without
// reconnecting.
func TestRefusedConnection(t *testing.T) {
	f := newFakeDaemon(t)
	f.mu.Lock()
	f.refuse = true
	f.mu.Unlock()

	c := dialFake(t, f, Options{NoReconnect: true})
	_, err := c.Hello(testCtx(t))
	if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrResourceExhausted) || !strings.Contains(err.Error(), "too many connections") {
		t.Errorf("Hello on a refused connection = %v; want ErrClosed and RESOURCE_EXHAUSTED saying why", err)
	}

	// The deadline must leave room for at least one refused dial, which
	// under -race on a loaded machine has taken longer than 300 ms.
	c = dialFake(t, f, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = c.Hello(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrResourceExhausted) {
		t.Errorf("Hello while every connection is refused = %v; want DeadlineExceeded and RESOURCE_EXHAUSTED", err)
	}
	t.Log(err)
}

// TestRefusalOutlivesAnUnansweredConnection: a connection made after a
// refused one does not hide the refusal until it answers: a call whose
// context ends while the new connection is still silent reports
// RESOURCE_EXHAUSTED with the deadline, not the deadline alone.
func TestRefusalOutlivesAnUnansweredConnection(t *testing.T) {
	f := newFakeDaemon(t)
	f.mu.Lock()
	f.refuseN = 1
	f.mu.Unlock()
	f.setHook(func(*protocol.Request, func(any, *protocol.Error)) bool { return true }) // never answers
	c := dialFake(t, f, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.Hello(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrResourceExhausted) {
		t.Errorf("Hello on a silent connection after a refused one = %v; want DeadlineExceeded and RESOURCE_EXHAUSTED", err)
	}
}
