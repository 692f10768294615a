"""Errors raised by the klock client.

Every error is a :class:`KlockError`. Errors the daemon sends back carry the
protocol's error ``code`` (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...) and
are raised as the subclass registered for that code. Transport errors (the
daemon is not running, the connection broke, a call timed out) are separate
subclasses whose ``code`` is ``None``, so ``err.code is None`` tells a local
failure from an answer of the daemon.

A denied acquire is not an error: :meth:`KlockClient.acquire_lease` returns a
dict with ``success: False``. Only the blocking helpers
(:meth:`KlockClient.acquire`, :meth:`KlockClient.lease`) raise
:class:`LeaseDeniedError` when they give up.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "KlockError",
    "BadFrameError",
    "BadRequestError",
    "UnknownOpError",
    "InvalidArgumentError",
    "UnknownAgentError",
    "PriorityConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "ShuttingDownError",
    "UnavailableError",
    "BindUnavailableError",
    "InternalError",
    "KlockConnectionError",
    "DaemonNotRunningError",
    "KlockTimeoutError",
    "LeaseDeniedError",
    "AcquireTimeoutError",
    "LeaseLostError",
    "KlockConflictError",
    "error_from_wire",
]


class KlockError(Exception):
    """Base class of every klock error.

    Attributes:
        code: the protocol error code (``"INVALID_ARGUMENT"``, ...) for errors
            answered by the daemon; ``None`` for errors raised by the client.
        message: the human-readable explanation.
    """

    #: The protocol code this class stands for (``None``: client-side error).
    CODE: Optional[str] = None

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        self.code: Optional[str] = code if code is not None else self.CODE
        self.message: str = message
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message if self.message.startswith("klock:") else "klock: " + self.message
        if self.code is not None:
            text += " (" + self.code + ")"
        return text


class BadFrameError(KlockError):
    """A frame was empty or larger than ``max_frame``.

    Raised locally, before sending, for a request that would exceed the
    daemon's ``max_frame``; the daemon closes connections that send one.
    """

    CODE = "BAD_FRAME"


class BadRequestError(KlockError):
    """The daemon could not read the request (not a map, bad ``id`` or ``op``)."""

    CODE = "BAD_REQUEST"


class UnknownOpError(KlockError):
    """The daemon does not know the operation (an older daemon?)."""

    CODE = "UNKNOWN_OP"


class InvalidArgumentError(KlockError):
    """An argument is missing, empty, too long, out of range or of the wrong type.

    The message names the argument and what is allowed.
    """

    CODE = "INVALID_ARGUMENT"


class UnknownAgentError(KlockError):
    """The agent was never registered: call ``register_agent`` first."""

    CODE = "UNKNOWN_AGENT"


class PriorityConflictError(KlockError):
    """The agent's priority cannot change (or it cannot be unregistered) while it
    holds or waits for a lease."""

    CODE = "PRIORITY_CONFLICT"


class NotFoundError(KlockError):
    """The lease is not active: unknown, released or expired."""

    CODE = "NOT_FOUND"


class PermissionDeniedError(KlockError):
    """The caller's uid may not act on that agent or lease, or the op is admin-only."""

    CODE = "PERMISSION_DENIED"


class ResourceExhaustedError(KlockError):
    """A configured limit of the daemon (leases, waiters, in-flight requests) is reached."""

    CODE = "RESOURCE_EXHAUSTED"


class ShuttingDownError(KlockError):
    """The daemon is stopping.

    The client normally hides this: it resends the request once it has
    reconnected to the restarted daemon.
    """

    CODE = "SHUTTING_DOWN"


class UnavailableError(KlockError):
    """The daemon cannot make state changes durable right now (a full or failing disk).

    Reads are still served, and klockd heals on its own when the disk does.
    The client retries a refused change with backoff within the call's
    timeout, and raises this only when the timeout runs out.
    """

    CODE = "UNAVAILABLE"


class BindUnavailableError(KlockError):
    """klockd cannot bind a lease to this process (``bind="process"``).

    The message says why: no pidfds (Linux before 5.3, or a seccomp filter),
    the client outside klockd's pid namespace (klockd in a container and
    the client outside it), ``/proc`` unreadable, or the process gone. A
    retry will not help: acquire with ``bind=None`` (and a ttl) instead. The
    client never falls back to an unbound lease by itself.
    """

    CODE = "BIND_UNAVAILABLE"


class InternalError(KlockError):
    """A bug in the daemon; it logged it and keeps serving."""

    CODE = "INTERNAL"


class KlockConnectionError(KlockError, ConnectionError):
    """The client could not talk to the daemon (``code`` is ``None``)."""


class DaemonNotRunningError(KlockConnectionError):
    """Nothing answers on the socket.

    Attributes:
        socket_path: the socket the client tried.
    """

    def __init__(self, socket_path: str, cause: Optional[BaseException] = None,
                 detail: str = "") -> None:
        self.socket_path: str = socket_path
        if detail:
            super().__init__("klock: cannot reach klockd at " + socket_path + ": " + detail)
            return
        reason = ""
        if cause is not None:
            reason = ": " + (getattr(cause, "strerror", None) or str(cause)).lower()
        super().__init__(
            "klock: cannot connect to klockd at " + socket_path + reason
            + " (is klockd running? start it with `klockd`, or `go run ./cmd/klockd`"
            " from a klock checkout; set KLOCK_SOCKET or pass socket_path= to use"
            " another socket)"
        )


class KlockTimeoutError(KlockError, TimeoutError):
    """A call got no answer within its timeout (``code`` is ``None``)."""


class LeaseDeniedError(KlockError):
    """A blocking acquire gave up on a denial.

    Raised by :meth:`KlockClient.acquire` for denials that waiting cannot
    cure (``CONFLICT``, ``SESSION_EXPIRED``).

    Attributes:
        reason: the denial reason (``"DIE"``, ``"WAIT"``, ``"CONFLICT"``, ...).
        wait_time: the daemon's suggested delay before retrying, in ms.
        held_by: the agent whose lease or queued request decided it.
        result: the whole denial dict as the daemon sent it.
    """

    def __init__(self, message: str, result: Dict[str, Any]) -> None:
        self.result: Dict[str, Any] = dict(result)
        self.reason: str = str(result.get("reason", ""))
        self.wait_time: int = int(result.get("wait_time", 0) or 0)
        self.held_by: str = str(result.get("held_by", ""))
        super().__init__(message)


class AcquireTimeoutError(LeaseDeniedError, KlockTimeoutError):
    """A blocking acquire was still denied when its timeout ran out.

    ``reason``, ``wait_time``, ``held_by`` and ``result`` describe the last
    denial.
    """


class KlockConflictError(LeaseDeniedError, RuntimeError):
    """A tool protected with :func:`klock.protected` could not get its lease(s).

    Raised at once on ``DIE`` (a senior agent holds the resource: abort and
    retry later), on ``CONFLICT``, ``RESOURCE_LOCKED`` and
    ``SESSION_EXPIRED``, and with reason ``WAIT_TIMEOUT`` when a ``WAIT``
    outlasted the decorator's wait. Also a :class:`RuntimeError`, as
    upstream klock-langchain's error of the same name is.

    Attributes:
        reason: ``"DIE"``, ``"CONFLICT"``, ``"RESOURCE_LOCKED"``,
            ``"SESSION_EXPIRED"`` or ``"WAIT_TIMEOUT"``.
        held_by: the agent whose lease (or queued request) decided it.
        wait_time: the daemon's suggested delay before retrying, in ms (for
            ``WAIT_TIMEOUT``: how long the decorator waited).
        agent_id: the agent that asked.
        resource_path: the path (or paths, comma-separated) it asked for.
        wait_time_ms: ``wait_time`` under upstream's name.
    """

    def __init__(self, message: str, result: Dict[str, Any], agent_id: str = "",
                 resource_path: str = "") -> None:
        super().__init__(message, result)
        self.agent_id: str = agent_id
        self.resource_path: str = resource_path
        self.wait_time_ms: int = self.wait_time


class LeaseLostError(KlockError):
    """A lease held with :meth:`KlockClient.lease` is no longer held.

    Raised by :meth:`Lease.check` once the keep-alive found the lease gone
    (expired, revoked, released elsewhere) or could not renew it in time.
    """


_BY_CODE: Dict[str, Type[KlockError]] = {
    cls.CODE: cls
    for cls in (
        BadFrameError,
        BadRequestError,
        UnknownOpError,
        InvalidArgumentError,
        UnknownAgentError,
        PriorityConflictError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        ShuttingDownError,
        UnavailableError,
        BindUnavailableError,
        InternalError,
    )
    if cls.CODE is not None
}


def error_from_wire(body: Any) -> KlockError:
    """Returns the exception for a response's ``error`` map ``{code, message}``.

    An unknown code (from a newer daemon) becomes a plain :class:`KlockError`
    that still carries the code.
    """
    if not isinstance(body, dict):
        return KlockError("klock: malformed error in response: %r" % (body,), "INTERNAL")
    code = str(body.get("code", "INTERNAL"))
    message = str(body.get("message", "")) or code.lower().replace("_", " ")
    cls = _BY_CODE.get(code)
    if cls is None:
        return KlockError(message, code)
    return cls(message)
