package clientlib

import (
	"bufio"
	"errors"
	"net"
	"os"
	"time"

	"github.com/klockd/klock/protocol"
)

// conn is one socket connection to klockd. A Client has at most one at a
// time; when it breaks, the Client dials a new one and resends what was in
// flight. The reader fields are used only by the goroutine holding the
// Client's reader role; the writer fields are guarded by Client.mu.
type conn struct {
	nc net.Conn

	helloID uint64 // the id of the hello sent first on this connection

	// Used only by the holder of the reader role.
	rd   retryReader
	br   *bufio.Reader
	rbuf []byte            // frame bodies are read into it
	resp protocol.Response // the response being decoded

	// Guarded by Client.mu.
	wbuf      []byte // frames waiting to be written
	spare     []byte // the buffer being written, reused once it is
	flushing  bool   // a caller is writing; it writes wbuf again before it stops
	broken    bool   // the socket is closed; nothing more is written to it
	refusal   error  // an error the daemon sent with id 0 before closing
	writeDead bool   // a write found the peer gone; the reader will see EOF
}

// maxKeptBuffer bounds the buffers a conn keeps for reuse, so one large
// request does not pin a large buffer for the connection's lifetime.
const maxKeptBuffer = 64 << 10

func newConn(nc net.Conn) *conn {
	cn := &conn{nc: nc, rbuf: make([]byte, 0, 4096)}
	cn.rd.nc = nc
	cn.br = bufio.NewReaderSize(&cn.rd, 16<<10)
	return cn
}

// errInterrupted says the reader was woken by its context (or a stale wake
// for an earlier reader) before any byte of the next frame arrived.
var errInterrupted = errors.New("klock: read interrupted")

// aLongTimeAgo is a read deadline in the past: setting it makes a blocked
// Read return at once.
var aLongTimeAgo = time.Unix(1, 0)

// interrupt makes a blocked reader return errInterrupted from readFrame.
// It may be called from any goroutine.
func (cn *conn) interrupt() { _ = cn.nc.SetReadDeadline(aLongTimeAgo) }

// readFrame returns the next frame body, valid until the next call. It can be
// interrupted (see interrupt) only between frames: once the first byte of a
// frame has arrived, the rest is read whatever the deadline, so the stream
// never loses its framing.
func (cn *conn) readFrame(maxFrame int) ([]byte, error) {
	if cn.br.Buffered() == 0 {
		cn.rd.retry = false
		if _, err := cn.br.Peek(1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				_ = cn.nc.SetReadDeadline(time.Time{})
				return nil, errInterrupted
			}
			return nil, err
		}
	}
	cn.rd.retry = true
	body, err := protocol.ReadFrame(cn.br, cn.rbuf, maxFrame)
	if err == nil && cap(body) > cap(cn.rbuf) && cap(body) <= maxKeptBuffer {
		cn.rbuf = body[:0]
	}
	return body, err
}

// retryReader reads from the socket; while retry is set, a read woken by a
// deadline is resumed, so that a frame already begun is read to its end.
type retryReader struct {
	nc    net.Conn
	retry bool
}

func (r *retryReader) Read(p []byte) (int, error) {
	for {
		n, err := r.nc.Read(p)
		if n == 0 && r.retry && errors.Is(err, os.ErrDeadlineExceeded) {
			_ = r.nc.SetReadDeadline(time.Time{})
			continue
		}
		return n, err
	}
}
