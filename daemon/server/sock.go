package server

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sock reads and writes a connection's socket with raw system calls,
// waiting in Go's poller as any net.Conn does (deadlines and Close work the
// same). The descriptor is non-blocking, so a raw read or write never
// blocks in the kernel. What a raw call saves is the runtime's entry to a
// system call that might block: when every P was idle (a daemon waiting for
// its next request), that entry wakes the runtime's monitor thread, which
// then polls every 20 µs for a while before sleeping again. With one request
// in flight per connection that was a thread wake-up and a few sleeps per
// request (BENCHMARKS.md, "One connection per agent").
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
	p := s.rbuf
	for {
		r, _, e := syscall.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		s.rn, s.rerrno = int(r), e
		if e == 0 {
			raceReadDone(fd)
		}
		return e != syscall.EAGAIN
	}
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
	p := s.wbuf
	raceWriteStart(fd)
	for s.wdone < len(p) {
		r, _, e := syscall.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[s.wdone])), uintptr(len(p)-s.wdone))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return !s.wwait
		}
		if e != 0 {
			s.werrno = e
			return true
		}
		s.wdone += int(r)
	}
	return true
}
