"""One pipelined connection to klockd, shared by threads, that survives restarts.

Framing (PROTOCOL.md): every message is a 4-byte big-endian length followed
by a msgpack map. Requests ``{id, op, args}`` may be pipelined; responses
``{id, ok, result | error}`` are matched by ``id`` and may come out of order.

A single reader thread owns the socket's read side: it dispatches each
response to the thread waiting for it, and when the connection breaks it
redials with capped, jittered exponential backoff and resends every request
that was in flight. Resending is safe because every op is idempotent or made
so by the caller (acquire carries an ``idem`` key).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
from typing import Any, Dict, Optional

import msgpack

from .errors import (
    BadFrameError,
    DaemonNotRunningError,
    InvalidArgumentError,
    KlockConnectionError,
    KlockError,
    KlockTimeoutError,
    ShuttingDownError,
    error_from_wire,
)

__all__ = ["Connection", "DEFAULT_MAX_FRAME", "CLIENT_NAME"]

#: The daemon's default cap on a frame body (1 MiB); ``hello`` announces the real one.
DEFAULT_MAX_FRAME = 1 << 20

# A frame longer than this is taken as a broken stream, not a response.
_READ_LIMIT = 64 << 20

#: How the client introduces itself in hello.
CLIENT_NAME = "klock-python/0.1.0"

# Longest the connect + hello handshake may take, seconds.
_HANDSHAKE_TIMEOUT = 5.0

# Longest a write may block before the connection is taken as broken, seconds.
_SEND_TIMEOUT = 10.0

_BACKOFF_FIRST = 0.01
_BACKOFF_CAP = 1.0


class _Call:
    """One request waiting for its response."""

    __slots__ = ("id", "op", "frame", "done", "result", "error", "sent_gen", "sends")

    def __init__(self, call_id: int, op: str, frame: bytes) -> None:
        self.id = call_id
        self.op = op
        self.frame = frame
        self.done = threading.Event()
        self.result: Optional[Dict[str, Any]] = None
        self.error: Optional[KlockError] = None
        # sent_gen and sends are guarded by Connection._wlock.
        self.sent_gen = 0  # connection generation it was last written on; 0 = never
        self.sends = 0


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
        #: The largest request body sent; updated from ``hello``.
        self.max_frame = DEFAULT_MAX_FRAME

        # Lock order: _wlock before _lock.
        # _wlock serialises writes to the socket and guards _Call.sent_gen/sends.
        self._wlock = threading.Lock()
        # _lock guards the fields that follow.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._sock: Optional[socket.socket] = None
        self._gen = 0  # incremented on every successful dial
        self._pending: Dict[int, _Call] = {}
        self._next_id = 1
        self._closed = False
        self._dial_error: Optional[BaseException] = None
        self._reconnects = 0

        self._closing = threading.Event()  # set by close(); wakes backoff sleeps
        self._reader: Optional[threading.Thread] = None
        self._pid = os.getpid()

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
        self._reader = threading.Thread(
            target=self._run, name="klock-reader", daemon=True
        )
        self._reader.start()

    @property
    def forked(self) -> bool:
        """Reports whether this process is a fork of the one that opened the connection.

        A forked child shares the socket with its parent but has no reader
        thread: it must open its own connection.
        """
        return os.getpid() != self._pid

    def close(self) -> None:
        """Closes the connection; calls still waiting fail with KlockConnectionError.

        Safe to call more than once and from any thread. In a forked child it
        only closes the child's copy of the socket, leaving the parent's
        connection alone.
        """
        if self.forked:
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
            self._cond.notify_all()
        self._closing.set()
        if sock is not None:
            _shutdown(sock)
        for c in calls:
            c.error = KlockConnectionError("klock: client closed while %s was in flight" % c.op)
            c.done.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)

    @property
    def closed(self) -> bool:
        """Reports whether close() was called."""
        with self._lock:
            return self._closed

    @property
    def connected(self) -> bool:
        """Reports whether a socket is currently open (False while reconnecting)."""
        with self._lock:
            return self._sock is not None

    @property
    def reconnects(self) -> int:
        """How many times the connection was re-established after breaking."""
        with self._lock:
            return self._reconnects

    # ----- calls -----------------------------------------------------------

    def call(self, op: str, args: Optional[Dict[str, Any]], timeout: float) -> Dict[str, Any]:
        """Sends one request and waits up to ``timeout`` seconds for its result.

        Returns the response's ``result`` map. Raises the KlockError subclass
        for the daemon's error code, :class:`KlockTimeoutError` when no answer
        came in time, or :class:`DaemonNotRunningError` when the daemon has
        been unreachable for the whole wait.
        """
        with self._lock:
            if self._closed:
                raise KlockConnectionError("klock: client is closed")
            call_id = self._next_id
            self._next_id += 1
        request: Dict[str, Any] = {"id": call_id, "op": op}
        if args:
            request["args"] = args
        try:
            body = msgpack.packb(request, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidArgumentError("klock: cannot encode %s arguments: %s" % (op, e)) from None
        if len(body) > self.max_frame:
            raise BadFrameError(
                "klock: %s request is %d bytes, over the daemon's max_frame of %d"
                % (op, len(body), self.max_frame)
            )
        c = _Call(call_id, op, len(body).to_bytes(4, "big") + body)
        with self._lock:
            if self._closed:
                raise KlockConnectionError("klock: client is closed")
            self._pending[call_id] = c
            self._cond.notify_all()  # wakes an idle reader so it redials
        self._send(c)
        if not c.done.wait(timeout):
            with self._lock:
                self._pending.pop(call_id, None)
                down = self._sock is None
                dial_error = self._dial_error
            if not c.done.is_set():
                if down and dial_error is not None:
                    raise DaemonNotRunningError(self.socket_path, dial_error)
                raise KlockTimeoutError(
                    "klock: no answer to %s from %s within %.3gs" % (op, self.socket_path, timeout)
                )
        if c.error is not None:
            raise c.error
        assert c.result is not None
        return c.result

    def _send(self, c: _Call) -> None:
        """Writes c on the current socket unless it was already written there."""
        with self._wlock:
            with self._lock:
                sock, gen = self._sock, self._gen
                if sock is None or c.id not in self._pending:
                    return  # the reader resends it after redialling
            if c.sent_gen == gen:
                return
            c.sent_gen = gen
            c.sends += 1
            try:
                sock.sendall(c.frame)
            except OSError:
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        """Marks sock broken; the reader thread notices, closes it and redials."""
        with self._lock:
            if self._sock is sock:
                self._sock = None
        _shutdown(sock)

    # ----- reader thread ---------------------------------------------------

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
            sec = int(_SEND_TIMEOUT)
            usec = int((_SEND_TIMEOUT - sec) * 1e6)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, usec))
        except BaseException:
            sock.close()
            raise
        return sock

    def _hello(self, sock: socket.socket) -> None:
        """Says hello on a fresh connection and adopts the daemon's max_frame.

        Knowing max_frame lets call() refuse an oversized request locally:
        sent, it would make the daemon close the connection, and the resend
        would do it again. Raises OSError when the daemon does not answer
        (or is shutting down), which counts as a failed dial.
        """
        with self._lock:
            hello_id = self._next_id
            self._next_id += 1
        body = msgpack.packb({"id": hello_id, "op": "hello", "args": {"client": CLIENT_NAME}},
                             use_bin_type=True)
        sock.sendall(len(body).to_bytes(4, "big") + body)
        buf = b""
        while True:
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionResetError("klock: connection closed during hello")
                buf += chunk
            n = int.from_bytes(buf[:4], "big")
            if n == 0 or n > _READ_LIMIT:
                raise ConnectionResetError("klock: malformed frame during hello")
            try:
                msg = msgpack.unpackb(buf[4 : 4 + n], raw=False, strict_map_key=False)
            except Exception:
                msg = None
            buf = buf[4 + n :]
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
        with self._wlock:
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                if self._gen > 0:
                    self._reconnects += 1
                self._sock = sock
                self._gen += 1
                gen = self._gen
                self._dial_error = None
                calls = sorted(self._pending.values(), key=lambda c: c.id)
            failed = []
            for c in calls:
                if c.sent_gen == gen:
                    continue
                if c.sends > self.max_resends:
                    failed.append(c)
                    continue
                c.sent_gen = gen
                c.sends += 1
                try:
                    sock.sendall(c.frame)
                except OSError:
                    self._drop(sock)
                    break
        for c in failed:
            with self._lock:
                self._pending.pop(c.id, None)
            c.error = KlockConnectionError(
                "klock: connection to %s broke %d times while %s was in flight"
                % (self.socket_path, c.sends, c.op)
            )
            c.done.set()

    def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            with self._lock:
                while not self._closed and self._sock is None and not self._pending:
                    self._cond.wait()
                if self._closed:
                    return
                sock = self._sock
            if sock is None:
                try:
                    sock = self._dial()
                except OSError as e:
                    with self._lock:
                        self._dial_error = e
                    self._closing.wait(backoff * (0.8 + 0.4 * random.random()))
                    backoff = min(backoff * 2, _BACKOFF_CAP)
                    continue
                backoff = _BACKOFF_FIRST
                self._install(sock)
            self._read(sock)
            with self._lock:
                if self._sock is sock:
                    self._sock = None
            try:
                sock.close()
            except OSError:
                pass

    def _read(self, sock: socket.socket) -> None:
        """Reads and dispatches frames until the connection breaks."""
        buf = bytearray()
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 4:
                n = int.from_bytes(buf[:4], "big")
                if n == 0 or n > _READ_LIMIT:
                    return  # the stream cannot be resynchronised
                if len(buf) < 4 + n:
                    break
                body = bytes(buf[4 : 4 + n])
                del buf[: 4 + n]
                self._dispatch(body)

    def _dispatch(self, body: bytes) -> None:
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception:  # a malformed frame answers nobody; drop it
            return
        if not isinstance(msg, dict):
            return
        call_id = msg.get("id")
        if not isinstance(call_id, int) or call_id <= 0:
            return  # id 0: BAD_FRAME / BAD_REQUEST for a frame we cannot attribute
        result: Optional[Dict[str, Any]] = None
        error: Optional[KlockError] = None
        if msg.get("ok") is True:
            r = msg.get("result")
            result = r if isinstance(r, dict) else {}
        else:
            error = error_from_wire(msg.get("error"))
            if isinstance(error, ShuttingDownError):
                # The daemon is stopping: keep the call pending; it is resent
                # on the next connection, to the restarted daemon.
                return
        with self._lock:
            c = self._pending.pop(call_id, None)
        if c is None:
            return  # timed out, or a duplicate answer to a resent request
        c.result = result
        c.error = error
        c.done.set()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
