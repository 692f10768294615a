package protocol

import (
	"syscall"
	"unsafe"
)

// ReadRaw and WriteRaw are one connection's read(2) and write(2), for the
// daemon's connections and the Go client's, made with RawSyscall inside
// syscall.RawConn's Read and Write callbacks (which still wait in Go's
// poller). What a raw call saves is the runtime's entry to a system call
// that might block: when every P was idle (a daemon or a client waiting for
// the next message), that entry wakes the runtime's monitor thread
// (sysmon), which then polls every 20 µs for a while before sleeping
// again: a thread wake-up and a few sleeps per request (BENCHMARKS.md,
// "Session 3: raw socket calls"). The descriptor must be non-blocking, as
// every socket from package net is, so a raw call never blocks.

// ReadRaw is one read(2) of fd into p (not empty), retried on EINTR. An
// errno of EAGAIN means nothing is there yet: wait in the poller.
func ReadRaw(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		raceReadDone(fd)
		return int(r), 0
	}
}

// WriteRaw writes what of p (not empty) fd takes now, retrying on EINTR:
// all of it, or less with the errno that stopped it (EAGAIN: the socket's
// buffer is full; wait in the poller).
func WriteRaw(fd uintptr, p []byte) (int, syscall.Errno) {
	raceWriteStart(fd)
	done := 0
	for done < len(p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
		switch e {
		case 0:
			done += int(r)
		case syscall.EINTR:
		default:
			return done, e
		}
	}
	return done, 0
}
