"""klock: coordinate AI agents on one machine through the klockd daemon.

The seed SDK's API, served by ``klockd`` over a Unix socket::

    from klock import KlockClient

    klock = KlockClient()
    klock.register_agent("senior-bot", 100)
    result = klock.acquire_lease("senior-bot", "s1", "FILE", "/src/auth.ts", "MUTATES", 60000)
    if result["success"]:
        klock.release_lease(result["lease_id"])
"""

from .client import Intent, KlockClient
from .errors import (
    AcquireTimeoutError,
    BadFrameError,
    BadRequestError,
    DaemonNotRunningError,
    InternalError,
    InvalidArgumentError,
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
    UnknownAgentError,
    UnknownOpError,
)
from .lease import Lease
from .socketpath import default_socket_path

__version__ = "0.1.0"

__all__ = [
    "KlockClient",
    "Lease",
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
    "InternalError",
    "KlockConnectionError",
    "DaemonNotRunningError",
    "KlockTimeoutError",
    "LeaseDeniedError",
    "AcquireTimeoutError",
    "LeaseLostError",
]
