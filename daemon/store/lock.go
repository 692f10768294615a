package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFileName is the file flock(2)ed by the daemon owning a state directory.
const lockFileName = "LOCK"

// lockDir takes an exclusive, non-blocking flock(2) on dir/LOCK and writes
// this process's pid into it. The lock belongs to the open file, so it is
// released when the process dies, however it dies: a stale LOCK file never
// blocks a restart.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("klock: opening lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			if pid := readPid(f); pid > 0 {
				return nil, fmt.Errorf("klock: state directory %s is in use by another klockd (pid %d); stop it or choose another --state-dir", dir, pid)
			}
			return nil, fmt.Errorf("klock: state directory %s is in use by another klockd; stop it or choose another --state-dir", dir)
		}
		return nil, fmt.Errorf("klock: locking %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// readPid reads the pid the lock holder wrote, or 0.
func readPid(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil {
		return 0
	}
	return pid
}

// unlockDir releases the lock. The LOCK file stays: removing it would let a
// second daemon lock a fresh file while a third still holds the old one.
func unlockDir(f *os.File) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		f.Close()
		return fmt.Errorf("klock: unlocking %s: %w", f.Name(), err)
	}
	return f.Close()
}

// LockDir takes the state directory's lock without opening a store, for a
// daemon that keeps only small files there (cluster mode keeps its node id):
// two daemons never share a directory. It creates dir (0700) if needed and
// returns the function that releases the lock.
func LockDir(dir string) (unlock func() error, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("klock: creating state directory: %w", err)
	}
	f, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	return func() error { return unlockDir(f) }, nil
}
