"""What the sync and the asyncio clients share: how a request is built and
how an answer is judged, with no I/O, so that both behave alike."""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import wire
from .errors import AcquireTimeoutError, KlockError, LeaseDeniedError, UnavailableError
from .filekey import resolve_file

__all__ = ["Intent", "IdemSource", "AcquireRounds", "Backoff", "UnavailableRetry", "Redial", "BACKOFF_CODES",
           "RENEW_AGAIN_CODES", "intent_args",
           "intents_args", "key_path", "key_paths",
           "grant_ids", "describe", "wait_seconds", "MAX_WAIT_ROUND_MS"]

#: One intent of ``acquire_many``: a ``(resource_type, resource_path,
#: predicate)`` tuple or a dict with those keys.
Intent = Union[Tuple[str, str, str], Mapping[str, str]]

#: A blocking acquire parks in the daemon at most this long per round trip,
#: so that a lost answer is noticed and the overall timeout is honoured.
MAX_WAIT_ROUND_MS = 30000

# Denials that waiting cannot cure: the blocking helpers raise at once
# (protocol/README.md "Retries: one table for every client").
_FINAL_REASONS = frozenset({"SESSION_EXPIRED"})

#: Error codes a blocking acquire retries with backoff until its deadline
#: (the retry table); every other error ends it. UNAVAILABLE is not here:
#: every call already retries it with backoff (within the blocking
#: acquire's deadline), and an attempt that still ends UNAVAILABLE ends the
#: acquire with that error, as in the Go client.
BACKOFF_CODES = frozenset({"RESOURCE_EXHAUSTED"})

#: Error codes (and None: the connection failed) after which a keep-alive
#: heartbeats again until the lease is about to expire; any other error
#: means the lease is lost at once.
RENEW_AGAIN_CODES = frozenset({None, "RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL",
                               "SHUTTING_DOWN"})

_monotonic = time.monotonic


class IdemSource:
    """Idempotency keys unique to one client: a random prefix and a counter.

    Cheaper than a uuid4 per acquire (no getrandom(2) per call). A forked
    child must call :meth:`reseed`, or it would repeat its parent's keys.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        """Starts a new random prefix."""
        self._prefix = os.urandom(8).hex() + "-"
        self._seq = itertools.count(1)

    def __call__(self) -> str:
        return "%s%x" % (self._prefix, next(self._seq))


def key_paths(resource_type: Any, resource_path: Any) -> Tuple[Any, Optional[str]]:
    """The resource_path to send, and the client_path to send with it (or None).

    A FILE path is resolved by the one rule (:func:`klock.filekey.file_key`);
    when the worktree step moved it to the main worktree, the path as named
    (absolute, cleaned) goes along as ``client_path``, so that others see
    where the holder works (protocol/README.md "FILE paths"). Any other
    resource type is sent as given.
    """
    if type(resource_path) is str and resource_path and type(resource_type) is str and (
            resource_type == "FILE" or resource_type.upper() == "FILE"):
        key, named = resolve_file(resource_path)
        return key, (None if named == key else named)
    return resource_path, None


def key_path(resource_type: Any, resource_path: Any) -> Any:
    """The resource_path to send (see :func:`key_paths`)."""
    return key_paths(resource_type, resource_path)[0]


def intent_args(i: Intent, n: int = 0) -> Dict[str, str]:
    """The wire form of the n-th intent of acquire_many, its FILE path resolved."""
    if isinstance(i, Mapping):
        args = {k: i[k] for k in ("resource_type", "resource_path", "predicate") if k in i}
    else:
        resource_type, resource_path, predicate = i
        args = {"resource_type": resource_type, "resource_path": resource_path,
                "predicate": predicate}
    if "resource_path" in args:
        path, named = key_paths(args.get("resource_type"), args["resource_path"])
        args["resource_path"] = path
        wire.check_text("intents[%d].resource_path" % n, path, wire.MAX_PATH_LEN)
        if named is not None:
            wire.check_text("intents[%d].client_path" % n, named, wire.MAX_PATH_LEN)
            args["client_path"] = named
    return args


def intents_args(intents: Sequence[Intent]) -> List[Dict[str, str]]:
    """The wire form of acquire_many's intents."""
    return [intent_args(i, n) for n, i in enumerate(intents)]


def grant_ids(result: Mapping[str, Any]) -> List[str]:
    """The lease ids of a grant of acquire or acquire_many."""
    grants = result.get("leases")
    if isinstance(grants, list):
        return [str(g["lease_id"]) for g in grants]
    return [str(result["lease_id"])]


class AcquireRounds:
    """A blocking acquire, round by round, with no I/O: the sync and the
    asyncio client each send :meth:`request`, then ask :meth:`after` (an
    answer) or :meth:`failed` (an error) how long to sleep before the next.

    Each round asks the daemon with ``wait_timeout`` (so a WAIT verdict is
    waited for in the daemon, not by polling); :meth:`after` judges the
    answer: a grant ends it, ``SESSION_EXPIRED`` raises
    :class:`LeaseDeniedError`, a timeout raises
    :class:`AcquireTimeoutError`, anything else (DIE, CONFLICT,
    RESOURCE_LOCKED, a WAIT answered early) asks again after the suggested
    ``wait_time`` plus 0-50 %, or at once after a WAIT that used its whole
    wait: the retry table of protocol/README.md. Every round carries the
    same idempotency key.

    Args:
        many: ``acquire_many`` (else ``acquire`` of ``intents[0]``).
        timeout: seconds in all; None waits forever.
    """

    def __init__(self, agent_id: str, session_id: str, intents: Sequence[Intent], ttl: int,
                 timeout: Optional[float], idem: str, many: bool, bind: Optional[str]) -> None:
        self.op = "acquire_many" if many else "acquire"
        self._wire_intents = intents_args(intents)
        self._fixed = (agent_id, session_id, ttl, idem, bind)
        self.what = describe(self.op, self._wire_intents)
        self.timeout = timeout
        self.deadline = None if timeout is None else _monotonic() + timeout
        self._wait_ms = 0
        self._backoff: Optional[Backoff] = None
        #: When the latest round was sent (monotonic): a lease it granted
        #: lasts at least until then plus its ttl.
        self.sent = 0.0

    def request(self) -> bytes:
        """The next round's request tail; its ``wait_timeout`` is
        :attr:`wait_s` (0: answer at once)."""
        wait_ms = MAX_WAIT_ROUND_MS
        if self.deadline is not None:
            wait_ms = min(wait_ms, int((self.deadline - _monotonic()) * 1000))
        self._wait_ms = wait_ms = max(wait_ms, 0)
        self.sent = _monotonic()
        agent_id, session_id, ttl, idem, bind = self._fixed
        if self.op == "acquire_many":
            args: Dict[str, Any] = {"agent_id": agent_id, "session_id": session_id, "ttl": ttl,
                                    "intents": self._wire_intents, "idem": idem}
            if wait_ms:
                args["wait_timeout"] = wait_ms
            if bind is not None:
                args["bind"] = bind
            return wire.request_tail(self.op, args)
        i = self._wire_intents[0]
        return wire.acquire_tail(agent_id, session_id, i["resource_type"], i["resource_path"],
                                 i["predicate"], ttl, idem, wait_ms or None, bind,
                                 i.get("client_path"))

    @property
    def wait_s(self) -> float:
        """How long the daemon may hold the latest round, in seconds: the
        caller adds it to the call's timeout."""
        return self._wait_ms / 1000.0

    def failed(self, e: KlockError) -> Optional[float]:
        """The pause before asking again after the round failed with e, or
        None when e ends the acquire (the caller raises it).

        The retry table: RESOURCE_EXHAUSTED is asked again with backoff
        until the deadline; others (UNAVAILABLE once the call's own retries
        gave up) end it.
        """
        if e.code not in BACKOFF_CODES:
            return None
        if self._backoff is None:
            self._backoff = Backoff(self.deadline)
        return self._backoff.next()

    def after(self, result: Dict[str, Any]) -> Optional[float]:
        """Returns None when result is a grant, else the delay before the next round.

        Raises:
            LeaseDeniedError: a denial waiting cannot cure.
            AcquireTimeoutError: still denied when the timeout ran out.
        """
        self._backoff = None
        if result.get("success"):
            return None
        reason = str(result.get("reason", ""))
        if reason in _FINAL_REASONS:
            raise LeaseDeniedError(
                "klock: %s denied (%s): %s" % (self.what, reason, result.get("message", "")), result)
        now = _monotonic()
        left = None if self.deadline is None else self.deadline - now
        if left is not None and left <= 0:
            raise AcquireTimeoutError(
                "klock: %s still denied (%s, held by %s) after %.3gs"
                % (self.what, reason, result.get("held_by", "?"), self.timeout or 0.0), result)
        if reason == "WAIT" and now - self.sent >= 0.9 * self._wait_ms / 1000.0:
            return 0.0  # the daemon's wait ran out without a decision; wait again
        delay = max(int(result.get("wait_time", 1) or 1), 1) / 1000.0
        delay *= 1.0 + 0.5 * random.random()  # spread retries of competing juniors
        return delay if left is None else min(delay, left)


class Backoff:
    """The retry table's "retry with backoff": 10 ms doubling to at most 1 s,
    each plus 0-50 %, until the caller's deadline (None: no deadline).

    :meth:`next` returns the next delay in seconds, or None once retrying
    would pass the deadline. Used for UNAVAILABLE (the connection is fine,
    so nothing is redialled for it) and, in a blocking acquire,
    RESOURCE_EXHAUSTED.
    """

    FIRST = 0.01
    CAP = 1.0

    def __init__(self, deadline: Optional[float]) -> None:
        self.deadline = deadline
        self._delay = self.FIRST

    def deadline_or(self, default: float) -> float:
        """The deadline, or default when there is none."""
        return default if self.deadline is None else self.deadline

    def next(self) -> Optional[float]:
        delay = self._delay * (1.0 + 0.5 * random.random())
        self._delay = min(self._delay * 2, self.CAP)
        if self.deadline is None:
            return delay
        left = self.deadline - _monotonic()
        if left <= 0:
            return None
        return min(delay, left)




class Redial:
    """The pause between failed dials of a connection's reader: 10 ms
    doubling to at most 1 s, each within +-20 %; :meth:`reset` after a dial
    that worked or a ``redial_now()``."""

    FIRST = 0.01
    CAP = 1.0

    def __init__(self) -> None:
        self._delay = self.FIRST

    def next(self) -> float:
        delay = self._delay * (0.8 + 0.4 * random.random())
        self._delay = min(self._delay * 2, self.CAP)
        return delay

    def reset(self) -> None:
        self._delay = self.FIRST


class UnavailableRetry:
    """The retry table's "one call" column for UNAVAILABLE, with no I/O: the
    sync and the asyncio client each sleep and call, and ask it how long.

    Made after the first attempt failed with ``last``, which ``start``
    (monotonic) sent with ``timeout`` seconds; retries also stop at
    ``until`` (monotonic) when given. A retry whose answer could not come
    back before the deadline would end the call with a timeout instead of
    UNAVAILABLE, so the last round trip is kept free (as the Go client does).
    """

    def __init__(self, last: UnavailableError, start: float, timeout: float,
                 until: Optional[float]) -> None:
        self.last = last
        self._deadline = start + timeout
        self._sent = start
        self._backoff = Backoff(self._deadline if until is None else min(self._deadline, until))

    def pause(self) -> float:
        """The pause before the next attempt; raises the last error when no
        attempt fits before the deadline."""
        rtt = _monotonic() - self._sent
        delay = self._backoff.next()
        if delay is None or _monotonic() + delay + rtt >= self._backoff.deadline_or(self._deadline):
            raise self.last
        return delay

    def left(self) -> float:
        """The timeout of the attempt about to be sent; raises the last
        error when none is left."""
        now = _monotonic()
        if now >= self._deadline:
            raise self.last
        self._sent = now
        return self._deadline - now


def describe(op: str, intents: Sequence[Mapping[str, Any]]) -> str:
    """How a blocking acquire names its request in errors."""
    keys = ", ".join("%s:%s" % (i.get("resource_type"), i.get("resource_path")) for i in intents)
    return "%s on %s" % (op, keys)


def wait_seconds(wait_timeout: Any) -> float:
    """A ``wait_timeout`` in ms as seconds to add to a call's timeout (0 if none)."""
    if isinstance(wait_timeout, int) and wait_timeout > 0:
        return wait_timeout / 1000.0
    return 0.0
