package tests

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// raiseNoFile lifts this process's open-file limit to at least n, or skips.
func raiseNoFile(t *testing.T, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Skipf("open-file limit %d is below the %d this test needs", lim.Max, n)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot raise the open-file limit: %v", err)
	}
}

// TestTwoThousandIdleConnections: 2,000 connections that send nothing do
// not stop normal traffic, and each of them is still served afterwards.
func TestTwoThousandIdleConnections(t *testing.T) {
	const idle = 2000
	raiseNoFile(t, idle+256)
	d := harness.Start(t, harness.Options{StateDir: "none"})

	conns := make([]net.Conn, 0, idle)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < idle; i++ {
		c, err := net.Dial("unix", d.Socket)
		if err != nil {
			t.Fatalf("dial idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}

	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "busy")), nil)
	for i := uint64(0); i < 200; i++ {
		var g protocol.Grant
		mustOK(t, "acquire", r.Call(10+2*i, protocol.OpAcquire, acquireArgs("busy", "s", "/hot", "MUTATES", 60000)), &g)
		if !g.Success {
			t.Fatalf("acquire %d = %+v", i, g)
		}
		mustOK(t, "release", r.Call(11+2*i, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID)), nil)
	}
	var st protocol.StatsResult
	mustOK(t, "stats", r.Call(5000, protocol.OpStats, nil), &st)
	t.Logf("klockd RSS with %d idle connections: %d KiB", idle, rssKB(t, d.Cmd.Process.Pid))
	if st.Connections < idle+1 {
		t.Errorf("stats.connections = %d; want at least %d", st.Connections, idle+1)
	}

	// Every idle connection still answers; pipeline all hellos first.
	hello, _ := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
	for i, c := range conns {
		if _, err := c.Write(hello); err != nil {
			t.Fatalf("idle connection %d: write: %v", i, err)
		}
	}
	for i, c := range conns {
		body, err := protocol.ReadFrame(c, nil, protocol.DefaultMaxFrame)
		if err != nil {
			t.Fatalf("idle connection %d: read: %v", i, err)
		}
		var resp protocol.Response
		if err := protocol.DecodeResponse(body, &resp); err != nil || !resp.OK {
			t.Fatalf("idle connection %d: hello answer %+v, %v", i, resp, err)
		}
	}
}

// TestMaxConnsRefusesTheExcess: past --max-conns a new connection gets one
// RESOURCE_EXHAUSTED frame (id 0) and is closed; when a connection goes
// away, a new one is served again.
func TestMaxConnsRefusesTheExcess(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-conns", "3"}})
	a := d.Raw(t)
	// The harness's own hello connection may not be reaped yet.
	waitFor(t, "only this connection to be open", func() bool {
		var st protocol.StatsResult
		mustOK(t, "stats", a.Call(99, protocol.OpStats, nil), &st)
		return st.Connections == 1
	})
	b, c := d.Raw(t), d.Raw(t)
	for i, r := range []*harness.Raw{a, b, c} {
		mustOK(t, "hello", r.Call(uint64(i+1), protocol.OpHello, nil), nil)
	}
	extra := d.Raw(t)
	resp := extra.Recv()
	if resp.OK || resp.ID != 0 || resp.Error.Code != protocol.CodeResourceExhausted {
		t.Fatalf("fourth connection got %+v; want RESOURCE_EXHAUSTED id 0", resp)
	}
	if _, err := extra.TryRecv(); err == nil {
		t.Fatalf("fourth connection stayed open")
	}
	c.Conn.Close()
	var ok bool
	waitFor(t, "a slot to free up", func() bool {
		r := d.Raw(t)
		resp, err := func() (*protocol.Response, error) {
			b, _ := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
			if _, err := r.Conn.Write(b); err != nil {
				return nil, err
			}
			return r.TryRecv()
		}()
		r.Conn.Close()
		ok = err == nil && resp.OK
		return ok
	})
}

// TestHalfClosedConnectionsGetAnswersThenEOF: clients that pipeline
// requests and then shut down their writing side get every answer, then
// the end of stream. The daemon waits for a request without reading after
// a short read, so it learns of a peer's shutdown that came with the last
// requests from an epoll instance of its own (daemon/server, poller.go).
// The answers are read only once the daemon has ended every connection:
// a client reading them would wake the daemon's reader too.
func TestHalfClosedConnectionsGetAnswersThenEOF(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	const conns, perConn = 50, 20
	var burst []byte
	for id := uint64(1); id <= perConn; id++ {
		burst, _ = protocol.AppendRequest(burst, id, protocol.OpHello, nil)
	}
	cs := make([]*net.UnixConn, conns)
	for i := range cs {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.Socket, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	for _, c := range cs {
		c.SetDeadline(time.Now().Add(harness.RawTimeout))
		if _, err := c.Write(burst); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}

	r := d.Raw(t)
	deadline := time.Now().Add(harness.RawTimeout)
	for id := uint64(1); ; id++ {
		var st protocol.StatsResult
		mustOK(t, "stats", r.Call(id, protocol.OpStats, nil), &st)
		if st.Connections == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats.connections = %d after the clients shut down; want 1", st.Connections)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for i, c := range cs {
		for id := uint64(1); id <= perConn; id++ {
			body, err := protocol.ReadFrame(c, nil, protocol.DefaultMaxFrame)
			if err != nil {
				t.Fatalf("connection %d, answer %d: %v", i, id, err)
			}
			var resp protocol.Response
			if err := protocol.DecodeResponse(body, &resp); err != nil || resp.ID != id || !resp.OK {
				t.Fatalf("connection %d, answer %d: %+v, %v", i, id, resp, err)
			}
		}
		if _, err := protocol.ReadFrame(c, nil, protocol.DefaultMaxFrame); !errors.Is(err, io.EOF) {
			t.Fatalf("connection %d, after the last answer: %v; want EOF", i, err)
		}
	}
}
