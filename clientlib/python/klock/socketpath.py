"""Where klockd listens: the socket path resolution of protocol/README.md."""

from __future__ import annotations

import os
from typing import Mapping, Optional

__all__ = ["default_socket_path", "SYSTEM_SOCKET"]

#: The socket of the system service (klockd running as root).
SYSTEM_SOCKET = "/run/klock/klockd.sock"


def default_socket_path(
    env: Optional[Mapping[str, str]] = None, euid: Optional[int] = None
) -> str:
    """Returns the socket klockd listens on, resolved as the daemon does.

    The first that applies: ``$KLOCK_SOCKET``; ``/run/klock/klockd.sock`` when
    running as root; ``$XDG_RUNTIME_DIR/klock/klockd.sock``; otherwise
    ``/tmp/klock-$UID/klockd.sock``.

    Args:
        env: the environment to read (default ``os.environ``).
        euid: the effective uid to resolve for (default ``os.geteuid()``).
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    explicit = env.get("KLOCK_SOCKET", "")
    if explicit:
        return explicit
    if euid == 0:
        return SYSTEM_SOCKET
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime:
        return os.path.join(runtime, "klock", "klockd.sock")
    return "/tmp/klock-%d/klockd.sock" % euid
