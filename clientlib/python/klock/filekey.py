"""The one rule that turns a FILE path into the path klock keys it by.

protocol/README.md "FILE paths: one rule for every client"; the Go function
``clientlib.ResolveFile`` is the reference, and tests/python_test.go checks
this copy against it on a real repository with linked worktrees.

1. A relative path is joined to the working directory.
2. It is cleaned lexically as Go's ``path.Clean`` does; a path ending in
   ``/`` (a subtree) keeps one trailing ``/``.
3. Inside a linked git worktree it is moved to the same place in the
   repository's main worktree (unless ``KLOCK_WORKTREES=separate``), found
   from the worktree's ``.git`` file and its gitdir's ``commondir``, with no
   ``git`` process.
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
import time
from typing import Dict, Mapping, Optional, Tuple

from .errors import InvalidArgumentError

__all__ = ["file_key", "resolve_file", "clean_file_path", "ENV_WORKTREES"]

#: The environment variable that turns the worktree mapping off.
ENV_WORKTREES = "KLOCK_WORKTREES"

# Answers are kept this long (the rule allows at most a second) ...
_TTL = 1.0
# ... and the caches are emptied when they grow past this many entries.
_MAX = 4096

_monotonic = time.monotonic
_lock = threading.Lock()
# absolute path as given -> (key, path cleaned, time it was resolved)
_keys: Dict[str, Tuple[str, str, float]] = {}
# directory -> (working-tree root or "", its main worktree or "", time)
_roots: Dict[str, Tuple[str, str, float]] = {}


def _go_clean(p: str) -> str:
    """Go's ``path.Clean``: normpath, but a leading ``//`` is ``/`` too."""
    c = posixpath.normpath(p)
    if c.startswith("//"):
        c = "/" + c.lstrip("/")  # normpath keeps a leading "//" (POSIX allows it); Go does not
    return c


def _clean_keep(p: str, subtree: bool) -> str:
    c = _go_clean(p)
    if subtree and c != "/":
        c += "/"
    return c


def clean_file_path(p: str) -> str:
    """Go's ``path.Clean``, keeping one trailing ``/`` when p ends in ``/``
    (``protocol.CleanFilePath``)."""
    return _clean_keep(p, p.endswith("/"))


def file_key(p: str, cwd: Optional[str] = None, worktrees: Optional[str] = None,
             env: Optional[Mapping[str, str]] = None) -> str:
    """Returns the ``resource_path`` klock keys the FILE path p by.

    Args:
        cwd: the directory a relative p is joined to (default: the process's).
        worktrees: ``"shared"`` (map linked worktrees to the main one) or
            ``"separate"``; default ``$KLOCK_WORKTREES``, else shared.

    Raises:
        InvalidArgumentError: no working directory to join a relative path
            to, or ``KLOCK_WORKTREES`` is neither shared nor separate.
    """
    return resolve_file(p, cwd, worktrees, env)[0]


def resolve_file(p: str, cwd: Optional[str] = None, worktrees: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None) -> Tuple[str, str]:
    """Returns ``(key, path)``: the key, and the path as named, absolute and
    cleaned but not moved to the main worktree."""
    if not p:
        raise InvalidArgumentError("klock: empty FILE path")
    cacheable = p[0] == "/" and not worktrees and env is None and not os.environ.get(ENV_WORKTREES)
    if cacheable:
        hit = _keys.get(p)
        if hit is not None and _monotonic() - hit[2] < _TTL:
            return hit[0], hit[1]
    if p[0] != "/":
        if cwd is None:
            try:
                cwd = os.getcwd()
            except OSError as e:
                raise InvalidArgumentError("klock: FILE path %r is relative and the working"
                                           " directory is unknown: %s" % (p, e)) from None
        if not cwd.startswith("/"):
            raise InvalidArgumentError("klock: FILE path %r is relative and the working directory"
                                       " %r is not absolute" % (p, cwd))
        absolute = _clean_keep(cwd + "/" + p, p.endswith("/"))
    else:
        absolute = clean_file_path(p)
    if _separate(worktrees, env):
        return absolute, absolute
    now = _monotonic()
    key = _map_worktree(absolute, now)
    if cacheable:  # looked up above, before cleaning
        with _lock:
            if len(_keys) >= _MAX:
                _keys.clear()
            _keys[p] = (key, absolute, now)
    return key, absolute


def _separate(worktrees: Optional[str], env: Optional[Mapping[str, str]]) -> bool:
    mode = worktrees
    if not mode:
        mode = (os.environ if env is None else env).get(ENV_WORKTREES, "")
    if mode in ("", "shared"):
        return False
    if mode == "separate":
        return True
    raise InvalidArgumentError("klock: %s=%r is not one of shared, separate" % (ENV_WORKTREES, mode))


def _map_worktree(absolute: str, now: float) -> str:
    subtree = absolute.endswith("/") and absolute != "/"
    d = absolute[:-1] if subtree else absolute
    root, main = _lookup(d or "/", now)
    if not main or main == root:
        return absolute
    rest = d[len(root):] if d.startswith(root) else d
    return _clean_keep(main + "/" + rest, subtree)


def _lookup(d: str, now: float) -> Tuple[str, str]:
    """The working-tree root at or above d and its main worktree (see _worktree_root)."""
    hit = _roots.get(d)
    if hit is not None and now - hit[2] < _TTL:
        return hit[0], hit[1]
    visited = []
    root = main = ""
    cur = d
    while True:
        visited.append(cur)
        found, m = _worktree_root(cur)
        if found:
            root, main = cur, m
            break
        if cur == "/":
            break
        cur = posixpath.dirname(cur)
    with _lock:
        if len(_roots) + len(visited) > _MAX:
            _roots.clear()
        for v in visited:
            _roots[v] = (root, main, now)
    return root, main


def _worktree_root(d: str) -> Tuple[bool, str]:
    """Whether d holds a ``.git`` entry, and the main worktree when d is a linked worktree."""
    dot_git = posixpath.join(d, ".git")
    try:
        st = os.stat(dot_git)
    except (OSError, ValueError):  # ValueError: a NUL byte, the daemon's to refuse
        return False, ""
    if not stat.S_ISREG(st.st_mode):
        return True, ""  # a directory: a main worktree or a plain clone
    gitdir = _read_gitdir_file(dot_git)
    if not gitdir:
        return True, ""
    if not gitdir.startswith("/"):
        gitdir = _go_clean(posixpath.join(d, gitdir))
    try:
        with open(posixpath.join(gitdir, "commondir"), "rb") as f:
            common = f.read().decode("utf-8", "surrogateescape").rstrip("\r\n")
    except (OSError, ValueError):
        return True, ""  # a submodule or --separate-git-dir checkout: nothing to map to
    if not common:
        return True, ""
    if not common.startswith("/"):
        common = posixpath.join(gitdir, common)
    common = _go_clean(common)
    if posixpath.basename(common) == ".git":
        return True, posixpath.dirname(common)
    return True, common


def _read_gitdir_file(name: str) -> str:
    """The G of a ``.git`` file's first line ``gitdir: G``, or ""."""
    try:
        with open(name, "rb") as f:
            data = f.read(4096)
    except OSError:
        return ""
    line = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "surrogateescape")
    prefix = "gitdir: "
    if not line.startswith(prefix) or len(line) == len(prefix):
        return ""
    return line[len(prefix):]
