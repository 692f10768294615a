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
type sock struct {
	rc syscall.RawConn
}

func newSock(nc *net.UnixConn) *sock {
	// SyscallConn fails only for a nil connection.
	rc, _ := nc.SyscallConn()
	return &sock{rc: rc}
}

// Read reads into p, waiting in the poller until something can be read.
// It returns io.EOF when the peer has closed its end.
func (s *sock) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			n, errno = int(r), e
			if e == 0 {
				raceReadDone(fd)
			}
			return errno != syscall.EAGAIN
		}
	})
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

// Write writes all of p, waiting in the poller while the socket's buffer
// is full; it fails once the connection's write deadline passes.
func (s *sock) Write(p []byte) (int, error) {
	return s.write(p, true)
}

// TryWrite writes what of p the socket takes now, without waiting.
func (s *sock) TryWrite(p []byte) (int, error) {
	return s.write(p, false)
}

func (s *sock) write(p []byte, wait bool) (int, error) {
	done := 0
	var errno syscall.Errno
	err := s.rc.Write(func(fd uintptr) bool {
		raceWriteStart(fd)
		for done < len(p) {
			r, _, e := syscall.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return !wait
			}
			if e != 0 {
				errno = e
				return true
			}
			done += int(r)
		}
		return true
	})
	if err == nil && errno != 0 {
		err = errno
	}
	return done, err
}
