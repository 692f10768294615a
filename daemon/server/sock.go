package server

import (
	"net"
	"sync/atomic"
	"syscall"

	"github.com/klockd/klock/protocol"
)

// sock writes a connection's socket with raw system calls (protocol.WriteRaw,
// which says what that saves), waiting in Go's poller as any net.Conn does
// (deadlines work the same); the reader reads it with raw calls too, inside
// one RawConn.Read (conn.serve).
//
// The functions handed to RawConn are bound once, in newSock, with their
// arguments and results in the sock: a closure made per call would be two
// allocations per write. Writes are made under the connection's writeMu,
// so those fields have one user at a time.
type sock struct {
	nc *net.UnixConn
	rc syscall.RawConn

	// hp is the server's hupPoller and id the socket's registration there,
	// made by the reader (register); hp is nil until then, and when the
	// server has none.
	hp *hupPoller
	id uint64
	// closing is set by Close: the reader stops at its next step.
	closing atomic.Bool

	wbuf    []byte
	wdone   int
	wwait   bool
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

func newSock(nc *net.UnixConn) *sock {
	// SyscallConn fails only for a nil connection.
	rc, _ := nc.SyscallConn()
	s := &sock{nc: nc, rc: rc}
	s.writeFn = s.write
	return s
}

// register registers the socket, whose descriptor is fd, with hp; the
// reader calls it inside its RawConn.Read, so that a shutdown already
// reported is a new edge for it (hupPoller). It reports whether hp took it.
func (s *sock) register(hp *hupPoller, fd uintptr) bool {
	if hp == nil {
		return false
	}
	id, err := hp.add(fd, s)
	if err != nil {
		return false
	}
	s.hp, s.id = hp, id
	return true
}

// release unregisters the socket; the reader calls it when it is done,
// before the socket is closed.
func (s *sock) release() {
	if s.hp == nil {
		return
	}
	err := s.rc.Control(func(fd uintptr) { s.hp.remove(fd, s.id) })
	if err != nil { // closed already, which unregistered it
		s.hp.forget(s.id)
	}
	s.hp = nil
}

// Close stops the connection: the reader stops, and writes fail with
// net.ErrClosed from now on; the reader's end (conn.finish) closes the
// descriptor. It
// does not close it here: a close waits for the RawConn.Read the reader
// is in (internal/poll FD.Close waits until the descriptor is released),
// and Close is called by the reader itself and under locks it may take.
// shutdown(2) of both sides is an edge that wakes the reader if it waits.
func (s *sock) Close() {
	s.closing.Store(true)
	s.rc.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
}

// Write writes all of p, waiting in the poller while the socket's buffer
// is full; it fails once the connection's write deadline passes.
func (s *sock) Write(p []byte) (int, error) {
	return s.writeAll(p, true)
}

// TryWrite writes what of p the socket takes now, without waiting.
func (s *sock) TryWrite(p []byte) (int, error) {
	return s.writeAll(p, false)
}

func (s *sock) writeAll(p []byte, wait bool) (int, error) {
	if s.closing.Load() {
		return 0, net.ErrClosed
	}
	s.wbuf, s.wdone, s.wwait, s.werrno = p, 0, wait, 0
	err := s.rc.Write(s.writeFn)
	done, errno := s.wdone, s.werrno
	s.wbuf = nil
	if err == nil && errno != 0 {
		err = errno
	}
	return done, err
}

// write writes s.wbuf from s.wdone with raw write(2) calls; false asks the
// poller to wait until the socket takes more.
func (s *sock) write(fd uintptr) bool {
	n, e := protocol.WriteRaw(fd, s.wbuf[s.wdone:])
	s.wdone += n
	switch e {
	case 0:
		return true
	case syscall.EAGAIN:
		return !s.wwait
	}
	s.werrno = e
	return true
}
