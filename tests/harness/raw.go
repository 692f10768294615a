package harness

import (
	"net"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

// RawTimeout bounds each Raw read and write.
const RawTimeout = 10 * time.Second

// Raw is a bare protocol connection, for tests that send what no client
// library would: bad frames, odd types, thousands of pipelined requests.
type Raw struct {
	tb   testing.TB
	Conn *net.UnixConn
	buf  []byte
}

// Raw dials the daemon's socket; the connection is closed when the test
// ends.
func (d *Daemon) Raw(tb testing.TB) *Raw {
	tb.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.Socket, Net: "unix"})
	if err != nil {
		tb.Fatalf("harness: dial %s: %v", d.Socket, err)
	}
	tb.Cleanup(func() { c.Close() })
	return &Raw{tb: tb, Conn: c}
}

// Write writes bytes as they are.
func (r *Raw) Write(b []byte) {
	r.tb.Helper()
	r.Conn.SetWriteDeadline(time.Now().Add(RawTimeout))
	if _, err := r.Conn.Write(b); err != nil {
		r.tb.Fatalf("harness: raw write: %v", err)
	}
}

// WriteBody writes one frame holding body.
func (r *Raw) WriteBody(body []byte) { r.Write(protocol.AppendFrame(nil, body)) }

// Send writes one request built with protocol.AppendRequest.
func (r *Raw) Send(id uint64, op string, args *protocol.Args) {
	r.tb.Helper()
	b, err := protocol.AppendRequest(nil, id, op, args)
	if err != nil {
		r.tb.Fatalf("harness: encode %s: %v", op, err)
	}
	r.Write(b)
}

// Recv reads one response; it fails the test on a read error.
func (r *Raw) Recv() *protocol.Response {
	r.tb.Helper()
	resp, err := r.TryRecv()
	if err != nil {
		r.tb.Fatalf("harness: raw read: %v", err)
	}
	return resp
}

// TryRecv reads one response or returns the read error (io.EOF once the
// daemon has closed the connection).
func (r *Raw) TryRecv() (*protocol.Response, error) {
	r.Conn.SetReadDeadline(time.Now().Add(RawTimeout))
	body, err := protocol.ReadFrame(r.Conn, r.buf, 1<<30)
	if err != nil {
		return nil, err
	}
	resp := new(protocol.Response)
	if err := protocol.DecodeResponse(body, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// Call sends one request and reads one response (no other requests may be
// in flight on r).
func (r *Raw) Call(id uint64, op string, args *protocol.Args) *protocol.Response {
	r.tb.Helper()
	r.Send(id, op, args)
	return r.Recv()
}
