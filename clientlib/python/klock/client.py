"""KlockClient: the seed SDK's API, served by klockd over its Unix socket."""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import wire
from ._core import (
    AcquireRounds,
    IdemSource,
    Intent,
    UnavailableRetry,
    intents_args,
    key_path,
    key_paths,
    wait_seconds,
)
from .connection import CLIENT_NAME, Connection
from .errors import KlockError, UnavailableError
from .lease import KeepAlive, Lease
from .autostart import find_daemon, probe

__all__ = ["KlockClient", "Intent"]

_monotonic = time.monotonic
_acquire_tail = wire.acquire_tail
_release_tail = wire.release_tail
_key_paths = key_paths


def _optional(args: Dict[str, Any], **kv: Any) -> Dict[str, Any]:
    for k, v in kv.items():
        if v is not None:
            args[k] = v
    return args


class KlockClient:
    """A client of the klock daemon, with the seed SDK's dict-based API.

    Connects at once to ``klockd`` on a Unix socket, starting it first if
    none runs (see below). One client may be shared
    by any number of threads: requests are pipelined on one connection and
    answered by id. If the daemon restarts, the client redials (capped
    backoff) and resends what was in flight; acquires carry an idempotency
    key, so a resend never creates a second lease.

    ```python
    from klock import KlockClient

    klock = KlockClient()                    # socket from KLOCK_SOCKET, or the default
    klock = KlockClient("/tmp/klockd.sock")  # an explicit socket
    ```

    Which daemon (protocol/README.md "Transport"): the socket named by
    ``socket_path`` or ``$KLOCK_SOCKET``, and only that one; else this
    user's daemon (``/run/user/$UID/klock/klockd.sock`` when that directory
    exists, then ``/tmp/klock-$UID/klockd.sock``), else the system daemon
    (``/run/klock/klockd.sock``) if it lets this user in, else a per-user
    klockd started now from ``PATH`` (one line on stderr says so; it runs
    detached and logs to its state directory). ``KLOCK_NO_AUTOSTART=1`` or
    ``KLOCK_DISABLE_AUTOSTART=1`` turns starting off.

    Args:
        socket_path: the daemon's socket (never autostarted).
        timeout: seconds to wait for each answer (a blocking acquire adds its
            wait to this); on expiry the call raises :class:`KlockTimeoutError`,
            or :class:`DaemonNotRunningError` if the daemon stayed unreachable.

    Raises:
        DaemonNotRunningError: nothing listens on the socket.
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: float = 30.0) -> None:
        named = socket_path or os.environ.get("KLOCK_SOCKET", "")
        self.socket_path: str = named or find_daemon(probe)
        self.timeout: float = float(timeout)
        self._closed = False
        self._reopen_lock = threading.Lock()
        self._idem = IdemSource()
        self._keepalive = KeepAlive(self)
        self._conn = self._open()

    def _open(self) -> Connection:
        conn = Connection(self.socket_path)
        conn.open()
        conn.on_orphan_grant = self._release_orphans
        # Close the socket and stop the reader when the client is collected.
        self._finalizer = weakref.finalize(self, conn.close)
        return conn

    # ----- lifecycle -------------------------------------------------------

    def close(self) -> None:
        """Closes the connection. Calls in flight fail with KlockConnectionError.

        Leases are not released: they expire after their ttl (use
        :meth:`end_session` or the :meth:`lease` context manager for that).
        Leases kept alive by :meth:`lease` are no longer renewed.
        """
        self._closed = True
        self._finalizer()
        self._keepalive.stop()

    def __enter__(self) -> "KlockClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<KlockClient %s%s>" % (self.socket_path, " closed" if self._conn.closed else "")

    @property
    def reconnects(self) -> int:
        """How many times the client reconnected after the connection broke."""
        return self._conn.reconnects

    def _call(self, op: str, tail: bytes, timeout: Optional[float] = None,
              until: Optional[float] = None) -> Dict[str, Any]:
        """Sends one request and returns its result; retries UNAVAILABLE with
        backoff within the timeout (and until ``until``, a monotonic time,
        when given): the retry table's "one call" column."""
        conn = self._conn
        if conn._forked and not self._closed:
            conn = self._after_fork()
        if timeout is None:
            timeout = self.timeout
        start = _monotonic()
        try:
            return conn.call(op, tail, timeout)
        except UnavailableError as e:
            retry = UnavailableRetry(e, start, timeout, until)
        while True:
            time.sleep(retry.pause())
            try:
                return conn.call(op, tail, retry.left())
            except UnavailableError as e:
                retry.last = e

    def _request(self, op: str, args: Optional[Dict[str, Any]] = None,
                 timeout: Optional[float] = None) -> Dict[str, Any]:
        return self._call(op, wire.request_tail(op, args), timeout)

    def _after_fork(self) -> Connection:
        """Gives a forked child its own connection and idempotency keys; the
        parent's are left alone."""
        with self._reopen_lock:
            if self._conn._forked:
                old = self._conn
                self._finalizer.detach()
                old.close()  # closes only the child's copy of the socket
                self._idem.reseed()
                self._keepalive = KeepAlive(self)  # the parent's thread is not here
                self._conn = self._open()
            return self._conn

    def _release_orphans(self, lease_ids: List[str]) -> None:
        """Releases leases granted to acquires whose caller had given up."""
        for lease_id in lease_ids:
            self._conn.submit("release", _release_tail(lease_id))

    # ----- the seed's API --------------------------------------------------

    def register_agent(self, agent_id: str, priority: Optional[int] = None) -> None:
        """Register an agent with a priority. Lower values = older = higher precedence.

        Without a priority the daemon assigns the registration time in ms,
        so agents registered earlier win. Registering again with the same
        priority (or none) is a no-op.

        ```python
        klock.register_agent("senior-bot", 100)
        klock.register_agent("junior-bot", 200)
        ```

        Raises:
            PriorityConflictError: a different priority while the agent holds
                or waits for a lease.
            PermissionDeniedError: the agent belongs to another uid.
        """
        self._request("register_agent", _optional({"agent_id": agent_id}, priority=priority))

    def acquire_lease(
        self,
        agent_id: str,
        session_id: str,
        resource_type: str,
        resource_path: str,
        predicate: str,
        ttl: int,
        *,
        wait_timeout: Optional[int] = None,
        idem: Optional[str] = None,
        bind: Optional[str] = "process",
    ) -> Dict[str, Any]:
        """Attempt to acquire a lease. Returns a Python dict directly.

        ```python
        result = klock.acquire_lease(
            "senior-bot",      # agent_id
            "session-1",       # session_id
            "FILE",            # resource_type
            "/src/auth.ts",    # resource_path
            "MUTATES",         # predicate
            60000              # ttl (ms)
        )
        ```

        Success: ``{"success": True, "lease_id", "agent_id", "session_id",
        "resource", "predicate", "acquired_at", "expires_at", "fence"}``.
        Failure: ``{"success": False, "reason", "wait_time", "held_by",
        "message"}``, ``reason`` one of ``DIE`` (junior: abort and retry after
        ``wait_time`` ms), ``WAIT`` (senior: may wait), ``CONFLICT`` (same
        agent, other session), ``RESOURCE_LOCKED`` (frozen), ``SESSION_EXPIRED``.

        Args:
            wait_timeout: on a WAIT verdict, let the daemon hold the request
                up to this many ms and answer once decided (0/None: at once).
            idem: idempotency key (<= 64 bytes); default a fresh key unique
                to this client, which makes a resend after a reconnect return
                the same lease.
            bind: ``"process"`` (the default) binds the lease to this
                process: klockd ends it the moment the process exits, even
                if it never released it (the grant then has ``bound_pid``;
                ``ttl`` may be 0 for no ttl at all). ``None`` or ``"none"``
                opts out: the lease lives until released or its ttl ends.

        Raises:
            InvalidArgumentError: a bad type, predicate, path or ttl.
            UnknownAgentError: the agent was never registered.
            BindUnavailableError: klockd cannot bind to this process.
        """
        key, named = _key_paths(resource_type, resource_path)
        tail = _acquire_tail(agent_id, session_id, resource_type, key, predicate, ttl,
                             idem or self._idem(), wait_timeout or None, bind, named)
        if wait_timeout:
            return self._call("acquire", tail, self.timeout + wait_seconds(wait_timeout))
        return self._call("acquire", tail)

    def release_lease(self, lease_id: str) -> bool:
        """Release a lease. Returns ``True`` if the lease was found and released.

        Releasing twice, or releasing an expired lease, returns ``False``.

        ```python
        released = klock.release_lease(result["lease_id"])
        assert released is True
        ```
        """
        return self._call("release", _release_tail(lease_id)).get("released") is True

    def active_lease_count(self) -> int:
        """Get the count of currently active leases (expired ones never count).

        ```python
        print(klock.active_lease_count())  # 3
        ```
        """
        return int(self._request("active_lease_count").get("count", 0))

    def evict_expired(self) -> int:
        """Remove expired leases. Returns the number evicted by this call.

        The daemon also expires leases on its own, on time, so this is often 0.

        ```python
        evicted = klock.evict_expired()
        print(f"Evicted {evicted} expired leases")
        ```
        """
        return int(self._request("evict_expired").get("evicted", 0))

    # ----- the rest of the protocol ----------------------------------------

    def hello(self, client: str = CLIENT_NAME) -> Dict[str, Any]:
        """Ask the daemon who it is.

        Returns ``{"server", "protocol", "pid", "max_frame", "started_at"}``.
        (The client also says hello by itself on every connection, to learn
        ``max_frame``.)
        """
        result = self._request("hello", {"client": client})
        max_frame = result.get("max_frame")
        if isinstance(max_frame, int) and max_frame > 0:
            self._conn.max_frame = max_frame
        return result

    def unregister_agent(self, agent_id: str) -> bool:
        """Unregister an agent. Returns ``False`` if it was not registered.

        Raises:
            PriorityConflictError: the agent holds or waits for a lease.
        """
        return bool(self._request("unregister_agent", {"agent_id": agent_id}).get("unregistered", False))

    def acquire_many(
        self,
        agent_id: str,
        session_id: str,
        intents: Sequence[Intent],
        ttl: int,
        *,
        wait_timeout: Optional[int] = None,
        idem: Optional[str] = None,
        bind: Optional[str] = "process",
    ) -> Dict[str, Any]:
        """Acquire several leases, all or nothing (at most 64 intents).

        ```python
        result = klock.acquire_many("agent-1", "s1", [
            ("FILE", "/src/auth.ts", "MUTATES"),
            ("SYMBOL", "auth.login", "CONSUMES"),
        ], 60000)
        if result["success"]:
            lease_ids = [g["lease_id"] for g in result["leases"]]
        ```

        Success: ``{"success": True, "leases": [grant, ...]}``, one grant per
        intent, in order. Failure: the worst verdict over all intents, with
        the same fields as :meth:`acquire_lease`; no lease is created.
        ``bind`` as for :meth:`acquire_lease`.
        """
        args = _optional({"agent_id": agent_id, "session_id": session_id, "ttl": ttl,
                          "intents": intents_args(intents),
                          "idem": idem or self._idem()}, wait_timeout=wait_timeout or None,
                         bind=bind)
        return self._request("acquire_many", args, self.timeout + wait_seconds(wait_timeout))

    def heartbeat_lease(self, lease_id: str, ttl: Optional[int] = None) -> Dict[str, Any]:
        """Extend a lease to now + ``ttl`` ms (default: its current ttl).

        A heartbeat with ``ttl`` makes that the lease's ttl from then on.
        Returns ``{"lease_id", "expires_at"}``.

        Raises:
            NotFoundError: the lease expired or was released.
        """
        return self._call("heartbeat", wire.heartbeat_tail(lease_id, ttl))

    def end_session(self, agent_id: str, session_id: str) -> int:
        """Release every lease of a session; returns how many were released.

        Later acquires in that session are denied with ``SESSION_EXPIRED``
        (klockd remembers the last 1024 sessions each agent ended).
        """
        result = self._request("end_session", {"agent_id": agent_id, "session_id": session_id})
        return int(result.get("released", 0))

    def list_leases(
        self,
        agent_id: Optional[str] = None,
        resource_prefix: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> Dict[str, Any]:
        """List active leases, sorted by resource then fence.

        Returns ``{"leases": [{"lease_id", "agent_id", "session_id",
        "resource", "predicate", "acquired_at", "expires_at", "fence",
        "owner_uid", "owner_pid"}, ...], "truncated": bool}``.

        Args:
            agent_id: only this agent's leases.
            resource_prefix: only resources whose key starts with this
                (``"FILE:/src/"``).
            limit: at most this many (default 1000, at most 10000);
                ``truncated`` says more matched.
        """
        args = _optional({}, agent_id=agent_id, resource_prefix=resource_prefix, limit=limit)
        return self._request("list_leases", args)

    def list_agents(self, limit: Optional[int] = None) -> Dict[str, Any]:
        """List registered agents, sorted by priority.

        Returns ``{"agents": [{"agent_id", "priority", "registered_at",
        "leases", "waiting"}, ...], "truncated": bool}``.
        """
        return self._request("list_agents", _optional({}, limit=limit))

    def stats(self) -> Dict[str, Any]:
        """Get the daemon's counters.

        Returns ``{"uptime_ms", "connections", "agents", "leases", "waiters",
        "ops", "grants", "waits", "dies", "expirations", "fence"}``.
        """
        return self._request("stats")

    def revoke(self, lease_id: str) -> bool:
        """End a lease now, as if it expired (admin: root or the daemon's uid).

        Returns ``False`` if the lease was not active.
        """
        return bool(self._request("revoke", {"lease_id": lease_id}).get("revoked", False))

    def freeze(self, resource_type: str, resource_path: str) -> bool:
        """Deny every acquire on a resource with ``RESOURCE_LOCKED`` (admin).

        Leases already held keep running. Returns the frozen state (True).
        """
        args = {"resource_type": resource_type,
                "resource_path": key_path(resource_type, resource_path)}
        return bool(self._request("freeze", args).get("frozen", False))

    def thaw(self, resource_type: str, resource_path: str) -> bool:
        """Undo :meth:`freeze` (admin). Returns the frozen state (False)."""
        args = {"resource_type": resource_type,
                "resource_path": key_path(resource_type, resource_path)}
        return bool(self._request("thaw", args).get("frozen", False))

    # ----- blocking helpers ------------------------------------------------

    def acquire(
        self,
        agent_id: str,
        session_id: str,
        resource_type: str,
        resource_path: str,
        predicate: str,
        ttl: int,
        timeout: Optional[float] = None,
        bind: Optional[str] = "process",
    ) -> Dict[str, Any]:
        """Acquire a lease, waiting until it is granted. Returns the grant dict.

        On ``WAIT`` the daemon holds the request until the lease is free; on
        ``DIE``, ``CONFLICT`` or ``RESOURCE_LOCKED`` it retries after the
        suggested ``wait_time`` plus jitter (protocol/README.md "Retries"). The lease is not renewed: see
        :meth:`lease` for that.

        ```python
        grant = klock.acquire("agent-1", "s1", "FILE", "/db.ts", "MUTATES", 5000, timeout=30)
        ```

        Args:
            timeout: give up after this many seconds (None: wait forever).

        Raises:
            AcquireTimeoutError: still denied when ``timeout`` ran out; it
                carries the last denial (``reason``, ``held_by``, ...).
            LeaseDeniedError: a denial waiting cannot cure (``SESSION_EXPIRED``).
        """
        return self._acquire_blocking(agent_id, session_id,
                                      [(resource_type, resource_path, predicate)], ttl, timeout,
                                      bind=bind)[0]

    def acquire_all(
        self,
        agent_id: str,
        session_id: str,
        intents: Sequence[Intent],
        ttl: int,
        timeout: Optional[float] = None,
        bind: Optional[str] = "process",
    ) -> Dict[str, Any]:
        """:meth:`acquire_many`, waiting as :meth:`acquire` does until all are granted.

        Returns ``{"success": True, "leases": [grant, ...]}``.
        """
        return self._acquire_blocking(agent_id, session_id, intents, ttl, timeout, many=True,
                                      bind=bind)[0]

    def lease(
        self,
        agent_id: str,
        session_id: str,
        resource_type: str,
        resource_path: str,
        predicate: str,
        ttl: int = 30000,
        timeout: Optional[float] = None,
        on_lost: Optional[Callable[[KlockError], None]] = None,
        bind: Optional[str] = "process",
    ) -> Lease:
        """Acquire a lease (waiting as :meth:`acquire` does) and keep it alive.

        Returns a :class:`Lease`, renewed every ``ttl / 3`` ms by the
        client's keep-alive thread (one for all of its leases), and released
        when the ``with`` block ends::

            with klock.lease("agent-1", "s1", "FILE", "/src/auth.ts", "MUTATES") as lease:
                print(lease.lease_id, lease.fence)
                ...
                lease.check()  # raises LeaseLostError if renewal failed

        Args:
            on_lost: called once, in the keep-alive thread, with a
                :class:`LeaseLostError` if the lease is lost while held.
        """
        grant, sent = self._acquire_blocking(agent_id, session_id,
                                             [(resource_type, resource_path, predicate)], ttl,
                                             timeout, bind=bind)
        return Lease(self, [grant], ttl, on_lost, sent)

    def lease_all(
        self,
        agent_id: str,
        session_id: str,
        intents: Sequence[Intent],
        ttl: int = 30000,
        timeout: Optional[float] = None,
        on_lost: Optional[Callable[[KlockError], None]] = None,
        bind: Optional[str] = "process",
    ) -> Lease:
        """:meth:`lease` for several resources, taken atomically (acquire_many).

        The returned :class:`Lease` holds one grant per intent
        (``lease.grants``), renews them together and releases them together.
        """
        result, sent = self._acquire_blocking(agent_id, session_id, intents, ttl, timeout,
                                              many=True, bind=bind)
        return Lease(self, list(result["leases"]), ttl, on_lost, sent)

    def _acquire_blocking(self, agent_id: str, session_id: str, intents: Sequence[Intent],
                          ttl: int, timeout: Optional[float], many: bool = False,
                          bind: Optional[str] = "process") -> Tuple[Dict[str, Any], float]:
        """The blocking acquire: returns the grant and when the request that
        got it was sent (monotonic)."""
        rounds = AcquireRounds(agent_id, session_id, intents, ttl, timeout, self._idem(), many,
                               bind)
        while True:
            tail = rounds.request()
            try:
                result = self._call(rounds.op, tail, self.timeout + rounds.wait_s, rounds.deadline)
            except KlockError as e:
                pause = rounds.failed(e)
                if pause is None:
                    raise
            else:
                pause = rounds.after(result)
                if pause is None:
                    return result, rounds.sent
            if pause > 0:
                time.sleep(pause)

