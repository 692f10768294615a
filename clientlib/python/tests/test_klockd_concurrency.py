"""End-to-end: blocking acquire, kept-alive leases, threads sharing a client,
and reconnecting across a daemon restart (env KLOCKD_BIN)."""

from __future__ import annotations

import threading
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
        wait_until(lambda: not k._conn.connected, what="the client to see the daemon go")
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
