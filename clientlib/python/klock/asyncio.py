"""The klock client for asyncio: the seed's API as coroutines, with no threads.

::

    from klock.asyncio import KlockClient

    async def main() -> None:
        async with KlockClient() as klock:
            await klock.register_agent("senior-bot", 100)
            result = await klock.acquire_lease("senior-bot", "s1", "FILE", "/src/auth.ts",
                                               "MUTATES", 60000)
            if result["success"]:
                await klock.release_lease(result["lease_id"])

            async with klock.lease("senior-bot", "s1", "FILE", "/src/db.ts", "MUTATES") as lease:
                ...  # renewed in the background until the block ends

Every method returns what the sync :class:`klock.KlockClient`'s does (the
same dicts, the same errors). The connection is built on asyncio streams and
one reader task; it is opened by the first call (or ``async with``), and when
it breaks the reader task redials with capped backoff and resends every
request in flight, acquires with their ``idem`` key, as the sync client does.
Kept-alive leases are renewed by one task per client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any, Callable, Dict, Generator, List, Optional, Sequence, Set, Tuple

from . import wire
from ._core import (
    AcquireRounds,
    IdemSource,
    Intent,
    Redial,
    UnavailableRetry,
    intents_args,
    key_path,
    key_paths,
    wait_seconds,
)
from .errors import (
    BadFrameError,
    DaemonNotRunningError,
    KlockConnectionError,
    KlockError,
    KlockTimeoutError,
    LeaseLostError,
    ShuttingDownError,
    UnavailableError,
    error_from_wire,
)
from .lease import LeaseState
from .autostart import find_daemon, probe

__all__ = ["KlockClient", "AsyncLease"]

log = logging.getLogger("klock")

_HANDSHAKE_TIMEOUT = 5.0
_ACQUIRE_OPS = frozenset({"acquire", "acquire_many"})

_monotonic = time.monotonic


class _Call:
    __slots__ = ("id", "op", "frame", "future", "sent_gen", "sends", "orphan")

    def __init__(self, call_id: int, op: str, frame: bytes, future: "asyncio.Future[Any]") -> None:
        self.id = call_id
        self.op = op
        self.frame = frame
        self.future = future
        self.sent_gen = 0
        self.sends = 0
        self.orphan = False


class _Connection:
    """One pipelined connection on asyncio streams, redialled by its reader task."""

    def __init__(self, socket_path: str, max_resends: int = 8) -> None:
        self.socket_path = socket_path
        self.max_resends = max_resends
        self.max_frame = wire.DEFAULT_MAX_FRAME
        self.reconnects = 0
        self.on_orphan_grant: Optional[Callable[[List[str]], None]] = None
        self._ids = itertools.count(1)
        self._pending: Dict[int, _Call] = {}
        self._writer: Optional[asyncio.StreamWriter] = None
        self._gen = 0
        self._closed = False
        self._dial_error: Optional[BaseException] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._need: Optional[asyncio.Event] = None  # set when a call needs a connection
        self._stopping: Optional[asyncio.Event] = None  # set by close() and redial_now()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def in_flight(self) -> int:
        return len(self._pending)

    def redial_now(self) -> None:
        """Cuts a redial backoff sleep short; see :meth:`klock.connection.Connection.redial_now`."""
        if self._stopping is not None and not self._closed:
            self._stopping.set()

    async def open(self) -> None:
        """Dials once and starts the reader task.

        Raises:
            DaemonNotRunningError: nothing listens on the socket.
            KlockConnectionError: the socket exists but cannot be used.
        """
        self._need = asyncio.Event()
        self._stopping = asyncio.Event()
        try:
            reader, writer = await self._dial()
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            raise DaemonNotRunningError(self.socket_path, e) from None
        except OSError as e:
            raise KlockConnectionError("klock: cannot connect to %s: %s" % (self.socket_path, e)) from None
        self._install(writer)
        self._task = asyncio.ensure_future(self._run(reader))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in self._pending.values():
            if not c.future.done():
                c.future.set_exception(
                    KlockConnectionError("klock: client closed while %s was in flight" % c.op))
        self._pending.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._stopping is not None:
            self._stopping.set()
        if self._need is not None:
            self._need.set()
        await _cancel(self._task)

    # ----- calls -----------------------------------------------------------

    async def call(self, op: str, tail: bytes, timeout: float) -> Dict[str, Any]:
        if self._closed:
            raise KlockConnectionError("klock: client is closed")
        call_id = next(self._ids)
        frame = wire.frame(tail, call_id)
        if len(frame) - 4 > self.max_frame:
            raise BadFrameError("klock: %s request is %d bytes, over the daemon's max_frame of %d"
                                % (op, len(frame) - 4, self.max_frame))
        c = _Call(call_id, op, frame, asyncio.get_running_loop().create_future())
        self._pending[call_id] = c
        writer = self._writer
        if writer is None:
            assert self._need is not None
            self._need.set()  # the reader task redials and sends it
        else:
            c.sent_gen, c.sends = self._gen, 1
            writer.write(frame)
        try:
            return await asyncio.wait_for(asyncio.shield(c.future), timeout)
        except asyncio.TimeoutError:
            self._abandon(c)
            if self._writer is None and self._dial_error is not None:
                raise DaemonNotRunningError(self.socket_path, self._dial_error) from None
            raise KlockTimeoutError("klock: no answer to %s from %s within %.3gs"
                                    % (op, self.socket_path, timeout)) from None
        except asyncio.CancelledError:
            self._abandon(c)
            raise

    def _abandon(self, c: _Call) -> None:
        """Forgets a call nobody waits for; a late grant to an acquire is released."""
        if c.future.done():
            return
        if c.op in _ACQUIRE_OPS and self._writer is not None:
            c.orphan = True
        else:
            self._pending.pop(c.id, None)
        c.future.cancel()

    # ----- the reader task -------------------------------------------------

    async def _run(self, reader: Optional[asyncio.StreamReader]) -> None:
        redial = Redial()
        assert self._need is not None and self._stopping is not None
        while not self._closed:
            if reader is not None:
                await self._read(reader)
                reader = None
                writer, self._writer = self._writer, None
                if writer is not None:
                    writer.close()
                continue
            if not self._pending:
                self._need.clear()
                await self._need.wait()
                continue
            try:
                reader, writer = await self._dial()
            except OSError as e:
                self._dial_error = e
                log.debug("klock: redialling %s failed: %s", self.socket_path, e)
                try:
                    await asyncio.wait_for(self._stopping.wait(), redial.next())
                except asyncio.TimeoutError:
                    pass
                else:
                    if not self._closed:  # redial_now(): try again at once
                        self._stopping.clear()
                        redial.reset()
                continue
            redial.reset()
            self.reconnects += 1
            log.info("klock: reconnected to %s", self.socket_path)
            self._install(writer)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Reads and delivers answers until the connection breaks."""
        while True:
            try:
                head = await reader.readexactly(4)
                n = int.from_bytes(head, "big")
                if n == 0 or n > wire.READ_LIMIT:
                    return  # the stream cannot be resynchronised
                body = await reader.readexactly(n)
            except (OSError, asyncio.IncompleteReadError):
                return
            self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        try:
            msg = wire.decode(body)
        except Exception:  # a malformed frame answers nobody
            return
        if type(msg) is not dict:
            return
        c = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
        if c is None:
            return
        if msg.get("ok") is True:
            r = msg.get("result")
            result = r if type(r) is dict else {}
            del self._pending[c.id]
            if c.orphan:
                self._orphan_grant(result)
            elif not c.future.done():
                c.future.set_result(result)
            return
        err = error_from_wire(msg.get("error"))
        if isinstance(err, ShuttingDownError):
            return  # resent on the next connection, to the restarted daemon
        del self._pending[c.id]
        if not c.future.done():
            c.future.set_exception(err)

    def _orphan_grant(self, result: Dict[str, Any]) -> None:
        if not result.get("success") or self.on_orphan_grant is None:
            return
        ids = [g.get("lease_id") for g in result.get("leases", [result])]
        self.on_orphan_grant([i for i in ids if isinstance(i, str)])

    async def _dial(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.socket_path), _HANDSHAKE_TIMEOUT)
        try:
            await asyncio.wait_for(self._hello(reader, writer), _HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:
            writer.close()
            raise ConnectionRefusedError("klock: %s did not answer hello" % self.socket_path) from None
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello_id = next(self._ids)
        writer.write(wire.frame(wire.request_tail("hello", {"client": wire.CLIENT_NAME}), hello_id))
        while True:
            try:
                n = int.from_bytes(await reader.readexactly(4), "big")
                if n == 0 or n > wire.READ_LIMIT:
                    raise ConnectionResetError("klock: malformed frame during hello")
                body = await reader.readexactly(n)
            except asyncio.IncompleteReadError:
                raise ConnectionResetError("klock: connection closed during hello") from None
            try:
                msg = wire.decode(body)
            except Exception:
                continue
            if isinstance(msg, dict) and msg.get("id") == hello_id:
                break
        if msg.get("ok") is True:
            result = msg.get("result")
            max_frame = result.get("max_frame") if isinstance(result, dict) else None
            if isinstance(max_frame, int) and max_frame > 0:
                self.max_frame = max_frame
            return
        if isinstance(error_from_wire(msg.get("error")), ShuttingDownError):
            raise ConnectionRefusedError("klock: daemon is shutting down")

    def _install(self, writer: asyncio.StreamWriter) -> None:
        """Makes writer current and resends what is in flight, in id order."""
        self._writer = writer
        self._gen += 1
        self._dial_error = None
        for c in sorted(self._pending.values(), key=lambda c: c.id):
            if c.orphan:
                del self._pending[c.id]
            elif c.sends > self.max_resends:
                del self._pending[c.id]
                if not c.future.done():
                    c.future.set_exception(KlockConnectionError(
                        "klock: connection to %s broke %d times while %s was in flight"
                        % (self.socket_path, c.sends, c.op)))
            elif c.sent_gen != self._gen:
                c.sent_gen = self._gen
                c.sends += 1
                writer.write(c.frame)


class KlockClient:
    """The seed SDK's client for asyncio: every method is a coroutine.

    The connection opens on the first call, or on ``async with``::

        async with KlockClient() as klock:
            await klock.register_agent("agent-1", 100)

    Which daemon, and starting one on first use: as :class:`klock.KlockClient`.

    Args:
        socket_path: the daemon's socket (never autostarted).
        timeout: seconds to wait for each answer (a waiting acquire adds its wait).
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: float = 30.0) -> None:
        self.socket_path: str = socket_path or os.environ.get("KLOCK_SOCKET") or ""
        self.timeout: float = float(timeout)
        self._conn = _Connection(self.socket_path)
        self._conn.on_orphan_grant = self._release_orphans
        self._opened = False
        self._open_lock: Optional[asyncio.Lock] = None
        self._idem = IdemSource()
        self._keepalive = _KeepAlive(self)

    async def connect(self) -> "KlockClient":
        """Opens the connection now (the first call does it otherwise).

        Raises:
            DaemonNotRunningError: nothing listens on the socket.
        """
        if self._opened:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                if not self.socket_path:
                    # Probing (and starting klockd on first use) is quick
                    # local work, done here rather than on a thread.
                    self.socket_path = self._conn.socket_path = find_daemon(probe)
                await self._conn.open()
                self._opened = True
        return self

    async def close(self) -> None:
        """Closes the connection and stops renewing leases (they expire after their ttl)."""
        await self._keepalive.stop()
        await self._conn.close()

    async def __aenter__(self) -> "KlockClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "<klock.asyncio.KlockClient %s%s>" % (self.socket_path,
                                                     " closed" if self._conn.closed else "")

    @property
    def reconnects(self) -> int:
        """How many times the client reconnected after the connection broke."""
        return self._conn.reconnects

    async def _call(self, op: str, tail: bytes, timeout: Optional[float] = None,
                    until: Optional[float] = None) -> Dict[str, Any]:
        """See :meth:`klock.KlockClient._call`."""
        if not self._opened:
            await self.connect()
        if timeout is None:
            timeout = self.timeout
        start = _monotonic()
        try:
            return await self._conn.call(op, tail, timeout)
        except UnavailableError as e:
            retry = UnavailableRetry(e, start, timeout, until)
        while True:
            await asyncio.sleep(retry.pause())
            try:
                return await self._conn.call(op, tail, retry.left())
            except UnavailableError as e:
                retry.last = e

    async def _request(self, op: str, args: Optional[Dict[str, Any]] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        return await self._call(op, wire.request_tail(op, args), timeout)

    def _release_orphans(self, lease_ids: List[str]) -> None:
        for lease_id in lease_ids:
            asyncio.ensure_future(self._release_quietly(lease_id))

    async def _release_quietly(self, lease_id: str) -> None:
        try:
            await self.release_lease(lease_id)
        except KlockError as e:
            log.warning("klock: releasing lease %s granted after its caller gave up: %s", lease_id, e)

    # ----- the seed's API --------------------------------------------------

    async def register_agent(self, agent_id: str, priority: Optional[int] = None) -> None:
        """See :meth:`klock.KlockClient.register_agent`."""
        args: Dict[str, Any] = {"agent_id": agent_id}
        if priority is not None:
            args["priority"] = priority
        await self._request("register_agent", args)

    async def acquire_lease(self, agent_id: str, session_id: str, resource_type: str,
                            resource_path: str, predicate: str, ttl: int, *,
                            wait_timeout: Optional[int] = None,
                            idem: Optional[str] = None,
                            bind: Optional[str] = "process") -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.acquire_lease`: the grant or denial dict.

        ``bind="process"`` (the default) ends the lease when this process exits.
        """
        key, named = key_paths(resource_type, resource_path)
        tail = wire.acquire_tail(agent_id, session_id, resource_type, key, predicate, ttl,
                                 idem or self._idem(), wait_timeout or None, bind, named)
        return await self._call("acquire", tail, self.timeout + wait_seconds(wait_timeout))

    async def release_lease(self, lease_id: str) -> bool:
        """See :meth:`klock.KlockClient.release_lease`."""
        return (await self._call("release", wire.release_tail(lease_id))).get("released") is True

    async def active_lease_count(self) -> int:
        """See :meth:`klock.KlockClient.active_lease_count`."""
        return int((await self._request("active_lease_count")).get("count", 0))

    async def evict_expired(self) -> int:
        """See :meth:`klock.KlockClient.evict_expired`."""
        return int((await self._request("evict_expired")).get("evicted", 0))

    # ----- the rest of the protocol ----------------------------------------

    async def hello(self, client: str = wire.CLIENT_NAME) -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.hello`."""
        return await self._request("hello", {"client": client})

    async def unregister_agent(self, agent_id: str) -> bool:
        """See :meth:`klock.KlockClient.unregister_agent`."""
        return bool((await self._request("unregister_agent", {"agent_id": agent_id}))
                    .get("unregistered", False))

    async def acquire_many(self, agent_id: str, session_id: str, intents: Sequence[Intent],
                           ttl: int, *, wait_timeout: Optional[int] = None,
                           idem: Optional[str] = None,
                           bind: Optional[str] = "process") -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.acquire_many`."""
        args: Dict[str, Any] = {"agent_id": agent_id, "session_id": session_id, "ttl": ttl,
                                "intents": intents_args(intents),
                                "idem": idem or self._idem()}
        if wait_timeout:
            args["wait_timeout"] = wait_timeout
        if bind is not None:
            args["bind"] = bind
        return await self._request("acquire_many", args, self.timeout + wait_seconds(wait_timeout))

    async def heartbeat_lease(self, lease_id: str, ttl: Optional[int] = None) -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.heartbeat_lease`."""
        return await self._call("heartbeat", wire.heartbeat_tail(lease_id, ttl))

    async def end_session(self, agent_id: str, session_id: str) -> int:
        """See :meth:`klock.KlockClient.end_session`."""
        result = await self._request("end_session", {"agent_id": agent_id, "session_id": session_id})
        return int(result.get("released", 0))

    async def list_leases(self, agent_id: Optional[str] = None,
                          resource_prefix: Optional[str] = None,
                          limit: Optional[int] = None) -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.list_leases`."""
        args = {k: v for k, v in (("agent_id", agent_id), ("resource_prefix", resource_prefix),
                                  ("limit", limit)) if v is not None}
        return await self._request("list_leases", args)

    async def list_agents(self, limit: Optional[int] = None) -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.list_agents`."""
        return await self._request("list_agents", None if limit is None else {"limit": limit})

    async def stats(self) -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.stats`."""
        return await self._request("stats")

    async def revoke(self, lease_id: str) -> bool:
        """See :meth:`klock.KlockClient.revoke` (admin)."""
        return bool((await self._request("revoke", {"lease_id": lease_id})).get("revoked", False))

    async def freeze(self, resource_type: str, resource_path: str) -> bool:
        """See :meth:`klock.KlockClient.freeze` (admin)."""
        args = {"resource_type": resource_type,
                "resource_path": key_path(resource_type, resource_path)}
        return bool((await self._request("freeze", args)).get("frozen", False))

    async def thaw(self, resource_type: str, resource_path: str) -> bool:
        """See :meth:`klock.KlockClient.thaw` (admin)."""
        args = {"resource_type": resource_type,
                "resource_path": key_path(resource_type, resource_path)}
        return bool((await self._request("thaw", args)).get("frozen", False))

    # ----- blocking helpers ------------------------------------------------

    async def acquire(self, agent_id: str, session_id: str, resource_type: str,
                      resource_path: str, predicate: str, ttl: int,
                      timeout: Optional[float] = None,
                      bind: Optional[str] = "process") -> Dict[str, Any]:
        """Acquire a lease, waiting (in the daemon on WAIT) until it is granted.

        See :meth:`klock.KlockClient.acquire`.
        """
        return (await self._acquire_blocking(agent_id, session_id,
                                             [(resource_type, resource_path, predicate)], ttl,
                                             timeout, bind=bind))[0]

    async def acquire_all(self, agent_id: str, session_id: str, intents: Sequence[Intent],
                          ttl: int, timeout: Optional[float] = None,
                          bind: Optional[str] = "process") -> Dict[str, Any]:
        """See :meth:`klock.KlockClient.acquire_all`."""
        return (await self._acquire_blocking(agent_id, session_id, intents, ttl, timeout,
                                             many=True, bind=bind))[0]

    def lease(self, agent_id: str, session_id: str, resource_type: str, resource_path: str,
              predicate: str, ttl: int = 30000, timeout: Optional[float] = None,
              on_lost: Optional[Callable[[KlockError], None]] = None,
              bind: Optional[str] = "process") -> "_LeaseRequest":
        """Acquire a lease (waiting as :meth:`acquire` does) and keep it alive.

        Use ``async with klock.lease(...) as lease:`` (released when the block
        ends), or ``lease = await klock.lease(...)`` and ``await
        lease.release()``. See :meth:`klock.KlockClient.lease`.
        """
        return _LeaseRequest(self, agent_id, session_id,
                             [(resource_type, resource_path, predicate)], ttl, timeout, on_lost,
                             many=False, bind=bind)

    def lease_all(self, agent_id: str, session_id: str, intents: Sequence[Intent],
                  ttl: int = 30000, timeout: Optional[float] = None,
                  on_lost: Optional[Callable[[KlockError], None]] = None,
                  bind: Optional[str] = "process") -> "_LeaseRequest":
        """:meth:`lease` for several resources, taken atomically (acquire_many)."""
        return _LeaseRequest(self, agent_id, session_id, intents, ttl, timeout, on_lost,
                             many=True, bind=bind)

    async def _acquire_blocking(self, agent_id: str, session_id: str, intents: Sequence[Intent],
                                ttl: int, timeout: Optional[float],
                                many: bool = False,
                                bind: Optional[str] = "process") -> Tuple[Dict[str, Any], float]:
        rounds = AcquireRounds(agent_id, session_id, intents, ttl, timeout, self._idem(), many,
                               bind)
        while True:
            tail = rounds.request()
            try:
                result = await self._call(rounds.op, tail, self.timeout + rounds.wait_s,
                                          rounds.deadline)
            except KlockError as e:
                pause = rounds.failed(e)
                if pause is None:
                    raise
            else:
                pause = rounds.after(result)
                if pause is None:
                    return result, rounds.sent
            if pause > 0:
                await asyncio.sleep(pause)


class _LeaseRequest:
    """What :meth:`KlockClient.lease` returns: await it, or use it with ``async with``."""

    def __init__(self, client: KlockClient, agent_id: str, session_id: str,
                 intents: Sequence[Intent], ttl: int, timeout: Optional[float],
                 on_lost: Optional[Callable[[KlockError], None]], many: bool,
                 bind: Optional[str]) -> None:
        self._client = client
        self._args = (agent_id, session_id, intents, ttl, timeout)
        self._on_lost = on_lost
        self._many = many
        self._bind = bind
        self._lease: Optional[AsyncLease] = None

    async def _take(self) -> "AsyncLease":
        agent_id, session_id, intents, ttl, timeout = self._args
        result, sent = await self._client._acquire_blocking(agent_id, session_id, intents, ttl,
                                                            timeout, many=self._many,
                                                            bind=self._bind)
        grants = list(result["leases"]) if self._many else [result]
        self._lease = AsyncLease(self._client, grants, ttl, self._on_lost, sent)
        return self._lease

    def __await__(self) -> Generator[Any, None, "AsyncLease"]:
        return self._take().__await__()

    async def __aenter__(self) -> "AsyncLease":
        return await self._take()

    async def __aexit__(self, *exc: Any) -> None:
        if self._lease is not None:
            await self._lease.release()


class AsyncLease(LeaseState):
    """Granted leases kept alive by the asyncio client's keep-alive task.

    The asyncio twin of :class:`klock.Lease`: :attr:`lost`, :meth:`check`,
    ``on_lost``; :meth:`release` and :meth:`wait_lost` are coroutines.
    """

    def __init__(self, client: KlockClient, grants: List[Dict[str, Any]], ttl: int,
                 on_lost: Optional[Callable[[KlockError], None]] = None,
                 sent: Optional[float] = None) -> None:
        super().__init__(grants, ttl, on_lost, sent)
        self._client = client
        self._lost_event = asyncio.Event()
        if self.renewable:
            client._keepalive.add(self)

    async def __aenter__(self) -> "AsyncLease":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()

    async def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Waits until the lease is lost or ``timeout`` seconds pass; returns :attr:`lost`."""
        try:
            await asyncio.wait_for(self._lost_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.lost

    async def release(self) -> bool:
        """Stops renewing and releases every grant; see :meth:`klock.Lease.release`."""
        self._client._keepalive.remove(self)
        if not self._begin_release():
            return False
        released = [await self._client.release_lease(i) for i in self.lease_ids]
        return all(released)

    def report_lost(self, err: LeaseLostError) -> None:
        self._lost_event.set()
        super().report_lost(err)


class _KeepAlive:
    """Renews every kept-alive lease of one asyncio client, from one task."""

    def __init__(self, client: KlockClient) -> None:
        self._client = client
        self._leases: Set[AsyncLease] = set()
        self._task: Optional["asyncio.Task[None]"] = None
        self._changed: Optional[asyncio.Event] = None

    def add(self, lease: AsyncLease) -> None:
        self._leases.add(lease)
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def remove(self, lease: AsyncLease) -> None:
        self._leases.discard(lease)
        if self._changed is not None:
            self._changed.set()

    async def stop(self) -> None:
        self._leases.clear()
        task, self._task = self._task, None
        await _cancel(task)

    async def _run(self) -> None:
        assert self._changed is not None
        while self._leases:
            now = _monotonic()
            due = [lease for lease in self._leases if lease.due <= now]
            if not due:
                self._changed.clear()
                wait = min(lease.due for lease in self._leases) - now
                try:
                    await asyncio.wait_for(self._changed.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            await asyncio.gather(*(self._renew(lease) for lease in due))

    async def _renew(self, lease: AsyncLease) -> None:
        # Never wait for an answer past the end of this try.
        timeout = min(max(lease.renew_wait(), 0.001), self._client.timeout)
        sent = _monotonic()
        try:
            results = await asyncio.gather(*(
                self._client._call("heartbeat", wire.heartbeat_tail(i), timeout)
                for i in lease.lease_ids))
        except KlockError as e:
            last_try = lease.last_try
            err = lease.renewal_failed(e)
            if err is not None:
                self.remove(lease)
                lease.report_lost(err)
            elif lease.last_try and not last_try:
                self._client._conn.redial_now()  # see klock.lease.KeepAlive._failed
            return
        lease.renewed(list(results), sent)


async def _cancel(task: Optional["asyncio.Task[None]"]) -> None:
    """Cancels a background task (unless it is the caller) and waits for it to end."""
    if task is None or task is asyncio.current_task():
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
