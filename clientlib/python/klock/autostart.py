"""Finding klockd when no socket is named, and starting it on first use.

protocol/README.md "Transport" (a client's order) and "Autostart"; the Go
``clientlib`` does the same (clientlib/socket.go).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from .errors import DaemonNotRunningError, KlockConnectionError
from .socketpath import SYSTEM_SOCKET, user_sockets, user_state_dir

__all__ = ["find_daemon", "autostart_disabled", "ENV_NO_AUTOSTART", "ENV_DISABLE_AUTOSTART"]

#: Either turns autostart off (any value but "", "0", "false", "no", "off").
ENV_NO_AUTOSTART = "KLOCK_NO_AUTOSTART"
ENV_DISABLE_AUTOSTART = "KLOCK_DISABLE_AUTOSTART"  # the original Klock SDK's name

# How long a client waits for a klockd it started to answer.
_AUTOSTART_WAIT = 30.0

# Started daemons, polled now and then so that one that exits is reaped.
_started: List["subprocess.Popen[bytes]"] = []

#: ``probe(socket)`` connects once: returns normally if a daemon answers,
#: raises OSError otherwise.
Probe = Callable[[str], None]


def autostart_disabled(env: Optional[Mapping[str, str]] = None) -> bool:
    """Reports whether the environment turns autostart off."""
    env = os.environ if env is None else env
    for name in (ENV_NO_AUTOSTART, ENV_DISABLE_AUTOSTART):
        if env.get(name, "").strip().lower() not in ("", "0", "false", "no", "off"):
            return True
    return False


def probe(path: str, timeout: float = 5.0) -> None:
    """Connects to path once (and hangs up); raises OSError if nothing accepts."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
    finally:
        s.close()


def find_daemon(connect: Probe) -> str:
    """Returns the socket of the daemon to use when none is named.

    The per-user daemon (each of :func:`user_sockets`, skipping a directory
    that belongs to neither this user nor root), else the system daemon
    when it lets us in, else a per-user daemon started now, unless
    autostart is off. ``connect`` tries one socket.

    Raises:
        DaemonNotRunningError: nothing answers and none may or can be started.
    """
    for p in _started:
        p.poll()  # reaps a daemon this process started that has exited
    uid = os.geteuid()
    user = user_sockets(uid)
    tried = []
    for path in user:
        why = _foreign_dir(path, uid)
        if why:
            tried.append(why)
            continue
        try:
            connect(path)
            return path
        except OSError as e:
            tried.append("%s (%s)" % (path, _cause(e)))
    if os.path.exists(SYSTEM_SOCKET):
        try:
            connect(SYSTEM_SOCKET)
            return SYSTEM_SOCKET
        except OSError as e:
            tried.append("%s (%s)" % (SYSTEM_SOCKET, _cause(e)))
    if autostart_disabled():
        raise DaemonNotRunningError(user[0], detail=(
            "no klockd answers (tried %s) and autostart is off (%s or %s is set): start it with"
            " `klockd`, or point KLOCK_SOCKET at its socket"
            % (", ".join(tried), ENV_NO_AUTOSTART, ENV_DISABLE_AUTOSTART)))
    _autostart(user[0], connect)
    return user[0]


def _foreign_dir(path: str, uid: int) -> str:
    """Why path is skipped: its directory exists and belongs to neither uid
    nor root (anyone can create /tmp/klock-UID first); "" when it is not."""
    d = os.path.dirname(path)
    try:
        owner = os.stat(d).st_uid
    except OSError:
        return ""
    if owner not in (0, uid):
        return "%s (its directory belongs to uid %d, not to you: skipped)" % (path, owner)
    return ""


def _cause(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def _find_klockd() -> str:
    found = shutil.which("klockd")
    if found:
        return found
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "klockd")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    raise FileNotFoundError("not on PATH, nor in %s" % os.path.dirname(beside))


def _autostart(path: str, connect: Probe) -> None:
    """Starts a per-user klockd on path and waits until it answers.

    A lock file beside the socket makes concurrent first uses start one
    daemon: the others wait for the lock, then find it answering.
    """
    def fail(message: str) -> DaemonNotRunningError:
        return DaemonNotRunningError(path, detail=message)

    try:
        klockd = _find_klockd()
    except FileNotFoundError as e:
        raise fail("no klockd answers, and none was found to start (%s): install it with"
                   " `go install github.com/klockd/klock/cmd/klockd@latest`, or run"
                   " `go build -o ~/.local/bin/ ./cmd/...` in a clone of the repository; or set"
                   " %s=1 and start klockd yourself" % (e, ENV_NO_AUTOSTART)) from None
    d = os.path.dirname(path)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError as e:
        raise fail("no klockd answers, and its socket directory cannot be made: %s" % e) from None
    why = _foreign_dir(path, os.geteuid())
    if why:
        raise fail("no klockd answers, and autostart will not use %s" % why)
    deadline = time.monotonic() + _AUTOSTART_WAIT
    try:
        lock = _lock_file(os.path.join(d, "autostart.lock"), deadline)
    except OSError as e:
        raise fail("no klockd answers, and the autostart lock failed: %s" % e) from None
    try:
        try:
            connect(path)
            return  # another client started it while this one waited for the lock
        except OSError:
            pass
        state_dir, log_path = _files(d)
        args = [klockd, "run", "--socket", path]
        if "KLOCK_STATE_DIR" not in os.environ and os.geteuid() == 0:
            # As root klockd's own default is the system service's directory;
            # a klockd started on first use is root's per-user daemon.
            args += ["--state-dir", state_dir]
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(args, cwd="/", env=_daemon_env(), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log, start_new_session=True)
        except OSError as e:
            raise fail("no klockd answers, and starting %s failed: %s" % (klockd, e)) from None
        _started.append(proc)
        delay = 0.005
        while True:
            try:
                connect(path)
                break
            except OSError:
                pass
            if proc.poll() is not None:
                raise fail("no klockd answered, so %s was started, but it exited (status %s): %s;"
                           " see %s" % (klockd, proc.returncode, _last_line(log_path), log_path))
            if time.monotonic() > deadline:
                raise fail("no klockd answered, so %s was started (pid %d), but it did not answer"
                           " within %ds; see %s" % (klockd, proc.pid, _AUTOSTART_WAIT, log_path))
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        sys.stderr.write("klock: started klockd (pid %d) on %s, log %s; stop it with: kill %d\n"
                         % (proc.pid, path, log_path, proc.pid))
        sys.stderr.flush()
    finally:
        os.close(lock)


def _lock_file(name: str, deadline: float) -> int:
    """Takes an exclusive flock(2) on name, waiting until deadline; returns its fd."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                os.close(fd)
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _files(socket_dir: str) -> Tuple[str, str]:
    """The state directory of the daemon to start, and its log file (made)."""
    state_dir = user_state_dir()
    log_dir = state_dir
    if "KLOCK_STATE_DIR" in os.environ:
        log_dir = os.environ["KLOCK_STATE_DIR"] or socket_dir  # '' = in memory: beside the socket
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    return state_dir, os.path.join(log_dir, "klockd.log")


def _daemon_env() -> Dict[str, str]:
    """This environment without what would make klockd act as a service
    (socket activation, sd_notify) with descriptors that are not its own."""
    drop = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("WATCHDOG_")}


def _last_line(name: str) -> str:
    try:
        with open(name, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "(no log)"
    last = lines[-1] if lines else ""
    return repr(last[:300] + ("..." if len(last) > 300 else ""))


def connect_error(path: str, e: OSError) -> KlockConnectionError:
    """The error for a named socket that cannot be reached."""
    if isinstance(e, (FileNotFoundError, ConnectionRefusedError, NotADirectoryError)):
        return DaemonNotRunningError(path, e)
    if isinstance(e, PermissionError):
        return KlockConnectionError(
            "klock: permission denied connecting to %s (%s): the socket is mode 0660;"
            " join its group or use your own daemon via KLOCK_SOCKET" % (path, _cause(e)))
    return KlockConnectionError("klock: cannot connect to %s: %s" % (path, e))
