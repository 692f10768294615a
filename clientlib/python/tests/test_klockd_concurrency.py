"""End-to-end: blocking acquire, kept-alive leases, threads sharing a client,
and reconnecting across a daemon restart (env KLOCKD_BIN)."""

from __future__ import annotations

import threading
import time
import unittest
from typing import Any, Dict, List

import os

from support import CutProxy, KlockdTestCase, now_ms, wait_until

import klock


class BlockingAcquireTest(KlockdTestCase):
    def test_senior_waits_in_daemon_until_release(self) -> None:
        k = self.klock
        k.register_agent("senior", 100)
        k.register_agent("junior", 200)
        held = self.grant("junior", "j", "/x")
        denial = k.acquire_lease("senior", "s", "FILE", "/x", "MUTATES", 1000)
        self.assertEqual((denial["success"], denial["reason"]), (False, "WAIT"))

        got: Dict[str, Any] = {}
        t = threading.Thread(target=lambda: got.update(
            k.acquire("senior", "s", "FILE", "/x", "MUTATES", 60000, timeout=30)))
        t.start()
        wait_until(lambda: k.stats()["waiters"] == 1, what="the senior to wait in the daemon")
        self.assertEqual(got, {})
        self.assertTrue(k.release_lease(held["lease_id"]))
        t.join(30)
        self.assertTrue(got.get("success"), got)
        self.assertEqual(got["agent_id"], "senior")

    def test_junior_retries_die_until_expiry(self) -> None:
        k = self.klock
        k.register_agent("senior", 100)
        k.register_agent("junior", 200)
        held = self.grant("senior", "s", "/x", ttl=300)
        g = k.acquire("junior", "j", "FILE", "/x", "MUTATES", 1000, timeout=30)
        self.assertTrue(g["success"])
        self.assertGreaterEqual(g["acquired_at"], held["expires_at"])

    def test_timeout(self) -> None:
        k = self.klock
        k.register_agent("senior", 100)
        k.register_agent("junior", 200)
        self.grant("senior", "s", "/x")
        with self.assertRaises(klock.AcquireTimeoutError) as cm:
            k.acquire("junior", "j", "FILE", "/x", "MUTATES", 1000, timeout=0.2)
        self.assertEqual(cm.exception.reason, "DIE")
        self.assertEqual(cm.exception.held_by, "senior")
        # a senior whose wait in the daemon runs out
        k.register_agent("elder", 1)
        with self.assertRaises(klock.AcquireTimeoutError) as cm:
            k.acquire("elder", "e", "FILE", "/x", "MUTATES", 1000, timeout=0.2)
        self.assertEqual(cm.exception.reason, "WAIT")
        self.assertEqual(k.stats()["waiters"], 0)


class LeaseContextTest(KlockdTestCase):
    def test_kept_alive_past_ttl_and_released(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=300) as lease:
            first_expiry = lease.expires_at
            # Outlive the first ttl several times over; the keep-alive renews.
            wait_until(lambda: now_ms() > first_expiry + 600, what="two ttls to pass")
            self.assertFalse(lease.lost, lease.lost_error)
            lease.check()
            self.assertEqual(k.active_lease_count(), 1)
            self.assertGreater(lease.expires_at, first_expiry)
            leases = k.list_leases()["leases"]
            self.assertEqual(leases[0]["lease_id"], lease.lease_id)
            self.assertEqual(leases[0]["fence"], lease.fence)
        self.assertEqual(k.active_lease_count(), 0, "released when the block ends")
        self.assertFalse(lease.lost)

    def test_released_on_exception(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        with self.assertRaises(RuntimeError):
            with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=10000):
                raise RuntimeError("boom")
        self.assertEqual(k.active_lease_count(), 0)

    def test_loss_is_reported(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        lost: List[klock.KlockError] = []
        with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=300, on_lost=lost.append) as lease:
            self.assertTrue(k.revoke(lease.lease_id))
            self.assertTrue(lease.wait_lost(10), "the keep-alive notices the revoke")
            with self.assertRaises(klock.LeaseLostError):
                lease.check()
        self.assertEqual(len(lost), 1)

    def test_waits_like_acquire(self) -> None:
        k = self.klock
        k.register_agent("senior", 1)
        k.register_agent("junior", 2)
        held = self.grant("senior", "s", "/x", ttl=300)
        with k.lease("junior", "j", "FILE", "/x", "MUTATES", ttl=1000, timeout=30) as lease:
            self.assertNotEqual(lease.lease_id, held["lease_id"])
            self.assertGreater(lease.fence, held["fence"])


class KeepAliveThreadTest(KlockdTestCase):
    def test_one_keepalive_thread_for_all_leases(self) -> None:
        k = self.klock
        k.register_agent("a", 1)

        def keepalives() -> int:
            return sum(1 for t in threading.enumerate() if t.name == "klock-keepalive")

        base = keepalives()  # other tests' clients may still be winding down
        leases = [k.lease("a", "s", "FILE", "/f%d" % n, "MUTATES", ttl=300) for n in range(6)]
        wait_until(lambda: all(l.expires_at > l.grants[0]["expires_at"] for l in leases),
                   what="every lease renewed")
        self.assertEqual(k._keepalive.threads(), 1)
        self.assertLessEqual(keepalives(), base + 1, "one keep-alive thread for six leases")
        for l in leases:
            self.assertTrue(l.release())
        wait_until(lambda: k._keepalive.threads() == 0, what="the keep-alive thread to end")
        self.assertEqual(k.active_lease_count(), 0)

    def test_a_failing_on_lost_callback_is_logged(self) -> None:
        k = self.klock
        k.register_agent("a", 1)

        def broken(err: klock.KlockError) -> None:
            raise RuntimeError("callback bug")

        with self.assertLogs("klock", level="ERROR") as logs:
            lease = k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=300, on_lost=broken)
            self.assertTrue(k.revoke(lease.lease_id))
            self.assertTrue(lease.wait_lost(10))
            wait_until(lambda: logs.output, what="the log record")
        self.assertIn("callback bug", "\n".join(logs.output))
        self.assertIn(lease.lease_id, logs.output[0])


class ThreadsTest(KlockdTestCase):
    def test_threads_share_one_client_safely(self) -> None:
        """Eight agents take turns on one file through one shared client; the
        critical sections never overlap and every lease is released."""
        k = self.klock
        workers, rounds = 8, 5
        for n in range(workers):
            k.register_agent("w%d" % n, n + 1)
        inside = []
        overlaps = []
        errors: List[BaseException] = []
        mu = threading.Lock()

        def worker(n: int) -> None:
            try:
                for i in range(rounds):
                    # ttl 300 ms keeps juniors' DIE back-off short; the
                    # keep-alive holds the lease however slow the machine is.
                    with k.lease("w%d" % n, "s%d" % i, "FILE", "/shared", "MUTATES",
                                 ttl=300, timeout=60) as lease:
                        with mu:
                            if inside:
                                overlaps.append((n, list(inside)))
                            inside.append(n)
                        with mu:
                            inside.remove(n)
                        lease.check()
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(overlaps, [])
        self.assertEqual(k.active_lease_count(), 0)
        self.assertEqual(k.stats()["grants"], workers * rounds)
        wait_until(lambda: k.stats()["connections"] == 1, what="one socket shared by all threads")


# The conflict matrix of protocol/README.md: the pairs that may coexist.
_COMPATIBLE = {frozenset(p) for p in [("PROVIDES", "CONSUMES"), ("PROVIDES", "DEPENDS_ON"),
                                      ("CONSUMES",), ("CONSUMES", "DEPENDS_ON"), ("DEPENDS_ON",)]}
_PREDICATES = ["PROVIDES", "CONSUMES", "MUTATES", "DELETES", "DEPENDS_ON", "RENAMES"]


def conflicts(a: str, b: str) -> bool:
    return frozenset((a, b)) not in _COMPATIBLE


class Occupancy:
    """The occupancy check of tests/e2e_safety_test.go: a thread marks a
    lease once the daemon's grant reaches it and unmarks it before sending
    the release, so two conflicting marks held at once would mean the daemon
    granted a conflicting lease (or the client handed a grant to the wrong
    caller). Fences must be unique too."""

    def __init__(self) -> None:
        self.mu = threading.Lock()
        self.held: Dict[str, List[Dict[str, Any]]] = {}
        self.fences: Dict[int, str] = {}
        self.errors: List[str] = []

    def mark(self, agent: str, grant: Dict[str, Any]) -> None:
        with self.mu:
            for other in self.held.get(grant["resource"], []):
                if other["agent_id"] != agent and conflicts(other["predicate"], grant["predicate"]):
                    self.errors.append("%s: %s holds %s (fence %d) while %s was granted %s (fence %d)"
                                       % (grant["resource"], other["agent_id"], other["predicate"],
                                          other["fence"], agent, grant["predicate"], grant["fence"]))
            if grant["agent_id"] != agent:
                self.errors.append("%s got a grant for %s" % (agent, grant["agent_id"]))
            prev = self.fences.get(grant["fence"])
            if prev is not None and prev != grant["lease_id"]:
                self.errors.append("fence %d given to %s and %s" % (grant["fence"], prev,
                                                                   grant["lease_id"]))
            self.fences[grant["fence"]] = grant["lease_id"]
            self.held.setdefault(grant["resource"], []).append(grant)

    def unmark(self, grant: Dict[str, Any]) -> None:
        with self.mu:
            self.held[grant["resource"]].remove(grant)


class OccupancyTest(KlockdTestCase):
    def test_eight_threads_hammer_one_client(self) -> None:
        """8 threads, each its own agent, share one client on 4 resources with
        every predicate, single and atomic multi acquires, some parked in the
        daemon; bounded by rounds and time. No two conflicting leases are ever
        held at once, every release of a held lease succeeds, and all of it
        goes through one connection."""
        import random

        k = self.klock
        threads, rounds, resources = 8, 150, 4
        for n in range(threads):
            k.register_agent("agent-%d" % n, 100 + n)
        occ = Occupancy()
        errors: List[BaseException] = []
        counts = {"grants": 0, "denials": 0}
        stop_at = time.monotonic() + 20

        def worker(n: int) -> None:
            agent = "agent-%d" % n
            rng = random.Random(n)
            try:
                for _ in range(rounds):
                    if time.monotonic() > stop_at:
                        return
                    first = rng.randrange(resources)
                    intents = [("SYMBOL", "r%d" % ((first + i) % resources), rng.choice(_PREDICATES))
                               for i in range(rng.randint(1, 2))]
                    wait = 50 if rng.randrange(3) == 0 else None
                    if len(intents) == 1:
                        r = k.acquire_lease(agent, "s", *intents[0], 60000, wait_timeout=wait)
                        grants = [r] if r["success"] else []
                    else:
                        r = k.acquire_many(agent, "s", intents, 60000, wait_timeout=wait)
                        grants = r["leases"] if r["success"] else []
                    with occ.mu:
                        counts["grants" if grants else "denials"] += 1
                    for g in grants:
                        occ.mark(agent, g)
                    for _ in range(rng.randrange(50)):  # hold them a moment, without sleeping
                        rng.random()
                    for g in grants:
                        occ.unmark(g)
                        if not k.release_lease(g["lease_id"]):
                            raise AssertionError("release of held lease %s on %s returned False"
                                                 % (g["lease_id"], g["resource"]))
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in ts), "a worker hung")
        self.assertEqual(errors, [])
        self.assertEqual(occ.errors, [])
        self.assertGreaterEqual(counts["grants"], threads, counts)
        self.assertEqual(k.active_lease_count(), 0)
        self.assertEqual(k.stats()["connections"], 1, "all threads share one connection")


class ReconnectInMemoryTest(KlockdTestCase):
    def test_threads_keep_calling_through_restarts(self) -> None:
        """Calls in flight while the daemon dies are resent to its successor:
        no thread sees an error."""
        k = self.klock
        stop = threading.Event()
        errors: List[BaseException] = []
        calls = [0]
        mu = threading.Lock()

        def caller() -> None:
            try:
                while not stop.is_set():
                    k.stats()
                    with mu:
                        calls[0] += 1
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for restart in range(3):
                with mu:
                    target = calls[0] + 20
                wait_until(lambda: calls[0] >= target or errors, what="calls to flow")
                if restart % 2:
                    self.daemon.kill()
                    self.daemon.start()
                else:
                    self.daemon.restart()
            with mu:
                target = calls[0] + 20
            wait_until(lambda: calls[0] >= target or errors, what="calls after the last restart")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(errors, [])
        self.assertGreaterEqual(k.reconnects, 3)
        k.register_agent("after", 1)  # the fresh daemon serves this client
        self.assertEqual(k.list_agents()["agents"][0]["agent_id"], "after")


class LostAnswerTest(KlockdTestCase):
    def proxied_client(self) -> "tuple[klock.KlockClient, CutProxy]":
        proxy = CutProxy(os.path.join(self.dir, "p.sock"), self.daemon.socket_path)
        self.addCleanup(proxy.close)
        c = klock.KlockClient(proxy.path, timeout=10)
        self.addCleanup(c.close)
        return c, proxy

    def test_resent_acquire_returns_the_same_lease(self) -> None:
        """The daemon grants, the answer is lost with the connection; the
        client's resend carries the same idem key and gets the same lease."""
        c, proxy = self.proxied_client()
        c.register_agent("a", 1)
        proxy.cut("acquire")
        g = c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 60000)
        self.assertEqual(proxy.cuts, 1)
        self.assertGreaterEqual(c.reconnects, 1)
        self.assertTrue(g["success"], g)
        leases = self.klock.list_leases()["leases"]
        self.assertEqual([l["lease_id"] for l in leases], [g["lease_id"]], "one lease, not two")
        self.assertEqual(self.klock.stats()["grants"], 1)

    def test_resent_acquire_many_returns_the_same_set(self) -> None:
        c, proxy = self.proxied_client()
        c.register_agent("a", 1)
        proxy.cut("acquire_many")
        g = c.acquire_many("a", "s", [("FILE", "/x", "MUTATES"), ("FILE", "/y", "MUTATES")], 60000)
        self.assertEqual(proxy.cuts, 1)
        self.assertTrue(g["success"], g)
        self.assertEqual(self.klock.active_lease_count(), 2)

    def test_resent_release_is_harmless(self) -> None:
        c, proxy = self.proxied_client()
        c.register_agent("a", 1)
        g = c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 60000)
        proxy.cut("release")
        # The first release worked but its answer was lost; the resend finds
        # nothing to release. The lease is gone either way.
        self.assertIs(c.release_lease(g["lease_id"]), False)
        self.assertEqual(self.klock.active_lease_count(), 0)


class ReconnectTest(KlockdTestCase):
    persistent = True

    def test_survives_kill_and_restart(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        held = self.grant("a", "s", "/x", ttl=60000)
        self.daemon.kill()
        self.daemon.start()
        # the same client, with no action from the caller
        r = k.heartbeat_lease(held["lease_id"])
        self.assertEqual(r["lease_id"], held["lease_id"])
        self.assertEqual(k.active_lease_count(), 1)
        self.assertGreaterEqual(k.reconnects, 1)
        again = k.acquire_lease("a", "s2", "FILE", "/y", "MUTATES", 60000)
        self.assertGreater(again["fence"], held["fence"], "fences grow across restarts")

    def test_call_made_while_daemon_is_down(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        self.daemon.stop()
        got: Dict[str, Any] = {}
        t = threading.Thread(target=lambda: got.update(
            k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 60000)))
        t.start()
        wait_until(lambda: k._conn._pending, what="the acquire to be in flight")
        self.daemon.start()
        t.join(30)
        self.assertTrue(got.get("success"), got)
        leases = k.list_leases(agent_id="a")["leases"]
        self.assertEqual([l["lease_id"] for l in leases], [got["lease_id"]],
                         "exactly one lease, however often it was sent")

    def test_kept_alive_lease_survives_restart(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=5000) as lease:
            self.daemon.restart()
            before = lease.expires_at
            wait_until(lambda: lease.expires_at > before or lease.lost,
                       what="a renewal on the restarted daemon")
            self.assertFalse(lease.lost, lease.lost_error)
            other = self.new_client()
            self.assertEqual(other.list_leases()["leases"][0]["lease_id"], lease.lease_id)
        self.assertEqual(k.active_lease_count(), 0)

    def test_keepalive_redials_at_once_before_giving_a_lease_up(self) -> None:
        """protocol/README.md "Time and fences" (issue 12): klockd is back
        well before the lease's deadline, but the redial backoff sleeps past
        it; the keep-alive then redials at once for a last renewal, two
        margins before the deadline, instead of declaring the lease lost."""
        from klock._core import Redial

        for name in ("FIRST", "CAP"):
            self.addCleanup(setattr, Redial, name, getattr(Redial, name))
            setattr(Redial, name, 60.0)  # one failed dial: the next in a minute
        k = self.new_client(timeout=30)  # its reader thread starts with that backoff
        k.register_agent("a", 1)
        with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=6000) as lease:
            before = lease.expires_at
            self.daemon.kill()  # the lease stays in klockd's log
            wait_until(lambda: k._conn._dial_error is not None, what="a renewal's redial to fail")
            self.daemon.start()
            wait_until(lambda: lease.expires_at > before or lease.lost, timeout=30,
                       what="a renewal on the restarted daemon, or the loss")
            self.assertFalse(lease.lost, lease.lost_error)
            self.assertEqual(k.reconnects, 1)
            other = self.new_client()
            self.assertEqual([l["lease_id"] for l in other.list_leases()["leases"]],
                             [lease.lease_id])

    def test_waiting_acquire_resent_after_kill(self) -> None:
        self.check_waiting_acquire_resent(graceful=False)

    def test_waiting_acquire_resent_after_graceful_restart(self) -> None:
        # klockd answers parked acquires SHUTTING_DOWN on SIGTERM; the client
        # resends them to the restarted daemon instead of failing.
        self.check_waiting_acquire_resent(graceful=True)

    def check_waiting_acquire_resent(self, graceful: bool) -> None:
        k = self.klock
        k.register_agent("senior", 1)
        k.register_agent("junior", 2)
        held = self.grant("junior", "j", "/x", ttl=60000)
        got: Dict[str, Any] = {}
        t = threading.Thread(target=lambda: got.update(
            k.acquire("senior", "s", "FILE", "/x", "MUTATES", 60000, timeout=60)))
        t.start()
        wait_until(lambda: k.stats()["waiters"] == 1, what="the senior to wait")
        if graceful:
            self.daemon.restart()
        else:
            self.daemon.kill()
            self.daemon.start()
        wait_until(lambda: k.stats()["waiters"] == 1, what="the wait to be resent")
        self.assertTrue(k.release_lease(held["lease_id"]))
        t.join(60)
        self.assertTrue(got.get("success"), got)
        self.assertEqual(len(k.list_leases(agent_id="senior")["leases"]), 1)


if __name__ == "__main__":
    unittest.main()
