"""One pipelined connection to klockd, shared by threads, that survives restarts.

Framing (protocol/README.md): every message is a 4-byte big-endian length
followed by a msgpack map. Requests may be pipelined; responses are matched
by ``id`` and may come out of order.

Who reads the socket: one *reader role*, held by at most one thread at a
time. A caller whose request finds the role free takes it and reads its own
answer, as the Go client does: with one call in flight (a single-threaded
program, the common case) no other thread is involved and no thread switch
is paid. Answers it reads for others are handed to them. When it has its
answer and other calls are still waiting, it wakes one of their callers to
take the role, which then reads its own answer too (measured against
handing every answer over from the reader thread: BENCHMARKS.md, "Python
client"). The connection's reader thread reads only when calls are in
flight that no caller waits on (an acquire whose caller gave up, heartbeats
sent before they are collected), and it redials when the connection breaks:
with capped, jittered exponential backoff, then it resends every request in
flight. Resending is safe because every op is idempotent or made so by its
arguments (acquire carries an ``idem`` key).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import struct
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

from . import wire
from ._core import Redial
from .errors import (
    BadFrameError,
    DaemonNotRunningError,
    KlockConnectionError,
    KlockError,
    KlockTimeoutError,
    ShuttingDownError,
    error_from_wire,
)

__all__ = ["Connection", "Call", "DEFAULT_MAX_FRAME", "CLIENT_NAME"]

DEFAULT_MAX_FRAME = wire.DEFAULT_MAX_FRAME
CLIENT_NAME = wire.CLIENT_NAME

log = logging.getLogger("klock")

# Longest the connect + hello handshake may take, seconds.
_HANDSHAKE_TIMEOUT = 5.0

# Longest a write may block before the connection is taken as broken, seconds.
_SEND_TIMEOUT = 10.0

# A blocked read wakes up this often (SO_RCVTIMEO) so that a caller holding
# the reader role notices its deadline. A socket timeout would do the same
# but costs a poll(2) before every read.
_READ_TICK = 0.05

_RECV_SIZE = 1 << 16

_allocate_lock = threading.Lock

# Ops whose late answer may be a grant nobody waits for.
_ACQUIRE_OPS = frozenset({"acquire", "acquire_many"})
_monotonic = time.monotonic

# Connections opened by this process; a forked child marks them, so that a
# call in the child opens its own instead of sharing the parent's socket.
_live: "weakref.WeakSet[Connection]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for conn in list(_live):
        conn._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Call:
    """One request in flight: its frame (kept for resending) and its answer."""

    __slots__ = ("id", "op", "frame", "done", "result", "error", "waiter", "sent_gen", "sends",
                 "orphan")

    def __init__(self, call_id: int, op: str, frame: bytes) -> None:
        self.id = call_id
        self.op = op
        self.frame = frame
        # Guarded by Connection._lock.
        self.done = False
        self.result: Optional[Dict[str, Any]] = None
        self.error: Optional[KlockError] = None
        # A lock held until the call is done, made only for a caller that
        # has to sleep; the reader releases it to wake that caller.
        self.waiter: Optional[Any] = None
        # Guarded by Connection._wlock.
        self.sent_gen = 0  # connection generation it was last written on; 0 = never
        self.sends = 0
        # Set when its caller gave up waiting: a late grant is released.
        self.orphan = False


class Connection:
    """A thread-safe, pipelined, self-healing connection to klockd.

    Args:
        socket_path: the daemon's Unix socket.
        max_resends: how many times one request may be resent after the
            connection broke under it before it fails with
            :class:`KlockConnectionError`.
    """

    def __init__(self, socket_path: str, max_resends: int = 8) -> None:
        self.socket_path = socket_path
        self.max_resends = max_resends
        #: The largest request body the daemon takes; updated from ``hello``.
        self.max_frame = DEFAULT_MAX_FRAME
        self._ids = itertools.count(1)  # next() is atomic under the GIL

        # Lock order: _wlock before _lock.
        # _wlock serialises writes to the socket and guards Call.sent_gen/sends.
        self._wlock = threading.Lock()
        # _lock guards the fields that follow, and Call.done/result/error/waiter.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # wakes the reader thread
        self._sock: Optional[socket.socket] = None
        self._gen = 0  # incremented on every successful dial
        self._pending: Dict[int, Call] = {}
        self._reading = False  # some thread holds the reader role
        self._closed = False
        self._dial_error: Optional[BaseException] = None
        self._reconnects = 0
        # Bytes read past the last whole frame, and the socket they came
        # from; owned by the reader role.
        self._rbuf = b""
        self._rbuf_sock: Optional[socket.socket] = None
        # Broken sockets, shut down but not yet closed: a socket is closed
        # only when no thread can be reading or writing it (see _reap).
        self._dead: List[socket.socket] = []

        self._forked = False
        # Set by close() and redial_now(): ends a redial backoff sleep early.
        self._wake = threading.Event()
        self._reader: Optional[threading.Thread] = None
        #: Called with the ids of leases granted to calls nobody waits for any
        #: more (they timed out), so that they can be released.
        self.on_orphan_grant: Optional[Any] = None

    # ----- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Dials the daemon once and starts the reader thread.

        Raises:
            DaemonNotRunningError: nothing listens on the socket.
            KlockConnectionError: the socket exists but cannot be used
                (permissions, not a socket).
        """
        try:
            sock = self._dial()
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            raise DaemonNotRunningError(self.socket_path, e) from None
        except PermissionError as e:
            raise KlockConnectionError(
                "klock: permission denied connecting to %s (%s): the socket is mode 0660;"
                " join its group or use your own daemon via KLOCK_SOCKET"
                % (self.socket_path, (e.strerror or str(e)).lower())
            ) from None
        except OSError as e:
            raise KlockConnectionError(
                "klock: cannot connect to %s: %s" % (self.socket_path, e)
            ) from None
        self._install(sock)
        self._reader = threading.Thread(target=self._run, name="klock-reader", daemon=True)
        self._reader.start()
        _live.add(self)

    @property
    def forked(self) -> bool:
        """Reports whether this process is a fork of the one that opened the connection.

        A forked child shares the socket with its parent but has no reader
        thread: it must open its own connection.
        """
        return self._forked

    def close(self) -> None:
        """Closes the connection; calls still waiting fail with KlockConnectionError.

        Safe to call more than once and from any thread. In a forked child it
        only closes the child's copy of the socket, leaving the parent's
        connection alone.
        """
        if self._forked:
            # No lock: a thread of the parent may have held it at fork time,
            # and this child has no other thread that could race with us.
            self._closed = True
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock, self._sock = self._sock, None
            calls = list(self._pending.values())
            self._pending.clear()
            for c in calls:
                c.error = KlockConnectionError("klock: client closed while %s was in flight" % c.op)
                self._finish(c)
            self._cond.notify_all()
        self._wake.set()
        if sock is not None:
            self._drop(sock)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)
        self._reap()

    @property
    def closed(self) -> bool:
        """Reports whether close() was called."""
        return self._closed

    @property
    def connected(self) -> bool:
        """Reports whether a socket is currently open (False while reconnecting)."""
        return self._sock is not None

    @property
    def reconnects(self) -> int:
        """How many times the connection was re-established after breaking."""
        return self._reconnects

    def redial_now(self) -> None:
        """Cuts a redial backoff sleep short: the next dial is made at once
        and the backoff starts again from its first step. Does nothing while
        connected. The keep-alive calls it before giving a lease up, since
        the backoff may otherwise sleep past a daemon that came back in time."""
        self._wake.set()
        with self._lock:
            self._cond.notify_all()

    def in_flight(self) -> int:
        """How many calls are waiting for their answer."""
        with self._lock:
            return len(self._pending)

    # ----- calls -----------------------------------------------------------

    def call(self, op: str, tail: bytes, timeout: float) -> Dict[str, Any]:
        """Sends one request and waits up to ``timeout`` seconds for its result.

        ``tail`` is the request without its id (see :mod:`klock.wire`).
        Returns the response's ``result`` map. Raises the KlockError subclass
        for the daemon's error code, :class:`KlockTimeoutError` when no answer
        came in time, or :class:`DaemonNotRunningError` when the daemon has
        been unreachable for the whole wait.
        """
        deadline = _monotonic() + timeout
        c, read = self._submit(op, tail)
        if read:
            self._read(c, deadline)
        return self.wait(c, deadline, timeout)

    def submit(self, op: str, tail: bytes) -> Call:
        """Sends one request without waiting; :meth:`wait` collects its answer."""
        c, read = self._submit(op, tail)
        if read:
            self._give_up_role()
        return c

    def _submit(self, op: str, tail: bytes) -> Tuple[Call, bool]:
        """Registers and sends a call; reports whether the caller took the reader role."""
        call_id = next(self._ids)
        frame = wire.frame(tail, call_id)
        if len(frame) - 4 > self.max_frame:
            raise BadFrameError(
                "klock: %s request is %d bytes, over the daemon's max_frame of %d"
                % (op, len(frame) - 4, self.max_frame)
            )
        c = Call(call_id, op, frame)
        with self._wlock:
            with self._lock:
                if self._closed:
                    raise KlockConnectionError("klock: client is closed")
                self._pending[call_id] = c
                sock = self._sock
                if sock is None:
                    self._cond.notify_all()  # the reader thread redials and sends it
                    return c, False
                read = not self._reading
                if read:
                    self._reading = True
            c.sent_gen = self._gen
            c.sends = 1
            try:
                sock.sendall(frame)
            except OSError:
                self._drop(sock)
        return c, read

    def wait(self, c: Call, deadline: float, timeout: float) -> Dict[str, Any]:
        """Waits until c is answered or the deadline passes; returns its result."""
        while True:
            remaining = deadline - _monotonic()
            with self._lock:
                if c.done:
                    break
                read = remaining > 0 and not self._reading and self._sock is not None
                waiter: Any = c.waiter
                if read:
                    self._reading = True
                elif waiter is None:
                    waiter = c.waiter = _allocate_lock()
                    waiter.acquire()
            if read:
                self._read(c, deadline)
                continue
            if remaining <= 0 or not waiter.acquire(True, remaining):
                with self._lock:
                    if c.done:
                        break
                    down = self._sock is None
                    if c.op in _ACQUIRE_OPS and not down:
                        c.orphan = True  # stays in flight: a late grant is released
                    else:
                        self._pending.pop(c.id, None)
                    c.waiter = None
                    if not self._reading:
                        self._hand_role()  # it may have been handed to us just now
                    dial_error = self._dial_error
                if down and dial_error is not None:
                    raise DaemonNotRunningError(self.socket_path, dial_error)
                raise KlockTimeoutError(
                    "klock: no answer to %s from %s within %.3gs" % (c.op, self.socket_path, timeout)
                )
        if c.error is not None:
            raise c.error
        assert c.result is not None
        return c.result

    def _drop(self, sock: socket.socket) -> None:
        """Marks sock broken; the reader thread notices and redials."""
        with self._lock:
            if self._sock is sock:
                self._sock = None
                self._cond.notify_all()
            if sock not in self._dead:
                self._dead.append(sock)
        _shutdown(sock)

    def _reap(self) -> None:
        """Closes broken sockets once nobody can be using them: no writer
        (_wlock) and no reader. Closing a socket another thread is about to
        use could hand its fd number to a new socket under it."""
        with self._wlock:
            with self._lock:
                if self._reading:
                    return
                dead, self._dead = self._dead, []
        for sock in dead:
            sock.close()

    # ----- the reader role -------------------------------------------------

    def _read(self, own: Optional[Call], deadline: Optional[float]) -> None:
        """Holds the reader role: reads and hands out answers until own is
        answered (own None: until nothing is in flight), the deadline passes
        or the connection breaks; then gives the role up."""
        sock = self._sock
        broken = sock is None
        buf = self._rbuf if self._rbuf_sock is sock else b""
        try:
            while not broken:
                try:
                    chunk = sock.recv(_RECV_SIZE)  # type: ignore[union-attr]
                except BlockingIOError:  # the read tick (SO_RCVTIMEO)
                    if own is None:
                        if not self._pending:
                            break
                    elif own.done or (deadline is not None and _monotonic() >= deadline):
                        break
                    continue
                except OSError:
                    broken = True
                    break
                if not chunk:
                    broken = True
                    break
                buf = buf + chunk if buf else chunk
                pos, end = 0, len(buf)
                answered: List[Tuple[int, Any]] = []
                while end - pos >= 4:
                    n = int.from_bytes(buf[pos:pos + 4], "big")
                    if n == 0 or n > wire.READ_LIMIT:
                        broken = True  # the stream cannot be resynchronised
                        break
                    if end - pos - 4 < n:
                        break
                    answered.append(self._decode(buf[pos + 4:pos + 4 + n]))
                    pos += 4 + n
                buf = buf[pos:] if pos < end else b""
                if answered and self._deliver(answered, own):
                    break
        finally:
            self._rbuf, self._rbuf_sock = (b"", None) if broken else (buf, sock)
            if broken and sock is not None:
                self._drop(sock)
            self._give_up_role()

    def _decode(self, body: bytes) -> Tuple[int, Any]:
        try:
            msg = wire.decode(body)
        except Exception:  # a malformed frame answers nobody; drop it
            return 0, None
        if type(msg) is not dict:
            return 0, None
        call_id = msg.get("id")
        if type(call_id) is not int or call_id <= 0:
            return 0, None  # id 0: BAD_FRAME / BAD_REQUEST for a frame we cannot attribute
        return call_id, msg

    def _deliver(self, answered: List[Tuple[int, Any]], own: Optional[Call]) -> bool:
        """Hands answers to their calls; reports whether the reader may stop."""
        late: List[Dict[str, Any]] = []
        with self._lock:
            for call_id, msg in answered:
                c = self._pending.get(call_id)
                if c is None:
                    continue  # timed out, or a duplicate answer to a resent request
                if msg.get("ok") is True:
                    r = msg.get("result")
                    c.result = r if type(r) is dict else {}
                else:
                    err = error_from_wire(msg.get("error"))
                    if isinstance(err, ShuttingDownError):
                        # The daemon is stopping: keep the call pending; it is
                        # resent on the next connection, to the restarted daemon.
                        continue
                    c.error = err
                del self._pending[call_id]
                if c.orphan and c.result is not None:
                    late.append(c.result)
                self._finish(c)
            # The reader thread stops as soon as a caller waits: that caller
            # then reads for itself (see _give_up_role).
            stop = own.done if own is not None else (
                not self._pending or self._waiting_caller() is not None)
        for grant in late:
            self._orphan_grant(grant)
        return stop

    def _finish(self, c: Call) -> None:
        """Marks c done and wakes its caller. _lock held."""
        c.done = True
        if c.waiter is not None:
            c.waiter.release()

    def _orphan_grant(self, result: Dict[str, Any]) -> None:
        ids = [g.get("lease_id") for g in result.get("leases", [result])] if result.get("success") else []
        callback = self.on_orphan_grant
        if callback is not None and ids:
            try:
                callback([i for i in ids if isinstance(i, str)])
            except Exception:
                log.exception("klock: releasing a lease granted after its caller gave up")

    def _waiting_caller(self) -> Optional[Call]:
        """A call whose caller sleeps waiting for it, if any. _lock held."""
        for c in self._pending.values():
            if c.waiter is not None:
                return c
        return None

    def _give_up_role(self) -> None:
        with self._lock:
            self._reading = False
            self._hand_role()
        if self._dead:
            self._reap()

    def _hand_role(self) -> None:
        """Finds a reader for the calls in flight, the role being free. _lock held.

        A caller that waits is woken to take the role, so that it reads its
        own answer; only when none waits (answers to abandoned calls, or to
        calls not collected yet) does the reader thread read.
        """
        if not self._pending:
            return
        c = self._waiting_caller()
        if c is None:
            self._cond.notify_all()
            return
        waiter: Any = c.waiter
        c.waiter = None
        waiter.release()  # wakes it to take the role

    # ----- reader thread ---------------------------------------------------

    def _run(self) -> None:
        redial = Redial()
        while True:
            with self._lock:
                while not self._closed and not (
                        self._pending and (self._sock is None or not self._reading)):
                    self._cond.wait()
                if self._closed:
                    return
                dial = self._sock is None
                if not dial:
                    self._reading = True
            if not dial:
                self._read(None, None)
                continue
            try:
                sock = self._dial()
            except OSError as e:
                with self._lock:
                    self._dial_error = e
                log.debug("klock: redialling %s failed: %s", self.socket_path, e)
                if self._wake.wait(redial.next()):
                    self._wake.clear()
                    redial.reset()  # redial_now(): try again at once
                continue
            redial.reset()
            self._install(sock)

    def _dial(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_HANDSHAKE_TIMEOUT)
            sock.connect(self.socket_path)
            self._hello(sock)
            sock.settimeout(None)
            # A daemon that stops reading (hung, SIGSTOPped) must not block a
            # writer forever while holding _wlock: after _SEND_TIMEOUT the send
            # fails, and the connection is dropped and redialled.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(_SEND_TIMEOUT))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(_READ_TICK))
        except BaseException:
            sock.close()
            raise
        return sock

    def _hello(self, sock: socket.socket) -> None:
        """Says hello on a fresh connection and adopts the daemon's max_frame.

        Knowing max_frame lets a call refuse an oversized request locally:
        sent, it would make the daemon close the connection, and the resend
        would do it again. Raises OSError when the daemon does not answer
        (or is shutting down), which counts as a failed dial.
        """
        hello_id = next(self._ids)
        sock.sendall(wire.frame(wire.request_tail("hello", {"client": CLIENT_NAME}), hello_id))
        buf = b""
        while True:
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    raise ConnectionResetError("klock: connection closed during hello")
                buf += chunk
            n = int.from_bytes(buf[:4], "big")
            if n == 0 or n > wire.READ_LIMIT:
                raise ConnectionResetError("klock: malformed frame during hello")
            try:
                msg = wire.decode(buf[4:4 + n])
            except Exception:
                msg = None
            buf = buf[4 + n:]
            if isinstance(msg, dict) and msg.get("id") == hello_id:
                break
        if msg.get("ok") is True:
            result = msg.get("result")
            max_frame = result.get("max_frame") if isinstance(result, dict) else None
            if isinstance(max_frame, int) and max_frame > 0:
                self.max_frame = max_frame
            return
        err = error_from_wire(msg.get("error"))
        if isinstance(err, ShuttingDownError):
            raise ConnectionRefusedError("klock: daemon is shutting down")
        # Any other refusal of hello is not fatal: requests will tell.

    def _install(self, sock: socket.socket) -> None:
        """Makes sock the current connection and resends what is in flight."""
        failed = []
        with self._wlock:
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                if self._gen > 0:
                    self._reconnects += 1
                    log.info("klock: reconnected to %s", self.socket_path)
                self._sock = sock
                self._gen += 1
                gen = self._gen
                self._dial_error = None
                calls = sorted(self._pending.values(), key=lambda c: c.id)
                for c in calls:
                    if c.orphan:  # its caller gave up: not worth a resend
                        failed.append(c)
                        del self._pending[c.id]
                    elif c.sent_gen != gen and c.sends > self.max_resends:
                        failed.append(c)
                        del self._pending[c.id]
                        c.error = KlockConnectionError(
                            "klock: connection to %s broke %d times while %s was in flight"
                            % (self.socket_path, c.sends, c.op))
                        self._finish(c)
            for c in calls:
                if c.sent_gen == gen or c in failed:
                    continue
                c.sent_gen = gen
                c.sends += 1
                try:
                    sock.sendall(c.frame)
                except OSError:
                    self._drop(sock)
                    break


def _timeval(seconds: float) -> bytes:
    sec = int(seconds)
    return struct.pack("ll", sec, int((seconds - sec) * 1e6))


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
