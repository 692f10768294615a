package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
)

// Listeners returns the stream sockets the service manager passed to this
// process (LISTEN_FDS, checked against LISTEN_PID), in the order they were
// passed. It returns nil, nil when the process was not socket-activated.
//
// The environment variables are removed on the first call, so processes the
// daemon starts do not believe the sockets are theirs, and a second call
// returns nil, nil. An inherited descriptor that is not a listening stream
// socket is an error: every descriptor is closed and none is returned, since
// a unit that passes a datagram socket is misconfigured.
func Listeners() ([]net.Listener, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, nil
	}
	lns := make([]net.Listener, 0, len(files))
	var firstErr error
	for i, f := range files {
		ln, err := fileListener(f)
		// fileListener dups the descriptor; the inherited one is closed either way.
		f.Close()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("klock: inherited socket %d (%s) is not a listening stream socket: %w", listenFDsStart+i, f.Name(), err)
			}
			continue
		}
		lns = append(lns, ln)
	}
	if firstErr != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, firstErr
	}
	return lns, nil
}

// listenFDsStart is SD_LISTEN_FDS_START: the first inherited descriptor.
const listenFDsStart = 3

// fileListener wraps f as a listener after checking that it is a stream
// socket in the listening state; net.FileListener alone accepts a datagram
// socket and only fails later, in Accept.
func fileListener(f *os.File) (net.Listener, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var typ, listening int
	var sockErr error
	if err := rc.Control(func(fd uintptr) {
		typ, sockErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TYPE)
		if sockErr == nil {
			listening, sockErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
		}
	}); err != nil {
		return nil, err
	}
	switch {
	case sockErr != nil:
		return nil, sockErr
	case typ != syscall.SOCK_STREAM:
		return nil, errors.New("not SOCK_STREAM")
	case listening == 0:
		return nil, errors.New("not listening")
	}
	return net.FileListener(f)
}
