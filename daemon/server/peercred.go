package server

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Peer is the identity of the process at the other end of a connection, as
// the kernel reports it (SO_PEERCRED) at connect time.
type Peer struct {
	UID uint32
	GID uint32
	PID int32
}

// peerCred reads the peer credentials of a Unix socket connection.
func peerCred(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("klock: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	err = raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err == nil {
		err = credErr
	}
	if err != nil {
		return Peer{}, fmt.Errorf("klock: peer credentials: %w", err)
	}
	return Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}
