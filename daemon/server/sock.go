package server

import (
	"io"
	"net"
	"syscall"

	"github.com/klockd/klock/protocol"
)

// sock reads and writes a connection's socket with raw system calls
// (protocol.ReadRaw and WriteRaw, which say what that saves), waiting in
// Go's poller as any net.Conn does (deadlines and Close work the same).
//
// The functions handed to RawConn are bound once, in newSock, with their
// arguments and results in the sock: a closure made per call would be two
// allocations per read and per write. Reads are made by the connection's
// reader alone and writes under its writeMu, so each set of fields has one
// user at a time.
type sock struct {
	rc syscall.RawConn

	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wbuf    []byte
	wdone   int
	wwait   bool
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

func newSock(nc *net.UnixConn) *sock {
	// SyscallConn fails only for a nil connection.
	rc, _ := nc.SyscallConn()
	s := &sock{rc: rc}
	s.readFn, s.writeFn = s.read, s.write
	return s
}

// Read reads into p, waiting in the poller until something can be read.
// It returns io.EOF when the peer has closed its end.
func (s *sock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerrno = p, 0, 0
	err := s.rc.Read(s.readFn)
	n, errno := s.rn, s.rerrno
	s.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, errno
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is one raw read(2) into s.rbuf; false asks the poller to wait.
func (s *sock) read(fd uintptr) bool {
	s.rn, s.rerrno = protocol.ReadRaw(fd, s.rbuf)
	return s.rerrno != syscall.EAGAIN
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
