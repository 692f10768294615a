"""Test helpers: a scripted fake daemon (wire tests) and a real klockd runner."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack

try:
    import klock
except ImportError:  # run from a checkout without PYTHONPATH=clientlib/python
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import klock


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls cond until it returns something truthy; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def short_tempdir(test: unittest.TestCase) -> str:
    """A fresh directory with a short path (Unix socket paths are limited to 108 bytes)."""
    d = tempfile.mkdtemp(prefix="klk", dir="/tmp")
    test.addCleanup(shutil.rmtree, d, True)
    return d


def linked_worktree(test: unittest.TestCase) -> Tuple[str, str]:
    """A git repository and a linked worktree of it, made by hand: the
    worktree's .git file names a gitdir whose commondir leads to the main
    repository. Returns (main, linked)."""
    root = short_tempdir(test)
    main, linked = os.path.join(root, "repo"), os.path.join(root, "repo-wt")
    gitdir = os.path.join(main, ".git", "worktrees", "wt")
    os.makedirs(gitdir)
    os.makedirs(linked)
    with open(os.path.join(gitdir, "commondir"), "w") as f:
        f.write("../..\n")
    with open(os.path.join(linked, ".git"), "w") as f:
        f.write("gitdir: %s\n" % gitdir)
    return main, linked


# ----- fake daemon ----------------------------------------------------------------


class FakeConn:
    """One accepted connection of the fake daemon."""

    def __init__(self, server: "FakeDaemon", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self._wlock = threading.Lock()

    def send(self, msg: Dict[str, Any]) -> None:
        body = msgpack.packb(msg, use_bin_type=True)
        with self._wlock:
            try:
                self.sock.sendall(len(body).to_bytes(4, "big") + body)
            except OSError:
                pass

    def send_raw(self, data: bytes) -> None:
        with self._wlock:
            self.sock.sendall(data)

    def ok(self, req: Dict[str, Any], result: Dict[str, Any]) -> None:
        self.send({"id": req["id"], "ok": True, "result": result})

    def error(self, req: Dict[str, Any], code: str, message: str) -> None:
        self.send({"id": req["id"], "ok": False, "error": {"code": code, "message": message}})

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FakeDaemon:
    """A scripted stand-in for klockd on a temp socket, for wire-level tests.

    handler(conn, request) is called for each request frame, in the
    connection's thread; it answers with conn.ok / conn.error / conn.send,
    or later from another thread. Every request is recorded in .requests
    and every raw frame length in .frame_lengths.
    """

    def __init__(self, path: str, handler: Callable[[FakeConn, Dict[str, Any]], None],
                 max_frame: int = 1 << 20) -> None:
        self.path = path
        self.handler = handler
        self.max_frame = max_frame
        self.hellos = 0  # hellos are answered here, not recorded in .requests
        self.requests: List[Dict[str, Any]] = []
        self.raw_bodies: List[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._conns: List[FakeConn] = []
        self._listener: Optional[socket.socket] = None
        self.start()

    def start(self) -> None:
        self._stopped = False
        ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ln.bind(self.path)
        ln.listen(16)
        self._listener = ln
        threading.Thread(target=self._accept, args=(ln,), daemon=True).start()

    def stop(self) -> None:
        """Closes the listener and every connection, and removes the socket."""
        ln, self._listener = self._listener, None
        with self._lock:
            self._stopped = True
        if ln is not None:
            try:
                ln.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ln.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def ops(self) -> List[str]:
        with self._lock:
            return [r.get("op") for r in self.requests]

    def _accept(self, ln: socket.socket) -> None:
        while True:
            try:
                sock, _ = ln.accept()
            except OSError:
                return
            conn = FakeConn(self, sock)
            with self._lock:
                if self._stopped:  # accepted while stop() ran: drop it too
                    sock.close()
                    return
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: FakeConn) -> None:
        for frame, req in _read_frames(conn.sock):
            if req.get("op") == "hello":
                with self._lock:
                    self.hellos += 1
                conn.ok(req, {"server": "fake", "protocol": 1, "pid": os.getpid(),
                              "max_frame": self.max_frame, "started_at": 0})
                continue
            with self._lock:
                self.requests.append(req)
                self.raw_bodies.append(frame[4:])
            self.handler(conn, req)
        conn.sock.close()


def _read_frames(sock: socket.socket):
    """Yields (raw frame, decoded body) from sock until it closes."""
    buf = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + n:
                break
            frame, buf = buf[: 4 + n], buf[4 + n :]
            yield frame, msgpack.unpackb(frame[4:], raw=False)


# ----- cut proxy -------------------------------------------------------------------


class CutProxy:
    """Forwards a socket to klockd, and on request loses one answer.

    After cut(op), the next response to an `op` request is dropped and the
    client's connection is closed, as if the daemon had died just after
    deciding: the client must resend, and the daemon must not decide twice.
    """

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.target = target
        self.cuts = 0
        self._lock = threading.Lock()
        self._cut_op: Optional[str] = None
        self._ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ln.bind(path)
        self._ln.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, op: str) -> None:
        with self._lock:
            self._cut_op = op

    def close(self) -> None:
        try:
            self._ln.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._ln.close()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._ln.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.target)
            ops: Dict[int, str] = {}
            threading.Thread(target=self._upward, args=(down, up, ops), daemon=True).start()
            threading.Thread(target=self._downward, args=(down, up, ops), daemon=True).start()

    def _upward(self, down: socket.socket, up: socket.socket, ops: Dict[int, str]) -> None:
        for frame, req in _read_frames(down):
            with self._lock:
                ops[req.get("id")] = req.get("op")
            try:
                up.sendall(frame)
            except OSError:
                break
        _close_both(down, up)

    def _downward(self, down: socket.socket, up: socket.socket, ops: Dict[int, str]) -> None:
        for frame, resp in _read_frames(up):
            with self._lock:
                op = ops.get(resp.get("id"))
                drop = op is not None and op == self._cut_op
                if drop:
                    self._cut_op = None
                    self.cuts += 1
            if drop:
                break
            try:
                down.sendall(frame)
            except OSError:
                break
        _close_both(down, up)


def _close_both(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass


# ----- real daemon -----------------------------------------------------------------


class Klockd:
    """A real klockd process on a temp socket, for end-to-end tests.

    state_dir None runs in memory (--state-dir ''); otherwise leases survive
    restart() on the same socket and state dir.
    """

    def __init__(self, binary: str, socket_path: str, state_dir: Optional[str],
                 log_path: str, extra_args: Optional[List[str]] = None) -> None:
        self.binary = binary
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> None:
        args = [self.binary, "--socket", self.socket_path,
                "--state-dir", self.state_dir if self.state_dir is not None else ""]
        args += self.extra_args
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("klockd exited with %s before answering:\n%s"
                                     % (self.proc.returncode, self.logs()))
            try:
                with klock.KlockClient(self.socket_path, timeout=2.0) as c:
                    c.hello()
                return
            except klock.KlockError:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError("klockd did not answer on %s within %.0fs:\n%s"
                                     % (self.socket_path, timeout, self.logs()))
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM, wait for exit; returns the exit code."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("klockd did not stop on SIGTERM:\n" + self.logs())
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, wait."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()[-8000:]
        except OSError:
            return ""


def klockd_binary() -> Optional[str]:
    """The klockd binary under test (env KLOCKD_BIN), or None."""
    path = os.environ.get("KLOCKD_BIN", "")
    return path or None


def now_ms() -> int:
    return int(time.time() * 1000)


class KlockdTestCase(unittest.TestCase):
    """Starts a fresh klockd per test; self.klock is a client connected to it."""

    #: Keep state on disk (so leases survive a restart) instead of in memory.
    persistent = False
    #: Extra daemon flags.
    daemon_args: List[str] = []

    def setUp(self) -> None:
        binary = klockd_binary()
        if binary is None:
            self.skipTest("KLOCKD_BIN is not set (tests/python_test.go sets it)")
        self.dir = short_tempdir(self)
        state = os.path.join(self.dir, "state") if self.persistent else None
        self.daemon = Klockd(binary, os.path.join(self.dir, "k.sock"), state,
                             os.path.join(self.dir, "klockd.log"), self.daemon_args)
        self.daemon.start()
        self.addCleanup(self._stop_daemon)
        self.klock = self.new_client()

    def _stop_daemon(self) -> None:
        code = self.daemon.stop()
        if code != 0:
            self.fail("klockd exited with %s:\n%s" % (code, self.daemon.logs()))

    def new_client(self, timeout: float = 10.0) -> klock.KlockClient:
        c = klock.KlockClient(self.daemon.socket_path, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def grant(self, agent: str, session: str, path: str, predicate: str = "MUTATES",
              ttl: int = 60000, typ: str = "FILE") -> Dict[str, Any]:
        r = self.klock.acquire_lease(agent, session, typ, path, predicate, ttl)
        self.assertTrue(r["success"], r)
        return r
