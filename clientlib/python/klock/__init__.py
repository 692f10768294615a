"""klock: coordinate AI agents on one machine through the klockd daemon.

The seed SDK's API, served by ``klockd`` over a Unix socket::

    from klock import KlockClient

    klock = KlockClient()
    klock.register_agent("senior-bot", 100)
    result = klock.acquire_lease("senior-bot", "s1", "FILE", "/src/auth.ts", "MUTATES", 60000)
    if result["success"]:
        klock.release_lease(result["lease_id"])

``klock.asyncio.KlockClient`` is the same API for asyncio, and
``klock.protected`` guards a tool call (or a block) with leases.
"""

from ._version import __version__
from .client import Intent, KlockClient
from .errors import (
    AcquireTimeoutError,
    BadFrameError,
    BadRequestError,
    BindUnavailableError,
    DaemonNotRunningError,
    InternalError,
    InvalidArgumentError,
    KlockConflictError,
    KlockConnectionError,
    KlockError,
    KlockTimeoutError,
    LeaseDeniedError,
    LeaseLostError,
    NotFoundError,
    PermissionDeniedError,
    PriorityConflictError,
    ResourceExhaustedError,
    ShuttingDownError,
    UnavailableError,
    UnknownAgentError,
    UnknownOpError,
)
from .lease import Lease
from .protected import Protected, protected
from .socketpath import default_socket_path

__all__ = [
    "KlockClient",
    "Lease",
    "protected",
    "Protected",
    "Intent",
    "default_socket_path",
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
    "__version__",
]
