package server

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// The reader waits without reading after a short read (conn.step); these
// tests check that it still sees every request, the peer's end, and its
// own connection's end. Where an edge must be behind the reader, the test
// sleeps (settle) while nothing waits for it, so that Go's poller takes it
// and the reader's RawConn.Read clears it; a client that reads answers
// also makes edges (a write-space wake-up of the daemon's socket reports
// EPOLLIN while requests are unread), so those tests read answers last.

// settle lets Go's poller take the socket events pending (it polls once
// every goroutine waits).
func settle() { time.Sleep(20 * time.Millisecond) }

// acceptPair accepts one end of a new socket pair on ts after pre (which
// may write to the client end, and shut it down) has run and its events
// have settled; it returns the client end, wrapped in a client.
func (ts *testServer) acceptPair(t *testing.T, pre func(*net.UnixConn)) *client {
	t.Helper()
	cl, sv := socketPair(t)
	t.Cleanup(func() { cl.Close() })
	if pre != nil {
		pre(cl)
	}
	settle()
	ts.accept(sv)
	return &client{t: t, nc: cl}
}

func request(t *testing.T, b []byte, id uint64, op string, a *protocol.Args) []byte {
	t.Helper()
	b, err := protocol.AppendRequest(b, id, op, a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectEOF reads the end of stream from c.
func expectEOF(t *testing.T, c *client) {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := protocol.ReadFrame(c.nc, nil, 1<<20); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last answer: %v; want EOF", err)
	}
}

// TestHalfClosedPeerGetsItsAnswerThenEOF: a client that sends a request
// and shuts down its writing side before the daemon reads gets the answer,
// then the end of stream: the daemon sees the end after the request.
func TestHalfClosedPeerGetsItsAnswerThenEOF(t *testing.T) {
	ts := start(t, Config{})
	ts.halfClosedHello(t)
}

// halfClosedHello accepts a connection whose peer sent a hello and shut
// down its writing side, and checks that the daemon ends it, having
// answered.
func (ts *testServer) halfClosedHello(t *testing.T) {
	t.Helper()
	open := ts.Connections()
	c := ts.acceptPair(t, func(cl *net.UnixConn) {
		if _, err := cl.Write(request(t, nil, 7, protocol.OpHello, nil)); err != nil {
			t.Fatal(err)
		}
		cl.CloseWrite()
	})
	// Before the answer is read, which would wake the reader (settle).
	waitFor(t, "the daemon to end the connection", func() bool { return ts.Connections() == open })
	if r := c.recv(); r.ID != 7 || !r.OK {
		t.Fatalf("answer %+v; want id 7, ok", r)
	}
	expectEOF(t, c)
}

// TestVanishedPeerEndsItsConnection: a client that sends an acquire that
// parks, then exits, before the daemon reads: the connection ends and the
// acquire is cancelled.
func TestVanishedPeerEndsItsConnection(t *testing.T) {
	ts := start(t, Config{})
	holder := ts.dial(t)
	register(holder, 1, "young", 10)
	register(holder, 2, "old", 1)
	holder.call(3, protocol.OpAcquire, acquireArgs("young", "/v", 60000, 0), &protocol.Grant{})
	ts.acceptPair(t, func(cl *net.UnixConn) {
		if _, err := cl.Write(request(t, nil, 1, protocol.OpAcquire, acquireArgs("old", "/v", 60000, 60000))); err != nil {
			t.Fatal(err)
		}
		cl.Close()
	})
	waitFor(t, "the vanished peer's connection to end", func() bool { return ts.Connections() == 1 })
	if n := ts.engineWaiters(); n != 0 {
		t.Fatalf("%d acquires parked after their connection ended; want 0", n)
	}
}

// TestBufferedBurstIsAnswered: a burst of requests larger than the read
// buffer, all in the socket before the first read, is answered in full:
// a read that fills the buffer is followed by another. The answers are
// read last, and are small beside the requests, so the daemon's writes
// never wait.
func TestBufferedBurstIsAnswered(t *testing.T) {
	ts := start(t, Config{})
	hello := &protocol.Args{Client: strings.Repeat("k", 1000)}
	hello.Set(protocol.ArgClient)
	var burst []byte
	n := uint64(0)
	for len(burst) < 3*readBufSize {
		n++
		burst = request(t, burst, n, protocol.OpHello, hello)
	}
	c := ts.acceptPair(t, func(cl *net.UnixConn) {
		if _, err := cl.Write(burst); err != nil {
			t.Fatal(err)
		}
	})
	waitFor(t, "every request of the burst to be answered", func() bool { return ts.opsTotal() == n })
	for id := uint64(1); id <= n; id++ {
		if r := c.recv(); r.ID != id || !r.OK {
			t.Fatalf("answer %+v; want id %d, ok", r, id)
		}
	}
}

// gateJournal holds every Wait until open is closed; waiting is closed at
// the first Wait.
type gateJournal struct {
	recordingJournal
	once    sync.Once
	waiting chan struct{}
	open    chan struct{}
}

func (j *gateJournal) Wait(uint64) error {
	j.once.Do(func() { close(j.waiting) })
	<-j.open
	return nil
}

// TestRequestWhileTheReaderIsBusy: a request that arrives while the reader
// is busy with the previous one (its answer waits for the journal) is
// read once that answer is sent, with no other event on the socket.
func TestRequestWhileTheReaderIsBusy(t *testing.T) {
	j := &gateJournal{waiting: make(chan struct{}), open: make(chan struct{})}
	ts := start(t, Config{Journal: j})
	c := ts.dial(t)
	reg := &protocol.Args{AgentID: "a"}
	reg.Set(protocol.ArgAgentID)
	c.send(1, protocol.OpRegisterAgent, reg)
	<-j.waiting
	c.send(2, protocol.OpHello, nil)
	settle()
	close(j.open)
	waitFor(t, "the second request to be answered", func() bool { return ts.opsTotal() == 2 })
	for id := uint64(1); id <= 2; id++ {
		if r := c.recv(); r.ID != id || !r.OK {
			t.Fatalf("answer %+v; want id %d, ok", r, id)
		}
	}
}

// TestRequestsWhileAnswering: requests written one by one while earlier
// ones are being answered, by a writer that does not wait for answers, and
// by several connections at once, are all answered.
func TestRequestsWhileAnswering(t *testing.T) {
	ts := start(t, Config{})
	const conns, perConn = 16, 500
	var wg sync.WaitGroup
	errc := make(chan error, 2*conns)
	for range conns {
		c := ts.dial(t)
		wg.Add(2)
		go func() {
			defer wg.Done()
			c.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
			for id := uint64(1); id <= perConn; id++ {
				b, _ := protocol.AppendRequest(nil, id, protocol.OpHello, nil)
				if _, err := c.nc.Write(b); err != nil {
					errc <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
			var buf []byte
			for id := uint64(1); id <= perConn; id++ {
				body, err := protocol.ReadFrame(c.nc, buf, 1<<20)
				if err != nil {
					errc <- err
					return
				}
				var r protocol.Response
				if err := protocol.DecodeResponse(body, &r); err != nil || r.ID != id {
					errc <- errors.New("answer out of order or undecodable")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// TestKillWakesAWaitingReader: a connection killed by another goroutine
// (as a failed write, or a peer that does not read its answers, does)
// while its reader waits for a request ends, and its peer sees the end.
func TestKillWakesAWaitingReader(t *testing.T) {
	ts := start(t, Config{})
	c := ts.dial(t)
	c.call(1, protocol.OpHello, nil, &protocol.HelloResult{})
	ts.lnMu.Lock()
	var sc *conn
	for k := range ts.conns {
		sc = k
	}
	ts.lnMu.Unlock()
	sc.kill()
	waitFor(t, "the killed connection to end", func() bool { return ts.Connections() == 0 })
	expectEOF(t, c)
}

// TestCloseEndsWaitingReaders: Close returns while readers wait for
// requests (start's cleanup then checks that no goroutine is left).
func TestCloseEndsWaitingReaders(t *testing.T) {
	ts := start(t, Config{})
	for i := range 8 {
		c := ts.dial(t)
		c.call(uint64(i+1), protocol.OpHello, nil, &protocol.HelloResult{})
	}
	done := make(chan struct{})
	go func() {
		ts.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return while readers waited")
	}
}

// TestWithoutHupPoller: with no hupPoller (no epoll instance could be
// made), readers read until EAGAIN before each wait, and a half-closed
// peer still gets its answer, then the end of stream.
func TestWithoutHupPoller(t *testing.T) {
	ts := start(t, Config{})
	ts.polMu.Lock()
	ts.polStop = true
	ts.polMu.Unlock()
	c := ts.dial(t)
	for id := uint64(1); id <= 20; id++ {
		c.call(id, protocol.OpHello, nil, &protocol.HelloResult{})
	}
	ts.halfClosedHello(t)
}
