package protocol

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Where klockd listens and keeps its state unless told otherwise: the one
// definition the daemon and the Go clients share (protocol/README.md
// "Transport"; the Python client has a copy tested against these).

// SystemSocket is the socket of the system daemon (the service, run as root).
const SystemSocket = "/run/klock/klockd.sock"

// SystemStateDir is the state directory of the system daemon.
const SystemStateDir = "/var/lib/klock"

// runUserDir holds the per-user runtime directories systemd-logind makes
// ($XDG_RUNTIME_DIR is normally runUserDir/$UID).
const runUserDir = "/run/user"

// UserSockets returns where a per-user klockd of uid listens, in order of
// preference: runUserDir/$UID/klock/klockd.sock when runUserDir/$UID is a
// directory owned by uid (a user with a login session), then
// /tmp/klock-$UID/klockd.sock. A per-user daemon listens on the first;
// clients look for one on each, since a daemon started while the user had
// no session lives on the second. $XDG_RUNTIME_DIR is not read: su and
// some ssh shells lack it, and they must find the same daemon as the
// user's desktop shells.
func UserSockets(uid int) []string {
	return userSockets(runUserDir, uid)
}

func userSockets(runUser string, uid int) []string {
	id := strconv.Itoa(uid)
	tmp := filepath.Join("/tmp", "klock-"+id, "klockd.sock") // not $TMPDIR: every shell must agree
	dir := filepath.Join(runUser, id)
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return []string{tmp}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != uid {
		return []string{tmp}
	}
	return []string{filepath.Join(dir, "klock", "klockd.sock"), tmp}
}

// DefaultSocket returns the socket klockd listens on when not told: the
// SystemSocket when it runs as root, else the first of UserSockets.
func DefaultSocket() string {
	if uid := os.Geteuid(); uid != 0 {
		return UserSockets(uid)[0]
	}
	return SystemSocket
}

// UserStateDir returns where a per-user klockd keeps its state:
// $XDG_STATE_HOME/klock when that is an absolute path, else
// $HOME/.local/state/klock, else (no home known) /tmp/klock-state-$UID.
func UserStateDir() string {
	if x := os.Getenv("XDG_STATE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "klock")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".local", "state", "klock")
	}
	return filepath.Join("/tmp", "klock-state-"+strconv.Itoa(os.Geteuid()))
}

// DefaultStateDir returns where klockd keeps its state when not told: the
// SystemStateDir as root, else UserStateDir.
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return SystemStateDir
	}
	return UserStateDir()
}
