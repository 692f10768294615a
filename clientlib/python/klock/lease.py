"""Lease: a granted lease kept alive in the background until released."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from .errors import KlockError, LeaseLostError, NotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from .client import KlockClient

__all__ = ["Lease"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Lease:
    """A granted lease, renewed by a background thread at ``ttl / 3``.

    Returned by :meth:`KlockClient.lease`. Use it as a context manager so the
    lease is released however the block ends::

        with klock.lease("agent-1", "s1", "FILE", "/src/auth.ts", "MUTATES", ttl=30000) as lease:
            edit_file()
            lease.check()  # raises LeaseLostError if the lease was lost

    If a renewal finds the lease gone (expired, revoked) or cannot reach the
    daemon before the lease expires, the lease is *lost*: :attr:`lost`
    becomes True, :meth:`wait_lost` returns, :meth:`check` raises
    :class:`LeaseLostError`, and the ``on_lost`` callback (if any) runs once,
    in the keep-alive thread, with the error.

    Attributes:
        grant: the daemon's grant dict (``lease_id``, ``fence``, ``resource``, ...).
        lease_id: the lease's UUID.
        fence: the fencing token of this grant.
        resource: the resource key, e.g. ``"FILE:/src/auth.ts"``.
        ttl: the lease lifetime in ms; each renewal extends it by this much.
    """

    def __init__(
        self,
        client: "KlockClient",
        grant: Dict[str, Any],
        ttl: int,
        on_lost: Optional[Callable[[KlockError], None]] = None,
    ) -> None:
        self.grant: Dict[str, Any] = grant
        self.lease_id: str = grant["lease_id"]
        self.fence: int = int(grant.get("fence", 0))
        self.resource: str = grant.get("resource", "")
        self.agent_id: str = grant.get("agent_id", "")
        self.session_id: str = grant.get("session_id", "")
        self.predicate: str = grant.get("predicate", "")
        self.ttl: int = int(ttl)
        self._client = client
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._lost = threading.Event()
        # _lock guards the fields that follow.
        self._lock = threading.Lock()
        self._expires_at: int = int(grant.get("expires_at", 0))
        self._lost_error: Optional[KlockError] = None
        self._released = False
        self._thread = threading.Thread(
            target=self._keep_alive, name="klock-keepalive-" + self.lease_id[:8], daemon=True
        )
        self._thread.start()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("released" if self._released else "held")
        return "<Lease %s %s fence=%d %s>" % (self.lease_id, self.resource, self.fence, state)

    @property
    def expires_at(self) -> int:
        """When the lease expires unless renewed (Unix ms), as of the last renewal."""
        with self._lock:
            return self._expires_at

    @property
    def lost(self) -> bool:
        """Reports whether the lease was lost while held (not set by release())."""
        return self._lost.is_set()

    @property
    def lost_error(self) -> Optional[KlockError]:
        """Why the lease was lost, or None while it is held."""
        with self._lock:
            return self._lost_error

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the lease is lost or ``timeout`` seconds pass; returns :attr:`lost`."""
        return self._lost.wait(timeout)

    def check(self) -> None:
        """Raises :class:`LeaseLostError` if the lease was lost; else returns None."""
        err = self.lost_error
        if err is not None:
            raise err

    def release(self) -> bool:
        """Stops the keep-alive and releases the lease.

        Returns True if the daemon released it, False if it was no longer
        active (lost, or already released). Safe to call more than once.
        """
        with self._lock:
            if self._released:
                return False
            self._released = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost:
            return False
        return self._client.release_lease(self.lease_id)

    def _keep_alive(self) -> None:
        interval = max(self.ttl / 3.0, 1.0) / 1000.0
        delay = interval
        while not self._stop.wait(delay):
            remaining = self.expires_at - _now_ms()
            # Never wait for an answer past the lease's expiry.
            timeout = min(max(remaining / 1000.0, 0.05), self._client.timeout)
            try:
                result = self._client._call("heartbeat", {"lease_id": self.lease_id}, timeout)
            except NotFoundError as e:
                self._mark_lost(LeaseLostError(
                    "klock: lease %s on %s is no longer active: %s"
                    % (self.lease_id, self.resource, e.message)
                ))
                return
            except Exception as e:  # transport trouble: retry until the lease would expire
                if self._stop.is_set():
                    return
                if _now_ms() >= self.expires_at:
                    self._mark_lost(LeaseLostError(
                        "klock: could not renew lease %s on %s before it expired: %s"
                        % (self.lease_id, self.resource, e)
                    ))
                    return
                # Retry soon, well before expiry.
                delay = min(interval, max((self.expires_at - _now_ms()) / 4000.0, 0.005))
                continue
            with self._lock:
                self._expires_at = int(result.get("expires_at", self._expires_at))
            delay = interval

    def _mark_lost(self, err: LeaseLostError) -> None:
        with self._lock:
            if self._released:
                return
            self._lost_error = err
        self._lost.set()
        callback = self._on_lost
        if callback is not None:
            try:
                callback(err)
            except Exception:  # a user callback must not kill the keep-alive thread silently
                import traceback

                traceback.print_exc()
