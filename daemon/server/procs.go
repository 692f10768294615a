package server

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// This file identifies the process a lease is bound to (bind "process"):
// the connection's peer, named by pid, start time and boot so that a
// reused pid is never taken for it, and a pidfd that refers to exactly
// that process for procWatcher to wait on. Everything here reads /proc or
// makes a pidfd syscall; the engine only ever sees the engine.Process.

// procRoot is where /proc is mounted (a variable for tests).
var procRoot = "/proc"

// pidfdOpen opens a pidfd (a variable so tests can make pidfds
// unavailable, as an old kernel or a seccomp filter does).
var pidfdOpen = unix.PidfdOpen

// bindError is the BIND_UNAVAILABLE error with a message saying why.
func bindError(format string, args ...any) *engine.Error {
	return &engine.Error{Code: protocol.CodeBindUnavailable, Message: fmt.Sprintf(format, args...)}
}

const bindNoneHint = `; acquire with bind "none" and a ttl instead`

// pidfds reports whether this kernel lets klockd open pidfds, once: an
// error says why not (Linux before 5.3, or a seccomp filter).
var pidfds = sync.OnceValue(func() error {
	fd, err := pidfdOpen(os.Getpid(), 0)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
})

// bootID returns the first 32 bits of the kernel's boot id, or 0 when it
// cannot be read: a process's start time means something only within the
// boot it was taken in.
var bootID = sync.OnceValue(func() uint32 {
	b, err := os.ReadFile(procRoot + "/sys/kernel/random/boot_id")
	if err != nil || len(b) < 8 {
		return 0
	}
	v, err := strconv.ParseUint(string(b[:8]), 16, 32)
	if err != nil {
		return 0
	}
	return uint32(v)
})

// startTime returns a process's start time: field 22 of /proc/PID/stat,
// clock ticks after boot (proc(5)). The second field, the command name in
// parentheses, may hold spaces and parentheses, so fields are counted from
// the last ')'.
func startTime(pid int32) (uint64, error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(int(pid)) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s/%d/stat has no command name", procRoot, pid)
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3, the state
	const field = 22 - 3
	if len(f) <= field {
		return 0, fmt.Errorf("%s/%d/stat has %d fields; want at least 22", procRoot, pid, len(f)+2)
	}
	return strconv.ParseUint(string(f[field]), 10, 64)
}

// exited reports whether the process a pidfd refers to has exited: its
// pidfd is then readable (pidfd_open(2)). A zombie has exited.
func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err != nil || n > 0 && fds[0].Revents != 0
	}
}

// peerPidfd returns a pidfd for the process that connected c: the kernel's
// own (SO_PEERPIDFD, Linux 6.5), which refers to exactly that process even
// if it has exited since, or else one opened by pid.
func peerPidfd(c *net.UnixConn, pid int32) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, sockErr := -1, error(nil)
	if err := raw.Control(func(s uintptr) {
		fd, sockErr = unix.GetsockoptInt(int(s), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	}); err != nil {
		return -1, err
	}
	if sockErr == nil {
		return fd, nil
	}
	if !errors.Is(sockErr, unix.ENOPROTOOPT) && !errors.Is(sockErr, unix.EINVAL) {
		return -1, sockErr // ESRCH: it was reaped already
	}
	return pidfdOpen(int(pid), 0)
}

// peerProcess identifies the process that connected c, for a bound
// acquire. It returns the process and a pidfd for it, or BIND_UNAVAILABLE
// saying why it cannot be bound: pidfds unavailable, a peer outside
// klockd's pid namespace, /proc unreadable, or the process gone.
func peerProcess(c *net.UnixConn, pid int32) (engine.Process, int, error) {
	if err := pidfds(); err != nil {
		return engine.Process{}, -1, bindError(`klock: bind "process" is not available: klockd cannot open pidfds (pidfd_open: %v); `+
			`it needs Linux 5.3 or later, and a seccomp filter that allows pidfd_open`+bindNoneHint, err)
	}
	if pid <= 0 {
		return engine.Process{}, -1, bindError(`klock: bind "process" is not possible: the calling process is outside klockd's pid namespace ` +
			`(the kernel reports its pid to klockd as 0), so klockd cannot watch it; run klockd in the same pid namespace as its clients ` +
			`or in a parent one (e.g. on the host, with its socket mounted into the container)` + bindNoneHint)
	}
	fd, err := peerPidfd(c, pid)
	if err != nil {
		return engine.Process{}, -1, gone(pid, err)
	}
	p, err := identifyBound(pid, fd)
	if err != nil {
		unix.Close(fd)
		return engine.Process{}, -1, err
	}
	return p, fd, nil
}

// identify reads the identity of process pid, to which pidfd refers;
// ended reports that it has exited (a zombie has), and err that /proc
// could not be read. The start time is read before checking that the
// process has not exited: its pid cannot name another process until it is
// reaped, so the time read is its own.
func identify(pid int32, pidfd int) (p engine.Process, ended bool, err error) {
	start, err := startTime(pid)
	if exited(pidfd) {
		return engine.Process{}, true, nil
	}
	if err != nil {
		return engine.Process{}, false, err
	}
	return engine.Process{PID: pid, Boot: bootID(), Start: start}, false, nil
}

// identifyBound is identify for a bound acquire: BIND_UNAVAILABLE when the
// process has exited or /proc cannot be read.
func identifyBound(pid int32, pidfd int) (engine.Process, error) {
	p, ended, err := identify(pid, pidfd)
	switch {
	case ended:
		return engine.Process{}, gone(pid, nil)
	case err != nil:
		return engine.Process{}, bindError(`klock: bind "process" is not available: klockd cannot read the start time of pid %d: %v`+bindNoneHint, pid, err)
	}
	return p, nil
}

// gone is the error for a bound acquire from a process that has exited.
func gone(pid int32, err error) *engine.Error {
	msg := fmt.Sprintf(`klock: bind "process": the process that opened this connection (pid %d) has exited; `+
		`a lease is bound to the process that connected, so connect from the process that will hold it`, pid)
	if err != nil {
		msg += " (" + err.Error() + ")"
	}
	return bindError("%s", msg)
}

// openProcess opens a pidfd for a process recorded before a restart, and
// reports false when that process is no longer running: its pid is free,
// names another process (another start time), or the machine rebooted.
// An error means klockd cannot tell (pidfds unavailable, /proc unreadable).
func openProcess(p engine.Process) (int, bool, error) {
	if err := pidfds(); err != nil {
		return -1, false, err
	}
	if p.Boot != bootID() || p.PID <= 0 {
		return -1, false, nil
	}
	fd, err := pidfdOpen(int(p.PID), 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return -1, false, nil
		}
		return -1, false, err
	}
	q, ended, err := identify(p.PID, fd)
	if ended || err != nil || q != p {
		unix.Close(fd)
		return -1, false, err
	}
	return fd, true, nil
}
