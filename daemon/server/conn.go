package server

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/store"
	"github.com/klockd/klock/protocol"
)

// readBufSize is the size of a connection's read buffer: a hundred or more
// pipelined requests fit, so they are decoded and answered as one batch,
// while thousands of idle connections stay cheap. A frame larger than that
// gets a buffer of its size (makeRoom).
const readBufSize = 16 << 10

// keepBufCap is the largest buffer a connection keeps for reuse; a bigger
// one (a long list_leases answer, a long acquire_many) is dropped after use.
const keepBufCap = 256 << 10

// conn is one client connection. Its reader goroutine decodes requests and
// answers them inline; answers are appended to out and written with one
// write(2) per batch. Wake-ups for its parked acquires come from other
// goroutines, which append to out and kick a flush.
type conn struct {
	s      *Server
	nc     *net.UnixConn
	sk     *sock // nc's reads and writes (sock.go)
	caller engine.Caller
	// in is the read buffer: in[inR:inW] is read and not decoded yet.
	// Frames are decoded where they lie (bufferedFrame), without a copy.
	in       []byte
	inR, inW int
	req      protocol.Request // decoded request, reused
	ch       change           // the change req asks for, reused (newChange)
	room     acquireRoom      // ch's room
	// The reader's state in step: stepFn is step bound once; started is
	// set at its first call; skipRead when a short read may be followed by
	// a wait without a read (a hupPoller took the socket); drained when the
	// last read was short; rerr is why the reader stopped.
	stepFn   func(fd uintptr) bool
	started  bool
	skipRead bool
	drained  bool
	rerr     error

	// waiters are this connection's parked acquires, watches its watch
	// streams by watch id; both guarded by Server.mu.
	waiters map[engine.WaiterID]struct{}
	watches map[int64]*socketWatch

	// proc is the process that connected, once a bound acquire has
	// identified it, and pidfd a pidfd for it (-1 when none) until the
	// process watcher adopts or closes it. Used by the reader goroutine,
	// and under Server.mu.
	proc  *engine.Process
	pidfd int
	// proposals counts the changes proposed (cluster mode) and not yet
	// answered; a read waits for them (replica.go). Guarded by propMu.
	propMu    sync.Mutex
	proposals int
	propIdle  chan struct{} // closed when proposals drops to 0

	// writeMu serialises writers, so a final flush writes everything,
	// and guards the connection's write deadline (writeWaiting).
	writeMu sync.Mutex

	// answered counts the answers appended, for stats' ops: a counter of
	// the connection's own, which no other CPU writes (Server.opsTotal).
	answered atomic.Uint64

	// outMu guards the fields that follow.
	outMu  sync.Mutex
	out    []byte       // framed answers not yet written
	spare  []byte       // the other buffer, while out is being written
	outSeq uint64       // journal sequence the answers in out depend on
	marks  []answerMark // where each answer in out starts, for retract
	spareM []answerMark // the other marks slice, while out is being written
	kicked bool         // a flush goroutine has been started and not yet run
	listed bool         // on Server.listed, for the journal writer's pass (answer.go)
	dead   bool         // closed or dropped: answers are discarded
}

func newConn(s *Server, nc *net.UnixConn, p Peer) *conn {
	c := &conn{
		s:      s,
		nc:     nc,
		sk:     newSock(nc),
		caller: engine.Caller{UID: p.UID, PID: p.PID},
		in:     make([]byte, readBufSize),
		pidfd:  -1,
	}
	c.stepFn = c.step
	return c
}

// serve is the connection's reader: it reads requests and answers them
// inside one RawConn.Read, so that it waits for the next request without
// the read(2) that would find nothing (step).
func (c *conn) serve() {
	defer c.finish()
	err := c.sk.rc.Read(c.stepFn)
	if err == nil {
		err = c.rerr
	}
	var fe *protocol.FrameError
	switch {
	case errors.As(err, &fe):
		c.s.log.Warn("bad frame; closing connection", "uid", c.caller.UID, "pid", c.caller.PID, "err", err)
		c.appendError(0, protocol.CodeBadFrame, fe.Error(), 0)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	default:
		c.s.log.Debug("connection read ended", "uid", c.caller.UID, "pid", c.caller.PID, "err", err)
	}
}

// step is serve's RawConn.Read callback, on the socket's descriptor fd: it
// answers the requests buffered, reading when it needs more, until it has
// to wait (false: Go's poller waits for the socket to be readable) or the
// connection ends (true, with the reason in c.rerr).
//
// After a short read it waits without reading again: the read took all
// there was, and what arrives since is an edge that Go's poller keeps for
// the wait, as the reader never leaves this RawConn.Read (hupPoller says
// why, and covers the peer's shutdown). Without a hupPoller, and after a
// read that filled the buffer, it reads until EAGAIN. A read of a Unix
// stream socket takes all that is queued, up to the buffer's size, unless
// data sent with descriptors or out of band stops it (the kernel's
// unix_stream_read_generic); the protocol sends neither, and a peer that
// does only delays its own requests, until it sends more or shuts down.
func (c *conn) step(fd uintptr) bool {
	if !c.started {
		c.started = true
		c.skipRead = c.sk.register(c.s.hupPoller(), fd)
	}
	for {
		if c.sk.closing.Load() {
			c.rerr = net.ErrClosed
			return true
		}
		body, need, err := c.bufferedFrame()
		if err != nil {
			c.rerr = err
			return true
		}
		if body != nil {
			c.s.handle(c, body)
			if !c.frameBuffered() {
				if err := c.flush(); err != nil {
					c.rerr = err
					return true
				}
			}
			continue
		}
		if c.drained {
			c.drained = false
			return false
		}
		c.makeRoom(need)
		space := len(c.in) - c.inW
		n, errno := protocol.ReadRaw(fd, c.in[c.inW:])
		switch {
		case errno == syscall.EAGAIN:
			return false
		case errno != 0:
			c.rerr = errno
			return true
		case n == 0:
			c.rerr = io.EOF
			if c.inW > c.inR {
				c.rerr = io.ErrUnexpectedEOF
			}
			return true
		}
		c.inW += n
		c.drained = c.skipRead && n < space
	}
}

// bufferedFrame returns the body of the next request frame if c.in holds
// all of it, or else the size it needs, header included (at least the
// header's). The body lies in c.in and is valid until the next read (the
// decoder copies what it keeps). A length of 0 or over MaxFrame is a
// *protocol.FrameError, found before the body is read.
func (c *conn) bufferedFrame() (body []byte, need int, err error) {
	n := c.inW - c.inR
	if n < protocol.HeaderSize {
		return nil, protocol.HeaderSize, nil
	}
	size := binary.BigEndian.Uint32(c.in[c.inR:])
	if size == 0 || uint64(size) > uint64(c.s.cfg.MaxFrame) {
		return nil, 0, &protocol.FrameError{Length: size, Max: c.s.cfg.MaxFrame}
	}
	need = protocol.HeaderSize + int(size)
	if n < need {
		return nil, need, nil
	}
	body = c.in[c.inR+protocol.HeaderSize : c.inR+need]
	c.inR += need
	return body, need, nil
}

// makeRoom readies c.in for a read that completes a frame of need bytes,
// header included, starting at inR: what is pending moves to the start,
// into a buffer of the frame's size if it is larger than c.in. A buffer
// over keepBufCap is dropped once nothing of it is pending.
func (c *conn) makeRoom(need int) {
	buf := c.in
	switch {
	case need > len(buf):
		buf = make([]byte, need)
	case len(buf) > keepBufCap && need <= readBufSize:
		buf = make([]byte, readBufSize)
	case c.inR == 0:
		return
	}
	c.inW = copy(buf, c.in[c.inR:c.inW])
	c.inR = 0
	c.in = buf
}

// frameBuffered reports whether a whole frame is already buffered, so its
// answer can join the current batch without waiting for the network.
func (c *conn) frameBuffered() bool {
	n := c.inW - c.inR
	if n < protocol.HeaderSize {
		return false
	}
	return n-protocol.HeaderSize >= int(binary.BigEndian.Uint32(c.in[c.inR:]))
}

// finish ends the connection: it writes what is pending, cancels the
// connection's parked acquires (which may wake others) and closes it.
func (c *conn) finish() {
	c.waitProposals() // cluster mode: the answers to changes it sent
	c.flushWait()
	s := c.s
	func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		defer s.recoverBug("cancelling a closed connection's acquires")
		for id := range c.waiters {
			delete(s.waiters, id)
			s.ownChangeLocked(&change{op: opCancel, waiter: id})
		}
		c.waiters = nil
		closeFD(c.pidfd)
		c.pidfd = -1
		c.endWatchesLocked()
	}()
	c.outMu.Lock()
	c.dead = true
	c.out, c.spare, c.marks, c.spareM = nil, nil, nil, nil
	c.outMu.Unlock()
	c.sk.release()
	c.nc.Close()
	c.waitWatches()
	s.forget(c)
	s.log.Debug("connection closed", "uid", c.caller.UID, "pid", c.caller.PID)
}

// dropWaiterLocked forgets a parked acquire of c; the caller holds Server.mu.
func (c *conn) dropWaiterLocked(id engine.WaiterID) {
	delete(c.waiters, id)
}

// appendResult appends a success answer. An answer that cannot be encoded
// (a bug) is answered INTERNAL instead.
func (c *conn) appendResult(id uint64, result any, seq uint64) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.dead {
		return
	}
	off := len(c.out)
	out, err := protocol.AppendResult(c.out, id, result)
	if err != nil {
		c.s.log.Error("encoding an answer failed", "id", id, "err", err)
		out = protocol.AppendError(out[:off], id, protocol.CodeInternal, "klock: internal error encoding the answer; the daemon logged it")
	}
	c.appendedLocked(out, off, id, seq)
}

// appendBounded appends a list answer that must fit in one frame: while
// its body is over MaxFrame, shrink is called with the fraction of entries
// to keep (it cuts the list and marks it truncated) and it is encoded
// again. shrink returns false when nothing is left to cut.
func (c *conn) appendBounded(id uint64, result any, seq uint64, shrink func(keep float64) bool) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.dead {
		return
	}
	off := len(c.out)
	out, err := protocol.AppendResult(c.out, id, result)
	for err == nil {
		size := len(out) - off - protocol.HeaderSize
		if size <= c.s.cfg.MaxFrame {
			break
		}
		out = out[:off]
		if !shrink(0.9 * float64(c.s.cfg.MaxFrame) / float64(size)) {
			err = errors.New("klock: answer does not fit in a frame")
			break
		}
		out, err = protocol.AppendResult(out, id, result)
	}
	if err != nil {
		c.s.log.Error("encoding an answer failed", "id", id, "err", err)
		out = protocol.AppendError(out[:off], id, protocol.CodeInternal, "klock: internal error encoding the answer; the daemon logged it")
	}
	c.appendedLocked(out, off, id, seq)
}

// keepCount is how many of n entries to keep for fraction keep: fewer
// than n, and none when n is 0.
func keepCount(n int, keep float64) (int, bool) {
	if n == 0 {
		return 0, false
	}
	return min(int(float64(n)*keep), n-1), true
}

// appendError appends an error answer.
func (c *conn) appendError(id uint64, code protocol.Code, msg string, seq uint64) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.dead {
		return
	}
	c.appendedLocked(protocol.AppendError(c.out, id, code, msg), len(c.out), id, seq)
}

// answerMark is where one answer starts in a connection's output, with
// its request id and the journal sequence it waits for; event marks a
// watch event (dropped, not answered UNAVAILABLE, if its change is lost).
type answerMark struct {
	off   int
	id    uint64
	seq   uint64
	event bool
}

// appendedLocked stores the grown output buffer, in which the answer to
// id, waiting for journal sequence seq, starts at off, and enforces
// MaxOutbound: a peer that lets answers pile up unread is dropped.
func (c *conn) appendedLocked(out []byte, off int, id, seq uint64) {
	c.answered.Add(1)
	c.storeLocked(out, answerMark{off: off, id: id, seq: seq})
}

// storeLocked stores the grown output buffer and the mark of the answer
// appended to it, and enforces MaxOutbound: a peer that lets answers pile
// up unread is dropped.
func (c *conn) storeLocked(out []byte, m answerMark) {
	c.out = out
	c.marks = append(c.marks, m)
	if seq := m.seq; seq > c.outSeq {
		c.outSeq = seq
	}
	if len(c.out) > c.s.cfg.MaxOutbound {
		c.s.log.Warn("dropping a connection that does not read its answers",
			"uid", c.caller.UID, "pid", c.caller.PID, "unsent_bytes", len(c.out))
		c.dead = true
		c.out, c.marks = nil, nil
		c.sk.Close()
	}
}

// kick makes sure answers appended by another goroutine get written: it
// starts a flush goroutine unless one is already pending.
func (c *conn) kick() {
	c.outMu.Lock()
	if c.kicked || c.dead || len(c.out) == 0 {
		c.outMu.Unlock()
		return
	}
	c.kicked = true
	c.outMu.Unlock()
	go func() {
		c.outMu.Lock()
		c.kicked = false
		c.outMu.Unlock()
		c.flush()
	}()
}

// flush writes pending answers once the journal records they acknowledge
// are written. With a journal whose writer sends answers (answer.go), an
// answer that must wait for its records is left to the writer's round and
// flush returns at once. A failed write (peer gone, or blocked past
// WriteTimeout) closes the connection and is returned.
func (c *conn) flush() error {
	c.writeMu.Lock()
	return c.flushLocked(true)
}

// flushWait is flush that returns only once everything pending is written:
// for the last flush of a connection, and for a watch's pump, which a slow
// reader must hold back.
func (c *conn) flushWait() error {
	c.writeMu.Lock()
	return c.flushLocked(false)
}

// flushLocked is flush for a caller that holds writeMu; it releases it.
// When leave is true, answers waiting for the journal are left to its
// writer: c is listed for the writer's pass (answer.go) and the journal
// asked for a round; should the records be written by then (the pass may
// have found writeMu held, and skipped c), or the journal fail, the answers
// are sent, or the failure answered, here.
func (c *conn) flushLocked(leave bool) error {
	aj := c.s.aj
	if aj == nil {
		leave = false
	}
	for {
		c.outMu.Lock()
		if c.dead {
			c.outMu.Unlock()
			c.writeMu.Unlock()
			return net.ErrClosed
		}
		buf, seq, marks := c.out, c.outSeq, c.marks
		if len(buf) == 0 {
			c.outMu.Unlock()
			c.writeMu.Unlock()
			return nil
		}
		if leave && seq > 0 && !aj.Durable(seq) {
			c.listLocked()
			c.outMu.Unlock()
			c.writeMu.Unlock()
			written, err := aj.Commit(seq, c)
			if err == nil && !written && !aj.Durable(seq) {
				return nil
			}
			leave = err == nil
			c.writeMu.Lock()
			continue
		}
		c.out, c.spare, c.outSeq = c.spare[:0], nil, 0
		c.marks, c.spareM = c.spareM[:0], nil
		c.outMu.Unlock()
		if err := c.send(buf, seq, marks); err != nil {
			c.writeMu.Unlock()
			return err
		}
	}
}

// send writes buf, the answers taken from out, once the journal records
// they acknowledge (up to seq) are written. The caller holds writeMu.
func (c *conn) send(buf []byte, seq uint64, marks []answerMark) error {
	send := buf
	if seq > 0 && c.s.cfg.Journal != nil {
		if err := c.s.cfg.Journal.Wait(seq); err != nil {
			// Answers whose changes were lost in a journal fault become
			// UNAVAILABLE, once memory no longer shows those changes;
			// any other failure closes the connection unanswered.
			send = nil
			var ue *store.UnavailableError
			if errors.As(err, &ue) && !ue.Fault.Fatal && c.s.noticeFault() {
				send = c.s.retract(buf, marks)
			}
			if send == nil {
				c.s.log.Error("journal write failed; closing the connection instead of acknowledging", "err", err)
				c.kill()
				return err
			}
		}
	}
	err := c.write(send)
	c.recycle(buf, marks)
	if err != nil {
		c.writeFailed(err)
	}
	return err
}

// recycle keeps buf and marks, written, for the next answers.
func (c *conn) recycle(buf []byte, marks []answerMark) {
	c.outMu.Lock()
	if cap(buf) <= keepBufCap {
		c.spare = buf[:0]
	}
	c.spareM = marks[:0]
	c.outMu.Unlock()
}

// writeFailed drops the connection after a failed write.
func (c *conn) writeFailed(err error) {
	if !errors.Is(err, net.ErrClosed) {
		c.s.log.Warn("dropping a connection: writing answers failed",
			"uid", c.caller.UID, "pid", c.caller.PID, "err", err)
	}
	c.kill()
}

// write writes buf: at once when the socket takes it all, the common
// case, which reads no clock and moves no deadline; otherwise see
// writeWaiting. The caller holds writeMu.
func (c *conn) write(buf []byte) error {
	n, err := c.sk.TryWrite(buf)
	if err != nil || n == len(buf) {
		return err
	}
	return c.writeWaiting(buf[n:])
}

// writeWaiting writes rest, which the socket did not take at once, waiting
// in the poller while its buffer is full; the write fails once it has
// waited WriteTimeout. The deadline is set for this wait only and cleared
// after it, so the writes taken at once (write) need none: a deadline left
// set would make a later one fail as soon as it passed. The caller holds
// writeMu.
func (c *conn) writeWaiting(rest []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
	_, err := c.sk.Write(rest)
	c.nc.SetWriteDeadline(time.Time{})
	return err
}

// kill marks the connection dead and closes its socket; the reader then
// ends and cleans up.
func (c *conn) kill() {
	c.outMu.Lock()
	c.dead = true
	c.out, c.marks = nil, nil
	c.outMu.Unlock()
	c.sk.Close()
}
