"""KlockClient: the seed SDK's API, served by klockd over its Unix socket."""

from __future__ import annotations

import random
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from .connection import CLIENT_NAME, Connection
from .errors import AcquireTimeoutError, KlockError, LeaseDeniedError
from .lease import Lease
from .socketpath import default_socket_path

__all__ = ["KlockClient", "Intent"]

#: One intent of :meth:`KlockClient.acquire_many`: a
#: ``(resource_type, resource_path, predicate)`` tuple or a dict with those keys.
Intent = Union[Tuple[str, str, str], Mapping[str, str]]

# A blocking acquire parks in the daemon at most this long per round trip, so
# a lost answer is noticed and the overall timeout is honoured.
_MAX_WAIT_ROUND_MS = 30000

# Denials that waiting cannot cure: the blocking helpers raise at once.
_FINAL_REASONS = frozenset({"CONFLICT", "SESSION_EXPIRED"})


def _new_idem() -> str:
    return uuid.uuid4().hex


def _optional(args: Dict[str, Any], **kv: Any) -> Dict[str, Any]:
    for k, v in kv.items():
        if v is not None:
            args[k] = v
    return args


class KlockClient:
    """A client of the klock daemon, with the seed SDK's dict-based API.

    Connects at once to ``klockd`` on a Unix socket. One client may be shared
    by any number of threads: requests are pipelined on one connection and
    answered by id. If the daemon restarts, the client redials (capped
    backoff) and resends what was in flight; acquires carry an idempotency
    key, so a resend never creates a second lease.

    ```python
    from klock import KlockClient

    klock = KlockClient()                    # socket from KLOCK_SOCKET, or the default
    klock = KlockClient("/tmp/klockd.sock")  # an explicit socket
    ```

    Args:
        socket_path: the daemon's socket; default :func:`default_socket_path`
            (``$KLOCK_SOCKET``, ``/run/klock/klockd.sock`` as root,
            ``$XDG_RUNTIME_DIR/klock/klockd.sock``, ``/tmp/klock-$UID/klockd.sock``).
        timeout: seconds to wait for each answer (a blocking acquire adds its
            wait to this); on expiry the call raises :class:`KlockTimeoutError`,
            or :class:`DaemonNotRunningError` if the daemon stayed unreachable.

    Raises:
        DaemonNotRunningError: nothing listens on the socket.
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: float = 30.0) -> None:
        self.socket_path: str = socket_path or default_socket_path()
        self.timeout: float = float(timeout)
        self._closed = False
        self._reopen_lock = threading.Lock()
        self._conn = self._open()

    def _open(self) -> Connection:
        conn = Connection(self.socket_path)
        conn.open()
        # Close the socket and stop the reader when the client is collected.
        self._finalizer = weakref.finalize(self, conn.close)
        return conn

    # ----- lifecycle -------------------------------------------------------

    def close(self) -> None:
        """Closes the connection. Calls in flight fail with KlockConnectionError.

        Leases are not released: they expire after their ttl (use
        :meth:`end_session` or the :meth:`lease` context manager for that).
        """
        self._closed = True
        self._finalizer()

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

    def _call(self, op: str, args: Optional[Dict[str, Any]] = None,
              timeout: Optional[float] = None) -> Dict[str, Any]:
        conn = self._conn
        if conn.forked and not self._closed:
            conn = self._after_fork()
        return conn.call(op, args, self.timeout if timeout is None else timeout)

    def _after_fork(self) -> Connection:
        """Gives a forked child its own connection; the parent's is left alone."""
        with self._reopen_lock:
            if self._conn.forked:
                old = self._conn
                self._finalizer.detach()
                old.close()  # closes only the child's copy of the socket
                self._conn = self._open()
            return self._conn

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
        self._call("register_agent", _optional({"agent_id": agent_id}, priority=priority))

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
            idem: idempotency key (<= 64 bytes); default a fresh random key,
                which makes a resend after a reconnect return the same lease.

        Raises:
            InvalidArgumentError: a bad type, predicate, path or ttl.
            UnknownAgentError: the agent was never registered.
        """
        args = {
            "agent_id": agent_id,
            "session_id": session_id,
            "resource_type": resource_type,
            "resource_path": resource_path,
            "predicate": predicate,
            "ttl": ttl,
            "idem": idem if idem is not None else _new_idem(),
        }
        return self._acquire("acquire", _optional(args, wait_timeout=wait_timeout or None))

    def release_lease(self, lease_id: str) -> bool:
        """Release a lease. Returns ``True`` if the lease was found and released.

        Releasing twice, or releasing an expired lease, returns ``False``.

        ```python
        released = klock.release_lease(result["lease_id"])
        assert released is True
        ```
        """
        return bool(self._call("release", {"lease_id": lease_id}).get("released", False))

    def active_lease_count(self) -> int:
        """Get the count of currently active leases (expired ones never count).

        ```python
        print(klock.active_lease_count())  # 3
        ```
        """
        return int(self._call("active_lease_count").get("count", 0))

    def evict_expired(self) -> int:
        """Remove expired leases. Returns the number evicted by this call.

        The daemon also expires leases on its own, on time, so this is often 0.

        ```python
        evicted = klock.evict_expired()
        print(f"Evicted {evicted} expired leases")
        ```
        """
        return int(self._call("evict_expired").get("evicted", 0))

    # ----- the rest of the protocol ----------------------------------------

    def hello(self, client: str = CLIENT_NAME) -> Dict[str, Any]:
        """Ask the daemon who it is.

        Returns ``{"server", "protocol", "pid", "max_frame", "started_at"}``.
        (The client also says hello by itself on every connection, to learn
        ``max_frame``.)
        """
        result = self._call("hello", {"client": client})
        max_frame = result.get("max_frame")
        if isinstance(max_frame, int) and max_frame > 0:
            self._conn.max_frame = max_frame
        return result

    def unregister_agent(self, agent_id: str) -> bool:
        """Unregister an agent. Returns ``False`` if it was not registered.

        Raises:
            PriorityConflictError: the agent holds or waits for a lease.
        """
        return bool(self._call("unregister_agent", {"agent_id": agent_id}).get("unregistered", False))

    def acquire_many(
        self,
        agent_id: str,
        session_id: str,
        intents: Sequence[Intent],
        ttl: int,
        *,
        wait_timeout: Optional[int] = None,
        idem: Optional[str] = None,
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
        """
        args = {
            "agent_id": agent_id,
            "session_id": session_id,
            "ttl": ttl,
            "intents": [_intent(i) for i in intents],
            "idem": idem if idem is not None else _new_idem(),
        }
        return self._acquire("acquire_many", _optional(args, wait_timeout=wait_timeout or None))

    def heartbeat_lease(self, lease_id: str, ttl: Optional[int] = None) -> Dict[str, Any]:
        """Extend a lease to now + ``ttl`` ms (default: its current ttl).

        A heartbeat with ``ttl`` makes that the lease's ttl from then on.
        Returns ``{"lease_id", "expires_at"}``.

        Raises:
            NotFoundError: the lease expired or was released.
        """
        return self._call("heartbeat", _optional({"lease_id": lease_id}, ttl=ttl))

    def end_session(self, agent_id: str, session_id: str) -> int:
        """Release every lease of a session; returns how many were released.

        Later acquires in that session are denied with ``SESSION_EXPIRED``
        (klockd remembers the last 1024 sessions each agent ended).
        """
        result = self._call("end_session", {"agent_id": agent_id, "session_id": session_id})
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
        return self._call("list_leases", args)

    def list_agents(self, limit: Optional[int] = None) -> Dict[str, Any]:
        """List registered agents, sorted by priority.

        Returns ``{"agents": [{"agent_id", "priority", "registered_at",
        "leases", "waiting"}, ...], "truncated": bool}``.
        """
        return self._call("list_agents", _optional({}, limit=limit))

    def stats(self) -> Dict[str, Any]:
        """Get the daemon's counters.

        Returns ``{"uptime_ms", "connections", "agents", "leases", "waiters",
        "ops", "grants", "waits", "dies", "expirations", "fence"}``.
        """
        return self._call("stats")

    def revoke(self, lease_id: str) -> bool:
        """End a lease now, as if it expired (admin: root or the daemon's uid).

        Returns ``False`` if the lease was not active.
        """
        return bool(self._call("revoke", {"lease_id": lease_id}).get("revoked", False))

    def freeze(self, resource_type: str, resource_path: str) -> bool:
        """Deny every acquire on a resource with ``RESOURCE_LOCKED`` (admin).

        Leases already held keep running. Returns the frozen state (True).
        """
        args = {"resource_type": resource_type, "resource_path": resource_path}
        return bool(self._call("freeze", args).get("frozen", False))

    def thaw(self, resource_type: str, resource_path: str) -> bool:
        """Undo :meth:`freeze` (admin). Returns the frozen state (False)."""
        args = {"resource_type": resource_type, "resource_path": resource_path}
        return bool(self._call("thaw", args).get("frozen", False))

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
    ) -> Dict[str, Any]:
        """Acquire a lease, waiting until it is granted. Returns the grant dict.

        On ``WAIT`` the daemon holds the request until the lease is free; on
        ``DIE`` (or ``RESOURCE_LOCKED``) it retries after the suggested
        ``wait_time`` plus jitter. The lease is not renewed: see
        :meth:`lease` for that.

        ```python
        grant = klock.acquire("agent-1", "s1", "FILE", "/db.ts", "MUTATES", 5000, timeout=30)
        ```

        Args:
            timeout: give up after this many seconds (None: wait forever).

        Raises:
            AcquireTimeoutError: still denied when ``timeout`` ran out; it
                carries the last denial (``reason``, ``held_by``, ...).
            LeaseDeniedError: a denial waiting cannot cure (``CONFLICT``,
                ``SESSION_EXPIRED``).
        """
        args = {
            "agent_id": agent_id,
            "session_id": session_id,
            "resource_type": resource_type,
            "resource_path": resource_path,
            "predicate": predicate,
            "ttl": ttl,
            "idem": _new_idem(),
        }
        return self._acquire_blocking("acquire", args, timeout)

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
    ) -> Lease:
        """Acquire a lease (waiting as :meth:`acquire` does) and keep it alive.

        Returns a :class:`Lease`, renewed by a background thread every
        ``ttl / 3`` ms and released when the ``with`` block ends::

            with klock.lease("agent-1", "s1", "FILE", "/src/auth.ts", "MUTATES") as lease:
                print(lease.lease_id, lease.fence)
                ...
                lease.check()  # raises LeaseLostError if renewal failed

        Args:
            on_lost: called once, in the keep-alive thread, with a
                :class:`LeaseLostError` if the lease is lost while held.
        """
        grant = self.acquire(agent_id, session_id, resource_type, resource_path, predicate,
                             ttl, timeout)
        return Lease(self, grant, ttl, on_lost)

    def _acquire(self, op: str, args: Dict[str, Any]) -> Dict[str, Any]:
        wait = args.get("wait_timeout")
        timeout = self.timeout
        if isinstance(wait, int) and wait > 0:
            timeout += wait / 1000.0
        return self._call(op, args, timeout)

    def _acquire_blocking(self, op: str, args: Dict[str, Any],
                          timeout: Optional[float]) -> Dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = _MAX_WAIT_ROUND_MS
            if deadline is not None:
                wait_ms = min(wait_ms, int((deadline - time.monotonic()) * 1000))
            round_args = dict(args)
            if wait_ms > 0:
                round_args["wait_timeout"] = wait_ms
            started = time.monotonic()
            result = self._acquire(op, round_args)
            if result.get("success"):
                return result
            reason = str(result.get("reason", ""))
            what = "%s on %s:%s" % (op, args.get("resource_type"), args.get("resource_path")) \
                if op == "acquire" else op
            if reason in _FINAL_REASONS:
                raise LeaseDeniedError(
                    "klock: %s denied (%s): %s" % (what, reason, result.get("message", "")), result)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise AcquireTimeoutError(
                    "klock: %s still denied (%s, held by %s) after %.3gs"
                    % (what, reason, result.get("held_by", "?"), timeout or 0.0), result)
            if reason == "WAIT" and time.monotonic() - started >= 0.9 * wait_ms / 1000.0:
                continue  # the daemon's wait ran out without a decision; wait again
            delay = max(int(result.get("wait_time", 1) or 1), 1) / 1000.0
            delay *= 1.0 + 0.25 * random.random()  # spread retries of competing juniors
            if left is not None:
                delay = min(delay, left)
            time.sleep(delay)


def _intent(i: Intent) -> Dict[str, str]:
    if isinstance(i, Mapping):
        return {k: i[k] for k in ("resource_type", "resource_path", "predicate") if k in i}
    resource_type, resource_path, predicate = i
    return {"resource_type": resource_type, "resource_path": resource_path, "predicate": predicate}
