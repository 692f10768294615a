"""Lease: granted leases kept alive in the background until released.

One keep-alive thread per client renews all of that client's leases (not a
thread per lease): it sleeps until the next renewal is due, sends every due
heartbeat at once (pipelined on the client's connection), and collects the
answers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from . import wire
from ._core import RENEW_AGAIN_CODES, grant_ids
from .errors import KlockError, LeaseLostError

if TYPE_CHECKING:  # pragma: no cover
    from .client import KlockClient
    from .connection import Call

__all__ = ["Lease", "LeaseState", "KeepAlive"]

log = logging.getLogger("klock")

_monotonic = time.monotonic


def now_ms() -> int:
    """Wall-clock Unix time in ms, as the daemon's ``expires_at``."""
    return int(time.time() * 1000)


def renew_margin(ttl: int) -> float:
    """The keep-alive's margin in seconds: min(ttl/10, 250 ms). Renewals stop
    one margin before the lease's deadline (after a last redial and renewal
    that began two margins before it), so the holder hears of a loss before
    anyone else can be granted the lease (protocol/README.md "Retries")."""
    return min(ttl / 10.0, 250.0) / 1000.0


class LeaseState:
    """What a kept-alive lease knows, shared by the sync and asyncio leases.

    Holds one grant or several (taken together with ``acquire_many``), which
    are renewed and released together.

    Attributes:
        grants: the daemon's grant dicts, one per resource.
        grant: the first grant (``lease_id``, ``fence``, ``resource``, ...).
        lease_id: the first grant's UUID.
        lease_ids: every grant's UUID.
        fence: the first grant's fencing token.
        resource: the first grant's resource key, e.g. ``"FILE:/src/auth.ts"``.
        ttl: the lease lifetime in ms; each renewal extends it by this much.

    How long the lease surely lasts is measured on this process's monotonic
    clock, never by comparing the daemon's ``expires_at`` with the local
    wall clock (protocol/README.md "Time and fences"): from when the request
    that granted or renewed it was sent, plus ``ttl``.
    """

    def __init__(self, grants: List[Dict[str, Any]], ttl: int,
                 on_lost: Optional[Callable[[KlockError], None]],
                 sent: Optional[float] = None) -> None:
        if not grants:
            raise ValueError("klock: a lease needs at least one grant")
        self.grants: List[Dict[str, Any]] = grants
        self.grant: Dict[str, Any] = grants[0]
        self.lease_ids: List[str] = [i for g in grants for i in grant_ids(g)]
        self.lease_id: str = self.lease_ids[0]
        self.fence: int = int(self.grant.get("fence", 0))
        self.resource: str = self.grant.get("resource", "")
        self.agent_id: str = self.grant.get("agent_id", "")
        self.session_id: str = self.grant.get("session_id", "")
        self.predicate: str = self.grant.get("predicate", "")
        self.ttl: int = int(ttl)
        self._on_lost = on_lost
        # _state_lock guards the fields that follow.
        self._state_lock = threading.Lock()
        self._expires_at: int = min(int(g.get("expires_at", 0)) for g in grants)
        self._lost_error: Optional[KlockError] = None
        self._released = False
        # The fields that follow are owned by the keep-alive.
        #: Monotonic time until which the lease surely holds (sent + ttl).
        self.deadline = (_monotonic() if sent is None else sent) + self.ttl / 1000.0
        #: Monotonic time of the next renewal: a third of the ttl after sending.
        self.due = self.deadline - 2 * self.interval()
        #: The renewal is in its last try: the connection was redialled at
        #: once, and the answer may come until one margin before the deadline.
        self.last_try = False

    @property
    def renewable(self) -> bool:
        """Reports whether the lease has a ttl to renew: a lease bound to its
        process and taken without a ttl (``expires_at`` 0) lasts until it is
        released or the process exits, and needs no heartbeats."""
        return self.ttl > 0 and self._expires_at > 0

    def interval(self) -> float:
        """Seconds between renewals: a third of the ttl."""
        return max(self.ttl / 3.0, 1.0) / 1000.0

    @property
    def expires_at(self) -> int:
        """When the lease expires unless renewed (Unix ms), as of the last renewal."""
        with self._state_lock:
            return self._expires_at

    @property
    def lost_error(self) -> Optional[KlockError]:
        """Why the lease was lost, or None while it is held."""
        with self._state_lock:
            return self._lost_error

    @property
    def lost(self) -> bool:
        """Reports whether the lease was lost while held (not set by release())."""
        return self.lost_error is not None

    @property
    def released(self) -> bool:
        """Reports whether release() was called."""
        with self._state_lock:
            return self._released

    def check(self) -> None:
        """Raises :class:`LeaseLostError` if the lease was lost; else returns None."""
        err = self.lost_error
        if err is not None:
            raise err

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("released" if self.released else "held")
        more = " +%d" % (len(self.lease_ids) - 1) if len(self.lease_ids) > 1 else ""
        return "<%s %s %s%s fence=%d %s>" % (type(self).__name__, self.lease_id, self.resource,
                                            more, self.fence, state)

    # ----- for the keep-alive ----------------------------------------------

    def _begin_release(self) -> bool:
        """Marks the lease released; reports whether it still needs releasing."""
        with self._state_lock:
            if self._released:
                return False
            self._released = True
            return self._lost_error is None

    def renew_wait(self) -> float:
        """Seconds a renewal sent now may wait for its answers: until two
        margins before the deadline, or one in the last try."""
        margin = renew_margin(self.ttl)
        end = self.deadline - margin * (1 if self.last_try else 2)
        return end - _monotonic()

    def renewed(self, results: List[Dict[str, Any]], sent: float) -> None:
        """Records the daemon's answers to a renewal of every grant, sent at sent."""
        times = [r.get("expires_at") for r in results]
        ints = [t for t in times if isinstance(t, int)]
        if ints:
            with self._state_lock:
                self._expires_at = min(ints)
        self.deadline = sent + self.ttl / 1000.0
        self.due = sent + self.interval()
        self.last_try = False

    def lose(self, message: str) -> Optional[LeaseLostError]:
        """Marks the lease lost (unless released); returns the error to report once."""
        err = LeaseLostError(message)
        with self._state_lock:
            if self._released or self._lost_error is not None:
                return None
            self._lost_error = err
        return err

    def renewal_failed(self, e: KlockError) -> Optional[LeaseLostError]:
        """Judges a failed renewal by the retry table's keep-alive column.

        A broken connection or no answer, UNAVAILABLE, RESOURCE_EXHAUSTED,
        INTERNAL or SHUTTING_DOWN: heartbeat again after max(ttl/20, 5 ms)
        plus up to 50 %, until two margins before the deadline; then one last
        try (:attr:`last_try` becomes True and the keep-alive redials at
        once, cutting the reconnect backoff short), answered until one margin
        before it; then the lease is lost. Anything else (NOT_FOUND first of
        all): the lease is lost at once. Returns the error to report when the
        lease is lost now, else None.
        """
        if e.code not in RENEW_AGAIN_CODES:
            return self.lose("klock: lease %s on %s is no longer held: %s"
                             % (self.lease_id, self.resource, e))
        now = _monotonic()
        margin = renew_margin(self.ttl)
        end = self.deadline - margin * (1 if self.last_try else 2)
        if now < end:
            delay = max(self.ttl / 20.0, 5.0) / 1000.0 * (1.0 + 0.5 * random.random())
            self.due = min(now + delay, end)
            return None
        if not self.last_try:
            self.last_try = True
            self.due = now
            return None
        return self.lose("klock: could not renew lease %s on %s before it expired: %s"
                         % (self.lease_id, self.resource, e))

    def report_lost(self, err: LeaseLostError) -> None:
        """Runs the on_lost callback; it must not kill the keep-alive."""
        callback = self._on_lost
        if callback is None:
            return
        try:
            callback(err)
        except Exception:
            log.exception("klock: on_lost callback of lease %s raised", self.lease_id)


class Lease(LeaseState):
    """Granted leases, renewed by the client's keep-alive thread at ``ttl / 3``.

    Returned by :meth:`KlockClient.lease` (one resource) and
    :meth:`KlockClient.lease_all` (several, taken atomically). Use it as a
    context manager so the lease is released however the block ends::

        with klock.lease("agent-1", "s1", "FILE", "/src/auth.ts", "MUTATES", ttl=30000) as lease:
            edit_file()
            lease.check()  # raises LeaseLostError if the lease was lost

    If a renewal finds the lease gone (expired, revoked) or cannot reach the
    daemon before the lease expires, the lease is *lost*: :attr:`lost`
    becomes True, :meth:`wait_lost` returns, :meth:`check` raises
    :class:`LeaseLostError`, and the ``on_lost`` callback (if any) runs once,
    in the keep-alive thread, with the error.
    """

    def __init__(
        self,
        client: "KlockClient",
        grants: List[Dict[str, Any]],
        ttl: int,
        on_lost: Optional[Callable[[KlockError], None]] = None,
        sent: Optional[float] = None,
    ) -> None:
        super().__init__(grants, ttl, on_lost, sent)
        self._client = client
        self._lost_event = threading.Event()
        if self.renewable:
            client._keepalive.add(self)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the lease is lost or ``timeout`` seconds pass; returns :attr:`lost`."""
        return self._lost_event.wait(timeout)

    def release(self) -> bool:
        """Stops renewing and releases the lease (all of its grants).

        Returns True if the daemon released them, False if they were no
        longer active (lost, or already released). Safe to call more than once.
        """
        self._client._keepalive.remove(self)
        if not self._begin_release():
            return False
        released = [self._client.release_lease(i) for i in self.lease_ids]
        return all(released)

    def report_lost(self, err: LeaseLostError) -> None:
        self._lost_event.set()
        super().report_lost(err)


class KeepAlive:
    """Renews every kept-alive lease of one client, from one thread.

    The thread starts with the first lease and ends when the client has none
    left (or is closed), so an idle client has no keep-alive thread.
    """

    def __init__(self, client: "KlockClient") -> None:
        self._client = client
        # _lock guards the fields that follow.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._leases: Set[Lease] = set()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="klock-keepalive",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)
            self._cond.notify()

    def stop(self) -> None:
        """Stops renewing (the client is closing)."""
        with self._lock:
            self._stopped = True
            self._leases.clear()
            self._cond.notify()

    def threads(self) -> int:
        """How many keep-alive threads run for this client (0 or 1)."""
        with self._lock:
            return 0 if self._thread is None else 1

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stopped or not self._leases:
                        self._thread = None
                        return
                    now = _monotonic()
                    due = [l for l in self._leases if l.due <= now]
                    if due:
                        break
                    self._cond.wait(min(l.due for l in self._leases) - now)
            self._renew(due)

    def _renew(self, leases: List[Lease]) -> None:
        """Sends every due heartbeat at once, then judges the answers."""
        conn = self._client._conn
        sent: List[Tuple[Lease, float, List["Call"]]] = []
        lost: List[Tuple[Lease, LeaseLostError]] = []
        for lease in leases:
            at = _monotonic()
            try:
                calls = [conn.submit("heartbeat", wire.heartbeat_tail(i)) for i in lease.lease_ids]
            except KlockError as e:
                self._failed(lease, e, lost)
                continue
            sent.append((lease, at, calls))
        for lease, at, calls in sent:
            # Never wait for an answer past the end of this try.
            timeout = min(max(lease.renew_wait(), 0.001), self._client.timeout)
            deadline = _monotonic() + timeout
            try:
                results = [conn.wait(c, deadline, timeout) for c in calls]
            except KlockError as e:
                self._failed(lease, e, lost)
                continue
            lease.renewed(results, at)
        for lease, err in lost:
            self.remove(lease)
            lease.report_lost(err)  # outside every lock: it runs user code

    def _failed(self, lease: Lease, e: KlockError,
                lost: List[Tuple[Lease, LeaseLostError]]) -> None:
        last_try = lease.last_try
        err = lease.renewal_failed(e)
        if err is not None:
            lost.append((lease, err))
        elif lease.last_try and not last_try:
            # The reconnect backoff may be sleeping past a daemon that came
            # back in time: redial now, for the last try.
            self._client._conn.redial_now()
