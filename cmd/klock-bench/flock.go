package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// flockBackend is the kernel's own lock: flock(2) with LOCK_EX|LOCK_NB on one
// file per resource, no daemon. It is the floor for a local lock.
type flockBackend struct {
	dir     string
	holders []*exec.Cmd // processes holding the many-leases locks
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

// Hold locks n files. The open-file limit (not raisable in a container)
// keeps one process from holding them all, so the locks are held by child
// processes — this tool re-executed as "flock-holder" — up to
// flockPerHolder each; the kernel's lock tables hold n locks either way.
func (b *flockBackend) Hold(ctx context.Context, n int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for from := 0; from < n; from += flockPerHolder {
		to := min(n, from+flockPerHolder)
		cmd := exec.CommandContext(ctx, self, "flock-holder", "-dir", b.dir, "-from", strconv.Itoa(from), "-to", strconv.Itoa(to))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("klock-bench: start flock holder: %w", err)
		}
		b.holders = append(b.holders, cmd)
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "ready\n" {
			return fmt.Errorf("klock-bench: flock holder %d..%d: %q, %v", from, to, line, err)
		}
	}
	return nil
}

// flockPerHolder is how many locks one holder process keeps, under the
// usual 20,000 open-file limit.
const flockPerHolder = 15000

// runFlockHolder is the "flock-holder" subcommand: it locks files
// held-FROM .. held-(TO-1) in DIR, says "ready", and holds them until
// killed.
func runFlockHolder(args []string) error {
	fs := flag.NewFlagSet("flock-holder", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the lock files")
	from := fs.Int("from", 0, "first file number")
	to := fs.Int("to", 0, "one past the last file number")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for i := *from; i < *to; i++ {
		fd, err := openLockFile(filepath.Join(*dir, "held-"+strconv.Itoa(i)))
		if err != nil {
			return err
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fmt.Errorf("klock-bench: flock held-%d: %w", i, err)
		}
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

func (b *flockBackend) Close() error {
	for _, h := range b.holders {
		_ = h.Process.Signal(syscall.SIGTERM)
		_ = h.Wait()
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
