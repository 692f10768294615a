package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/klockd/klock/protocol"
)

// DefaultSocketMode is the permission of the socket file: owner and group
// may connect, others may not.
const DefaultSocketMode fs.FileMode = 0o660

// ListenConfig says where and how to create the daemon's socket.
type ListenConfig struct {
	Path  string      // socket path; "" = protocol.DefaultSocket()
	Mode  fs.FileMode // socket permission; 0 = DefaultSocketMode
	Group string      // group name or numeric gid to own the socket; "" = the daemon's group
}

// ErrDaemonRunning is returned by Listen when a live daemon already answers
// on the socket path.
var ErrDaemonRunning = errors.New("klock: another klockd is already serving on this socket")

// Listen creates the Unix socket described by cfg and returns its listener.
// It creates the parent directory (mode 0755) when missing and refuses a
// parent that is not a directory or that another non-root user owns. When a
// file already exists at the path: a socket a live daemon answers on gives
// ErrDaemonRunning; a dead socket is removed; anything else is an error, so
// a mistyped path never deletes a user's file. The socket is created with
// cfg.Mode (no wider window in between) and chowned to cfg.Group. The
// socket file is removed when the listener is closed.
func Listen(cfg ListenConfig) (*net.UnixListener, error) {
	path := cfg.Path
	if path == "" {
		path = protocol.DefaultSocket()
	}
	mode := cfg.Mode
	if mode == 0 {
		mode = DefaultSocketMode
	}
	gid := -1
	if cfg.Group != "" {
		g, err := lookupGroup(cfg.Group)
		if err != nil {
			return nil, err
		}
		gid = g
	}
	if err := makeParent(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}

	// The umask makes bind(2) create the file with no more than mode, so
	// there is no moment when it is wider than asked. Listen runs before the
	// daemon starts other work, so the process-wide umask is safe to touch.
	old := syscall.Umask(int(^mode.Perm() & 0o777))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("klock: listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode.Perm()); err != nil {
		ln.Close()
		return nil, fmt.Errorf("klock: set mode %#o on %s: %w", mode.Perm(), path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("klock: set group %s on %s: %w", cfg.Group, path, err)
		}
	}
	return ln, nil
}

// lookupGroup resolves a group name or a numeric gid.
func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("klock: socket group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// makeParent creates dir when missing and checks that it is a directory
// owned by root or by this process, so nobody else can swap the socket.
func makeParent(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("klock: create socket directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("klock: socket directory %s: %w", dir, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		// A symlinked directory is fine when it points at a directory
		// that passes the same checks (e.g. /var/run -> /run).
		if fi, err = os.Stat(dir); err != nil {
			return fmt.Errorf("klock: socket directory %s: %w", dir, err)
		}
	}
	if !fi.IsDir() {
		return fmt.Errorf("klock: socket directory %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			return fmt.Errorf("klock: socket directory %s belongs to uid %d, not to this user (uid %d) or root; refusing to use it", dir, st.Uid, os.Geteuid())
		}
		if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
			return fmt.Errorf("klock: socket directory %s is writable by everyone; use a private directory", dir)
		}
	}
	return nil
}

// removeStale deals with a file already at path: see Listen.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("klock: socket path %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("klock: %s exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w (%s); stop it first or choose another --socket", ErrDaemonRunning, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("klock: remove stale socket %s: %w", path, err)
	}
	return nil
}
