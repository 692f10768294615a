package clientlib

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klockd/klock/protocol"
)

// This file finds the daemon when no socket is named, and starts one on
// first use: protocol/README.md "Transport" and "Autostart".

// Environment variables that turn autostart off (either; any value but "",
// "0", "false", "no" or "off").
const (
	EnvNoAutostart      = "KLOCK_NO_AUTOSTART"
	EnvDisableAutostart = "KLOCK_DISABLE_AUTOSTART" // the original Klock SDK's name
)

// autostartWait bounds how long Dial waits for a klockd it started to
// answer (a large state directory takes a while to recover).
const autostartWait = 30 * time.Second

// AutostartDisabled reports whether the environment, read with getenv
// (nil: os.Getenv), turns autostart off.
func AutostartDisabled(getenv func(string) string) bool {
	if getenv == nil {
		getenv = os.Getenv
	}
	for _, name := range []string{EnvNoAutostart, EnvDisableAutostart} {
		switch strings.ToLower(strings.TrimSpace(getenv(name))) {
		case "", "0", "false", "no", "off":
		default:
			return true
		}
	}
	return false
}

// connect dials the daemon for Dial: the named socket (Options.Socket, else
// $KLOCK_SOCKET) and nothing else; or, with none named, the per-user
// daemon, then the system daemon, then a per-user daemon it starts. It
// returns the connection and the socket it reached.
func (c *Client) connect(ctx context.Context) (net.Conn, string, error) {
	if s := c.opts.Socket; s != "" {
		nc, err := c.dialSocket(ctx, s)
		return nc, s, err
	}
	if s := os.Getenv("KLOCK_SOCKET"); s != "" {
		nc, err := c.dialSocket(ctx, s)
		return nc, s, err
	}
	uid := os.Geteuid()
	user := protocol.UserSockets(uid)
	var tried []string
	for _, s := range user {
		if err := checkSocketDir(s, uid); err != nil {
			tried = append(tried, err.Error())
			continue
		}
		nc, err := c.dialSocket(ctx, s)
		if err == nil {
			return nc, s, nil
		}
		if ctx.Err() != nil {
			return nil, "", err
		}
		tried = append(tried, s+" ("+dialCause(err)+")")
	}
	if _, err := os.Stat(protocol.SystemSocket); err == nil {
		nc, err := c.dialSocket(ctx, protocol.SystemSocket)
		if err == nil {
			return nc, protocol.SystemSocket, nil
		}
		if ctx.Err() != nil {
			return nil, "", err
		}
		tried = append(tried, protocol.SystemSocket+" ("+dialCause(err)+")")
	}
	if c.opts.NoAutostart || AutostartDisabled(nil) {
		return nil, "", &DialError{Socket: user[0], Err: fs.ErrNotExist, Detail: fmt.Sprintf(
			"no klockd answers (tried %s) and autostart is off (%s or %s is set, or Options.NoAutostart): "+
				"start it with `klockd`, or point KLOCK_SOCKET at its socket",
			strings.Join(tried, ", "), EnvNoAutostart, EnvDisableAutostart)}
	}
	nc, err := c.autostart(ctx, user[0])
	return nc, user[0], err
}

// dialSocket makes one connection attempt to socket.
func (c *Client) dialSocket(ctx context.Context, socket string) (net.Conn, error) {
	d := net.Dialer{Timeout: c.opts.DialTimeout}
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("klock: dialling %s: %w", socket, ctx.Err())
		}
		return nil, &DialError{Socket: socket, Err: err}
	}
	return nc, nil
}

// dialCause is the short reason a dial failed ("connection refused").
func dialCause(err error) string {
	var de *DialError
	if errors.As(err, &de) && de.Err != nil {
		return causeText(de.Err)
	}
	return err.Error()
}

// checkSocketDir refuses a per-user socket whose directory exists and
// belongs to neither uid nor root: in /tmp anyone may create
// /tmp/klock-$UID first and serve a daemon of their own there.
func checkSocketDir(socket string, uid int) error {
	dir := filepath.Dir(socket)
	fi, err := os.Stat(dir)
	if err != nil {
		return nil // missing: nothing to trust or distrust yet
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != uid {
		return fmt.Errorf("%s (its directory belongs to uid %d, not to you: skipped)", socket, st.Uid)
	}
	return nil
}

// autostart starts a per-user klockd on socket and connects to it. A lock
// file beside the socket makes concurrent first uses start one daemon: the
// others wait for the lock, then find the daemon answering.
func (c *Client) autostart(ctx context.Context, socket string) (net.Conn, error) {
	fail := func(format string, args ...any) error {
		return &DialError{Socket: socket, Err: fs.ErrNotExist, Detail: fmt.Sprintf(format, args...)}
	}
	bin, err := findKlockd()
	if err != nil {
		return nil, fail("no klockd answers, and none was found to start (%v): install it with "+
			"`go install github.com/klockd/klock/cmd/klockd@latest`, or run `go build -o ~/.local/bin/ ./cmd/...` "+
			"in a clone of the repository; or set %s=1 and start klockd yourself", err, EnvNoAutostart)
	}
	dir := filepath.Dir(socket)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fail("no klockd answers, and its socket directory cannot be made: %v", err)
	}
	if err := checkSocketDir(socket, os.Geteuid()); err != nil {
		return nil, fail("no klockd answers, and autostart will not use %s", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, "autostart.lock"))
	if err != nil {
		return nil, fail("no klockd answers, and the autostart lock failed: %v", err)
	}
	defer unlock()
	if nc, err := c.dialSocket(ctx, socket); err == nil {
		return nc, nil // another client started it while this one waited for the lock
	}

	stateDir, logFile, err := autostartFiles(dir)
	if err != nil {
		return nil, fail("no klockd answers, and its log file cannot be made: %v", err)
	}
	defer logFile.Close()
	args := []string{"run", "--socket", socket}
	if _, set := os.LookupEnv("KLOCK_STATE_DIR"); !set && os.Geteuid() == 0 {
		// As root klockd's own default is the system service's directory;
		// a klockd started on first use is root's per-user daemon.
		args = append(args, "--state-dir", stateDir)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/"
	cmd.Env = autostartEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // its own session: no terminal signals, outlives us
	if err := cmd.Start(); err != nil {
		return nil, fail("no klockd answers, and starting %s failed: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it whenever it exits

	ctx, cancel := context.WithTimeout(ctx, autostartWait)
	defer cancel()
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		if nc, err := c.dialSocket(ctx, socket); err == nil {
			fmt.Fprintf(c.opts.stderr(), "klock: started klockd (pid %d) on %s, log %s; stop it with: kill %d\n",
				cmd.Process.Pid, socket, logFile.Name(), cmd.Process.Pid)
			return nc, nil
		}
		select {
		case err := <-exited:
			return nil, fail("no klockd answered, so %s was started, but it exited (%v): %s; see %s",
				bin, err, lastLine(logFile.Name()), logFile.Name())
		case <-ctx.Done():
			return nil, fail("no klockd answered, so %s was started (pid %d), but it did not answer within %s; see %s",
				bin, cmd.Process.Pid, autostartWait, logFile.Name())
		case <-time.After(delay):
		}
	}
}

// findKlockd looks for klockd on PATH, then next to the running executable.
func findKlockd() (string, error) {
	if p, err := exec.LookPath("klockd"); err == nil {
		return p, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", errors.New("not on PATH")
	}
	p := filepath.Join(filepath.Dir(exe), "klockd")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return p, nil
	}
	return "", fmt.Errorf("not on PATH, nor in %s", filepath.Dir(exe))
}

// autostartFiles returns the state directory of the daemon to start and
// opens its log file there, klockd.log, for appending. With the state in
// memory (KLOCK_STATE_DIR=”), the log goes beside the socket.
func autostartFiles(socketDir string) (string, *os.File, error) {
	stateDir := protocol.UserStateDir()
	logDir := stateDir
	if v, set := os.LookupEnv("KLOCK_STATE_DIR"); set {
		logDir = v
		if v == "" {
			logDir = socketDir
		}
	}
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return "", nil, err
	}
	f, err := os.OpenFile(filepath.Join(logDir, "klockd.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	return stateDir, f, err
}

// autostartEnv is this process's environment without what would make the
// daemon act as a service (socket activation, sd_notify): the daemon would
// otherwise take the caller's inherited descriptors for its own.
func autostartEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		for _, p := range []string{"LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=", "NOTIFY_SOCKET=", "WATCHDOG_"} {
			if strings.HasPrefix(kv, p) {
				kv = ""
				break
			}
		}
		if kv != "" {
			env = append(env, kv)
		}
	}
	return env
}

// lockFile takes an exclusive flock(2) on name, waiting while ctx lives,
// and returns the function that releases it.
func lockFile(ctx context.Context, name string) (func(), error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// lastLine returns the last non-empty line of the file (a daemon's last
// log line says why it exited), at most 300 bytes of it.
func lastLine(name string) string {
	f, err := os.Open(name)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 4096 {
		_, _ = f.Seek(-4096, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := lines[len(lines)-1]
	if len(last) > 300 {
		last = last[:300] + "..."
	}
	return strconv.Quote(last)
}
