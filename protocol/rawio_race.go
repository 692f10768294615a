//go:build race

package protocol

import "syscall"

// The race detector learns of the ordering that a socket's write and the
// peer's read create from syscall.Write and Read (they release and acquire
// one sync point); ReadRaw and WriteRaw skip that, so under -race each
// raw call is paired with an empty syscall.Read or Write on the same
// descriptor. Tests whose client and server share a process rely on that
// ordering.

// raceReadDone follows a successful raw read of fd.
func raceReadDone(fd uintptr) { syscall.Read(int(fd), nil) }

// raceWriteStart precedes a raw write to fd.
func raceWriteStart(fd uintptr) { syscall.Write(int(fd), nil) }
