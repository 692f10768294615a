"""protected: take the leases a tool call needs, run it, release them.

A decorator (for sync and async functions) and a context manager (``with``
and ``async with``) that accepts the arguments of upstream klock-langchain's
``klock_protected``, so tools written for it keep working::

    from klock import KlockClient, protected

    klock = KlockClient()

    @protected(klock, "agent-1", "s1", "FILE",
               resource_path_extractor=lambda kw: kw["path"])
    def write_file(path: str, text: str) -> None:
        ...

    with protected(klock, "agent-1", "s1", "FILE", resource_path=["/a.ts", "/b.ts"]):
        ...

Unlike upstream's decorator it waits in the daemon (``wait_timeout``)
instead of sleeping and polling, raises :class:`KlockConflictError` with
``reason``, ``held_by`` and ``wait_time``, keeps the lease alive while the
tool runs, and takes several paths atomically (``acquire_many``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, Union, cast

from ._core import MAX_WAIT_ROUND_MS, grant_ids
from .errors import KlockConflictError, KlockError
from .lease import Lease, LeaseState

__all__ = ["protected", "Protected"]

F = TypeVar("F", bound=Callable[..., Any])

#: What a ``resource_path_extractor`` may return: one path or several.
Paths = Union[str, Iterable[str]]


def protected(
    klock_client: Any,
    agent_id: str,
    session_id: str,
    resource_type: str = "FILE",
    resource_path_extractor: Optional[Callable[[Dict[str, Any]], Paths]] = None,
    predicate: str = "MUTATES",
    ttl_ms: int = 60000,
    max_retries: int = 10,
    *,
    resource_path: Optional[Paths] = None,
    wait_ms: Optional[int] = None,
    on_lost: Optional[Callable[[KlockError], None]] = None,
    bind: Optional[str] = "process",
) -> "Protected":
    """Protects a tool call (decorator) or a block (context manager) with leases.

    Args:
        klock_client: a :class:`klock.KlockClient` or a
            :class:`klock.asyncio.KlockClient`. With the sync client, an
            async function's acquire and release run in the default executor,
            so the event loop is never blocked; the asyncio client can
            protect only async functions and ``async with`` blocks.
        agent_id, session_id: who asks (the agent must be registered).
        resource_type: ``"FILE"``, ``"SYMBOL"``, ... for every path.
        resource_path_extractor: called with the function's arguments by
            name (the keyword arguments, plus positional ones bound to their
            parameter names) and returns the path, or several paths to take
            atomically. A failure or an empty answer raises ValueError.
        predicate: ``"MUTATES"`` (default), ``"CONSUMES"``, ...
        ttl_ms: the lease's ttl; the lease is renewed every ``ttl_ms / 3``
            while the call runs, so it only expires if the process dies.
        max_retries: upstream polled a WAIT up to this many times, about a
            second apart; here the daemon holds the request up to
            ``max_retries`` seconds (unless ``wait_ms`` says otherwise).
        resource_path: the path(s) for the context manager (or a decorated
            function whose paths do not depend on its arguments).
        wait_ms: how long to wait on a WAIT verdict, in ms.
        on_lost: called once if the lease is lost while held.
        bind: ``"process"`` (default) ends the lease when this process
            exits, even if it dies mid-call; ``None`` opts out.

    The protected call raises :class:`KlockConflictError` when the lease is
    denied: at once on ``DIE`` (an older agent holds it; ``held_by`` names
    it, ``wait_time`` says when to retry), ``CONFLICT``,
    ``RESOURCE_LOCKED`` or ``SESSION_EXPIRED``, and with reason
    ``WAIT_TIMEOUT`` when a WAIT outlasted ``wait_ms``. If the lease was
    lost while the function ran (revoked, or the daemon unreachable past
    its expiry), the function's result is not returned: the call raises
    :class:`LeaseLostError`, since its work was not protected throughout.
    """
    if resource_path_extractor is None and resource_path is None:
        raise ValueError("klock: protected needs resource_path_extractor or resource_path")
    return Protected(klock_client, agent_id, session_id, resource_type, resource_path_extractor,
                     predicate, ttl_ms, max_retries, resource_path, wait_ms, on_lost, bind)


class Protected:
    """What :func:`protected` returns: a decorator and a (sync or async) context manager.

    As a context manager, one object holds one lease at a time: entering it
    again before leaving raises RuntimeError.
    """

    def __init__(self, client: Any, agent_id: str, session_id: str, resource_type: str,
                 extractor: Optional[Callable[[Dict[str, Any]], Paths]], predicate: str,
                 ttl_ms: int, max_retries: int, resource_path: Optional[Paths],
                 wait_ms: Optional[int], on_lost: Optional[Callable[[KlockError], None]],
                 bind: Optional[str] = "process") -> None:
        self.client = client
        self.agent_id = agent_id
        self.session_id = session_id
        self.resource_type = resource_type
        self.predicate = predicate
        self.ttl_ms = ttl_ms
        self.wait_ms = max_retries * 1000 if wait_ms is None else wait_ms
        self._extractor = extractor
        self._resource_path = resource_path
        self._on_lost = on_lost
        self.bind = bind
        self._held: Optional[LeaseState] = None
        self._async_client = inspect.iscoroutinefunction(getattr(client, "acquire_lease", None))

    # ----- which paths -----------------------------------------------------

    def _paths(self, arguments: Dict[str, Any]) -> List[str]:
        got: Optional[Paths]
        if self._extractor is not None:
            try:
                got = self._extractor(arguments)
            except Exception as e:
                raise ValueError("klock: protected: resource_path_extractor raised %s: %s"
                                 % (type(e).__name__, e)) from e
        else:
            got = self._resource_path
        paths = [got] if isinstance(got, str) else list(got or [])
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ValueError("klock: protected: no resource path for %s (got %r); the extractor"
                             " must return a non-empty path or list of paths" % (self.agent_id, got))
        return paths

    # ----- acquiring -------------------------------------------------------

    def _take(self, paths: List[str]) -> Lease:
        rounds = _Rounds(self, paths, self.client._idem())
        step: Optional[Tuple[str, Dict[str, Any]]] = rounds.first()
        while step is not None:
            method, args = step
            step = rounds.after(getattr(self.client, method)(**args))
        return Lease(self.client, rounds.grants, self.ttl_ms, self._on_lost, rounds.sent)

    async def _take_async(self, paths: List[str]) -> LeaseState:
        if not self._async_client:
            # The sync client blocks while the daemon holds a WAIT: keep
            # that off the event loop.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self._take, paths)
        from .asyncio import AsyncLease

        rounds = _Rounds(self, paths, self.client._idem())
        step: Optional[Tuple[str, Dict[str, Any]]] = rounds.first()
        while step is not None:
            method, args = step
            step = rounds.after(await getattr(self.client, method)(**args))
        return AsyncLease(self.client, rounds.grants, self.ttl_ms, self._on_lost, rounds.sent)

    async def _release_async(self, lease: LeaseState) -> None:
        if isinstance(lease, Lease):
            await asyncio.get_running_loop().run_in_executor(None, lease.release)
        else:
            await lease.release()  # type: ignore[attr-defined]

    # ----- the decorator ---------------------------------------------------

    def __call__(self, func: F) -> F:
        try:
            signature: Optional[inspect.Signature] = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None

        def arguments(args: Any, kwargs: Dict[str, Any]) -> Dict[str, Any]:
            named: Dict[str, Any] = {}
            if signature is not None and args:
                try:
                    named.update(signature.bind_partial(*args, **kwargs).arguments)
                except TypeError:
                    pass  # the call itself will report the mismatch
            named.update(kwargs)
            return named

        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                lease = await self._take_async(self._paths(arguments(args, kwargs)))
                try:
                    result = await func(*args, **kwargs)
                finally:
                    lost = lease.lost_error
                    await self._release_async(lease)
                if lost is not None:
                    raise lost
                return result

            return cast(F, async_wrapper)

        if self._async_client:
            raise TypeError("klock: protected: %s is not async; protect it with the sync"
                            " klock.KlockClient, or make it async" % getattr(func, "__name__", func))

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            lease = self._take(self._paths(arguments(args, kwargs)))
            try:
                result = func(*args, **kwargs)
            finally:
                lost = lease.lost_error
                lease.release()
            if lost is not None:
                raise lost
            return result

        return cast(F, wrapper)

    # ----- the context managers --------------------------------------------

    def _enter(self) -> List[str]:
        if self._held is not None:
            raise RuntimeError("klock: protected block entered again while held;"
                               " use one protected(...) per block")
        return self._paths({})

    def __enter__(self) -> Lease:
        if self._async_client:
            raise TypeError("klock: protected with the asyncio client needs `async with`")
        lease = self._take(self._enter())
        self._held = lease
        return lease

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        lease, lost = self._leave()
        assert isinstance(lease, Lease)
        lease.release()
        if lost is not None and exc_type is None:
            raise lost

    async def __aenter__(self) -> LeaseState:
        lease = await self._take_async(self._enter())
        self._held = lease
        return lease

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        lease, lost = self._leave()
        await self._release_async(lease)
        if lost is not None and exc_type is None:
            raise lost

    def _leave(self) -> Tuple[LeaseState, Optional[KlockError]]:
        """Ends the block's hold; returns the lease and why it was lost, if it was."""
        lease, self._held = self._held, None
        if lease is None:
            raise RuntimeError("klock: protected block left without being entered")
        return lease, lease.lost_error


class _Rounds:
    """The acquire rounds of one protected call, shared by the sync and async paths.

    Each round is one acquire (or acquire_many, for several paths) that the
    daemon may hold on a WAIT for up to the time left of ``wait_ms``; the
    same idem key throughout, so a resend never takes a second lease.
    """

    def __init__(self, p: Protected, paths: List[str], idem: str) -> None:
        self.p = p
        self.paths = paths
        self.idem = idem
        self.started = time.monotonic()
        #: When the latest round was sent: its grant lasts at least until then plus the ttl.
        self.sent = self.started
        self.grants: List[Dict[str, Any]] = []

    def first(self) -> Tuple[str, Dict[str, Any]]:
        return self._round(min(self.p.wait_ms, MAX_WAIT_ROUND_MS))

    def _round(self, wait_ms: int) -> Tuple[str, Dict[str, Any]]:
        p = self.p
        self.sent = time.monotonic()
        args: Dict[str, Any] = {"agent_id": p.agent_id, "session_id": p.session_id,
                                "ttl": p.ttl_ms, "wait_timeout": wait_ms or None,
                                "idem": self.idem, "bind": p.bind}
        if len(self.paths) == 1:
            args.update(resource_type=p.resource_type, resource_path=self.paths[0],
                        predicate=p.predicate)
            return "acquire_lease", args
        args["intents"] = [(p.resource_type, path, p.predicate) for path in self.paths]
        return "acquire_many", args

    def after(self, result: Dict[str, Any]) -> Optional[Tuple[str, Dict[str, Any]]]:
        """The next round, or None once granted (then :attr:`grants` holds the grants).

        Raises:
            KlockConflictError: a denial that ends the call.
        """
        if result.get("success"):
            self.grants = _grants(result)
            return None
        p = self.p
        waited = int((time.monotonic() - self.started) * 1000)
        reason = str(result.get("reason", ""))
        if reason == "WAIT" and waited < p.wait_ms:
            return self._round(min(p.wait_ms - waited, MAX_WAIT_ROUND_MS))
        denial = dict(result)
        if reason == "WAIT":
            reason = denial["reason"] = "WAIT_TIMEOUT"
            denial["wait_time"] = waited
        where = ", ".join(self.paths)
        raise KlockConflictError(
            "klock: %s denied %s on %s:%s (%s%s): %s" % (
                p.agent_id, p.predicate, p.resource_type, where, reason,
                ", held by %s" % denial["held_by"] if denial.get("held_by") else "",
                denial.get("message") or "waited %d ms" % waited),
            denial, agent_id=p.agent_id, resource_path=where)


def _grants(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    leases = result.get("leases")
    if isinstance(leases, list):
        return leases
    grant_ids(result)  # a grant without lease_id is a protocol error: fail loudly
    return [result]
