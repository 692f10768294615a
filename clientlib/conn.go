package clientlib

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
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
	// watchDone is the Done channel of the context whose end interrupts
	// this connection's reader (see Client.takeReader), stopWatch stops
	// that: a reader's context is watched once, not once per read.
	watchDone <-chan struct{}
	stopWatch func() bool
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
	if sc, ok := nc.(syscall.Conn); ok {
		cn.rd.rc, _ = sc.SyscallConn()
	}
	cn.rd.fn = cn.rd.step
	cn.br = bufio.NewReaderSize(&cn.rd, 16<<10)
	return cn
}

// unwatch stops the watch of the reader's context. Client.mu held.
func (cn *conn) unwatch() {
	if cn.stopWatch != nil {
		cn.stopWatch()
		cn.stopWatch, cn.watchDone = nil, nil
	}
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
//
// Given bytes to send (sendFirst), its next read writes them first and then
// waits for the answer in the poller without reading: the read that would
// only say "nothing yet" (EAGAIN) is skipped. Waiting without that read is
// sound because the wait is armed (RawConn.Read clears the poller's
// readiness once, before the write) before the request leaves, so the
// answer, or the daemon closing the connection, wakes it; and a daemon that
// closed the connection before the write makes the write fail (EPIPE).
type retryReader struct {
	nc    net.Conn
	retry bool

	rc   syscall.RawConn       // nc's descriptor; nil when nc is not a socket
	fn   func(fd uintptr) bool // step, bound once
	send []byte                // bytes to write before reading
	sent int                   // how many of send are written
	own  bool                  // send was taken from the conn's wbuf (next recycles it)
	// next is called (without Client.mu) once send is written: it returns
	// the frames other callers have queued since, to be written next, or
	// nil once none are and the writer role is given up (released). It
	// returns false when Client.mu is busy: it must not wait for it, as
	// a Close made under mu waits for this read to return.
	next     func(written []byte, own bool) ([]byte, bool)
	released bool
	waited   bool
	p        []byte
	n        int
	errno    syscall.Errno // of the read
	werrno   syscall.Errno // of a write that could not finish
}

// errSendBlocked says the bytes given to sendFirst could not all be
// written without waiting (the socket's buffer is full) or their write
// failed: the caller writes the rest the ordinary way (Client.flush).
var errSendBlocked = errors.New("klock: send blocked")

// sendFirst makes the next Read write frame first. The caller holds the
// reader and writer roles.
func (r *retryReader) sendFirst(frame []byte) {
	r.send, r.sent, r.own, r.released = frame, 0, false, false
}

// unsent returns what sendFirst was given and is not written, and forgets
// it; released reports that it was all written and the writer role given
// up.
func (r *retryReader) unsent() (rest []byte, released bool) {
	rest, released = r.send[r.sent:], r.released
	r.send, r.sent, r.released = nil, 0, false
	return rest, released
}

func (r *retryReader) Read(p []byte) (int, error) {
	if len(r.send) > 0 {
		return r.sendThenRead(p)
	}
	for {
		n, err := r.nc.Read(p)
		if n == 0 && r.retry && errors.Is(err, os.ErrDeadlineExceeded) {
			_ = r.nc.SetReadDeadline(time.Time{})
			continue
		}
		return n, err
	}
}

// sendThenRead writes r.send, then waits for something to read and reads
// it into p, in one RawConn.Read.
func (r *retryReader) sendThenRead(p []byte) (int, error) {
	r.p, r.n, r.errno, r.werrno, r.waited = p, 0, 0, 0, false
	err := r.rc.Read(r.fn)
	r.p = nil
	switch {
	case err != nil:
		return 0, err
	case r.werrno != 0:
		return 0, errSendBlocked
	case r.errno != 0:
		return 0, r.errno
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// step is sendThenRead's RawConn callback; false asks the poller to wait
// until the socket is readable.
func (r *retryReader) step(fd uintptr) bool {
	for r.sent < len(r.send) {
		n, e := protocol.WriteRaw(fd, r.send[r.sent:])
		r.sent += n
		if e != 0 {
			r.werrno = e
			return true
		}
		next, ok := r.next(r.send, r.own)
		if !ok {
			// Written, but the frames queued since are left to sendRest.
			r.send, r.sent = nil, 0
			r.werrno = syscall.EAGAIN
			return true
		}
		r.send, r.sent, r.own = next, 0, true
	}
	r.send, r.sent, r.released = nil, 0, true
	if !r.waited {
		// The request just left: its answer cannot be there yet.
		r.waited = true
		return false
	}
	n, e := protocol.ReadRaw(fd, r.p)
	if e == syscall.EAGAIN {
		return false
	}
	r.n, r.errno = n, e
	return true
}

// watchReader makes ctx's end interrupt cn's reader. The AfterFunc stays
// registered while readers keep using the same context, so a caller that
// makes call after call with one context pays for it once; a reader woken
// by an earlier reader's context (a stale wake) reads on. Client.mu held.
func (cn *conn) watchReader(ctx context.Context) {
	done := ctx.Done()
	if done == nil || done == cn.watchDone {
		return
	}
	cn.unwatch()
	cn.stopWatch = context.AfterFunc(ctx, cn.interrupt)
	cn.watchDone = done
}
