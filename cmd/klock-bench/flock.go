package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// flockBackend is the kernel's own lock: flock(2) with LOCK_EX|LOCK_NB on one
// file per resource, no daemon. It is the floor for a local lock.
type flockBackend struct {
	dir  string
	held []int // descriptors locked by Hold
}

func newFlockBackend() (Backend, error) {
	dir, err := os.MkdirTemp("", "klock-bench-flock-")
	if err != nil {
		return nil, err
	}
	return &flockBackend{dir: dir}, nil
}

func (b *flockBackend) Name() string { return "flock" }

func (b *flockBackend) Settings() string {
	return "flock(2) LOCK_EX|LOCK_NB / LOCK_UN on one file per resource in a temp dir (" + fsType(os.TempDir()) + "), each worker its own descriptors; busy = EWOULDBLOCK"
}

func (b *flockBackend) RSS() (int64, bool) { return 0, false }

func (b *flockBackend) Clients(ctx context.Context, w int) ([]Locker, io.Closer, error) {
	ls := make([]Locker, w)
	var cs closers
	for i := range ls {
		c := &flockClient{dir: b.dir, fds: map[string]int{}}
		ls[i], cs = c, append(cs, c)
	}
	return ls, cs, nil
}

// Hold locks n files, one descriptor each; it raises the open-file limit
// first and reports errUnsupported when that is not allowed.
func (b *flockBackend) Hold(ctx context.Context, n int) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	need := uint64(n + 4096)
	if lim.Cur < need {
		want := unix.Rlimit{Cur: need, Max: max(need, lim.Max)}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil {
			return fmt.Errorf("%w: %d descriptors needed, limit %d: %v", errUnsupported, need, lim.Cur, err)
		}
	}
	for i := range n {
		fd, err := openLockFile(filepath.Join(b.dir, "held-"+strconv.Itoa(i)))
		if err != nil {
			return err
		}
		b.held = append(b.held, fd)
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fmt.Errorf("klock-bench: flock held-%d: %w", i, err)
		}
	}
	return nil
}

func (b *flockBackend) Close() error {
	for _, fd := range b.held {
		unix.Close(fd)
	}
	return os.RemoveAll(b.dir)
}

// flockClient is one worker: its own descriptor per resource, since flock
// locks belong to the open file description.
type flockClient struct {
	dir string
	fds map[string]int
}

func (c *flockClient) Acquire(ctx context.Context, resource string) (string, Outcome, error) {
	fd, ok := c.fds[resource]
	if !ok {
		var err error
		if fd, err = openLockFile(filepath.Join(c.dir, strings.ReplaceAll(resource, "/", "_"))); err != nil {
			return "", DeniedOther, err
		}
		c.fds[resource] = fd
	}
	err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case err == nil:
		return "", Granted, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		return "", DeniedBusy, nil
	default:
		return "", DeniedOther, fmt.Errorf("klock-bench: flock: %w", err)
	}
}

func (c *flockClient) Release(ctx context.Context, resource, token string) error {
	return unix.Flock(c.fds[resource], unix.LOCK_UN)
}

func (c *flockClient) Close() error {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	return nil
}

func openLockFile(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return -1, fmt.Errorf("klock-bench: open %s: %w", path, err)
	}
	return fd, nil
}

// fsType names the file system holding dir (tmpfs, ext4, overlay...).
func fsType(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown fs"
	}
	switch st.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	}
	return fmt.Sprintf("fs 0x%x", st.Type)
}
