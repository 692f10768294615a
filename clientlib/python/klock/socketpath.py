"""Where klockd is: the socket rules of protocol/README.md "Transport".

A copy of the Go functions ``protocol.SystemSocket``, ``protocol.UserSockets``
and ``protocol.DefaultSocket``; tests/python_test.go checks it against them.
"""

from __future__ import annotations

import os
import stat
from typing import List, Mapping, Optional

__all__ = ["default_socket_path", "user_sockets", "SYSTEM_SOCKET", "user_state_dir"]

#: The socket of the system daemon (the service, klockd as root).
SYSTEM_SOCKET = "/run/klock/klockd.sock"

_RUN_USER = "/run/user"


def user_sockets(uid: Optional[int] = None, run_user: str = _RUN_USER) -> List[str]:
    """Where a per-user klockd of uid listens, in order of preference.

    ``/run/user/UID/klock/klockd.sock`` when ``/run/user/UID`` is a directory
    owned by uid (a user with a login session), then
    ``/tmp/klock-UID/klockd.sock``. ``$XDG_RUNTIME_DIR`` is not read: ``su``
    and some ``ssh`` shells lack it, and they must find the same daemon as
    the user's desktop shells.
    """
    uid = os.geteuid() if uid is None else uid
    tmp = "/tmp/klock-%d/klockd.sock" % uid  # not $TMPDIR: every shell must agree
    run = os.path.join(run_user, str(uid))
    try:
        st = os.stat(run)
    except OSError:
        return [tmp]
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        return [tmp]
    return [os.path.join(run, "klock", "klockd.sock"), tmp]


def default_socket_path(env: Optional[Mapping[str, str]] = None,
                        euid: Optional[int] = None) -> str:
    """The socket a client names first: ``$KLOCK_SOCKET``, else the one klockd
    listens on by default (the system socket as root, else the first of
    :func:`user_sockets`).

    :class:`KlockClient` with no socket looks further (the per-user
    daemon's every socket, then the system daemon, then starts one): see
    its docs.
    """
    env = os.environ if env is None else env
    explicit = env.get("KLOCK_SOCKET", "")
    if explicit:
        return explicit
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return SYSTEM_SOCKET
    return user_sockets(euid)[0]


def user_state_dir(env: Optional[Mapping[str, str]] = None) -> str:
    """Where a per-user klockd keeps its state (Go ``protocol.UserStateDir``)."""
    env = os.environ if env is None else env
    x = env.get("XDG_STATE_HOME", "")
    if x.startswith("/"):
        return os.path.join(x, "klock")
    home = env.get("HOME", "")  # as Go's os.UserHomeDir: $HOME only
    if home:
        return os.path.join(home, ".local", "state", "klock")
    return "/tmp/klock-state-%d" % os.geteuid()
