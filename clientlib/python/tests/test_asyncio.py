"""End-to-end tests of klock.asyncio.KlockClient against a real klockd (env KLOCKD_BIN)."""

from __future__ import annotations

import asyncio
import os
import threading
import unittest
import uuid
from typing import Any, Dict, List

from support import CutProxy, KlockdTestCase, now_ms, short_tempdir

import klock
from klock.asyncio import AsyncLease, KlockClient


async def eventually(cond: Any, what: str, timeout: float = 10.0) -> None:
    """Awaits until cond() (a coroutine function) returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.002
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class AsyncioTest(KlockdTestCase, unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.aklock = await self.new_async_client()

    async def new_async_client(self, path: str = "", timeout: float = 10.0) -> KlockClient:
        c = KlockClient(path or self.daemon.socket_path, timeout=timeout)
        await c.connect()
        self.addAsyncCleanup(c.close)
        return c

    async def test_complete_example(self) -> None:
        k = self.aklock
        self.assertIsNone(await k.register_agent("agent-senior", 100))
        await k.register_agent("agent-junior", 200)
        senior = await k.acquire_lease("agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", 60000)
        self.assertIs(senior["success"], True)
        self.assertEqual(senior["resource"], "FILE:/src/auth.ts")
        uuid.UUID(senior["lease_id"])
        junior = await k.acquire_lease("agent-junior", "s2", "FILE", "/src/auth.ts", "MUTATES", 60000)
        self.assertEqual((junior["success"], junior["reason"], junior["held_by"]),
                         (False, "DIE", "agent-senior"))
        other = await k.acquire_lease("agent-junior", "s2", "FILE", "/src/utils.ts", "MUTATES", 60000)
        self.assertIs(other["success"], True)
        self.assertIs(await k.release_lease(senior["lease_id"]), True)
        self.assertIs(await k.release_lease(other["lease_id"]), True)
        self.assertIs(await k.release_lease(other["lease_id"]), False)
        self.assertEqual(await k.active_lease_count(), 0)
        self.assertEqual(await k.evict_expired(), 0)

    async def test_same_dicts_and_errors_as_the_sync_client(self) -> None:
        k, s = self.aklock, self.klock
        await k.register_agent("a", 1)
        g = await k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 60000)
        self.assertEqual(sorted(g), sorted(s.acquire_lease("a", "s", "FILE", "/y", "MUTATES", 60000)))
        self.assertEqual(await k.list_leases(agent_id="a", limit=1), s.list_leases(agent_id="a", limit=1))
        self.assertEqual((await k.heartbeat_lease(g["lease_id"], 60000))["lease_id"], g["lease_id"])
        many = await k.acquire_many("a", "t", [("FILE", "/m1", "CONSUMES"), ("FILE", "/m2", "CONSUMES")],
                                    60000)
        self.assertEqual(len(many["leases"]), 2)
        self.assertEqual(await k.end_session("a", "t"), 2)
        self.assertEqual((await k.list_agents())["agents"][0]["agent_id"], "a")
        self.assertGreaterEqual((await k.stats())["grants"], 3)
        self.assertEqual((await k.hello())["protocol"], 1)
        with self.assertRaises(klock.UnknownAgentError):
            await k.acquire_lease("ghost", "s", "FILE", "/x", "MUTATES", 1000)
        with self.assertRaises(klock.InvalidArgumentError):
            await k.acquire_lease("a", "s", "FILE", "/x", "SMASHES", 1000)
        with self.assertRaises(klock.NotFoundError):
            await k.heartbeat_lease(str(uuid.uuid4()))
        self.assertTrue(await k.revoke(g["lease_id"]))
        self.assertTrue(await k.freeze("FILE", "/z"))
        self.assertFalse(await k.thaw("FILE", "/z"))
        self.assertFalse(await k.unregister_agent("nobody"))

    async def test_no_threads(self) -> None:
        before = threading.active_count()
        k = await self.new_async_client()
        await k.register_agent("a", 1)
        async with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=300) as lease:
            await asyncio.sleep(0.25)  # at least one renewal
            self.assertFalse(lease.lost)
        await asyncio.gather(*(k.stats() for _ in range(50)))
        self.assertEqual(threading.active_count(), before, "the asyncio client started a thread")

    async def test_lease_context_is_kept_alive_and_released(self) -> None:
        k = self.aklock
        await k.register_agent("a", 1)
        async with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=300) as lease:
            self.assertIsInstance(lease, AsyncLease)
            first = lease.expires_at
            await eventually(lambda: _true_after(now_ms() > first + 600), "two ttls to pass")
            self.assertFalse(lease.lost, lease.lost_error)
            lease.check()
            self.assertEqual(await k.active_lease_count(), 1)
            self.assertGreater(lease.expires_at, first)
        self.assertEqual(await k.active_lease_count(), 0, "released when the block ends")
        awaited = await k.lease("a", "s", "FILE", "/y", "MUTATES", ttl=5000)
        self.assertEqual(await k.active_lease_count(), 1)
        self.assertTrue(await awaited.release())
        self.assertFalse(await awaited.release(), "a second release is a no-op")

    async def test_loss_is_reported(self) -> None:
        k = self.aklock
        await k.register_agent("a", 1)
        lost: List[klock.KlockError] = []
        async with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=300, on_lost=lost.append) as lease:
            self.assertTrue(await k.revoke(lease.lease_id))
            self.assertTrue(await lease.wait_lost(10))
            with self.assertRaises(klock.LeaseLostError):
                lease.check()
        self.assertEqual(len(lost), 1)

    async def test_blocking_acquire_waits_in_the_daemon(self) -> None:
        k = self.aklock
        await k.register_agent("senior", 1)
        await k.register_agent("junior", 2)
        held = await k.acquire_lease("junior", "j", "FILE", "/x", "MUTATES", 60000)
        waiting = asyncio.ensure_future(k.acquire("senior", "s", "FILE", "/x", "MUTATES", 60000,
                                                  timeout=30))
        await eventually(lambda: _waiters(k, 1), "the senior to wait in the daemon")
        self.assertFalse(waiting.done())
        self.assertTrue(await k.release_lease(held["lease_id"]))
        got = await asyncio.wait_for(waiting, 30)
        self.assertEqual(got["agent_id"], "senior")
        # a junior retries DIE until the senior's lease ends
        short = await k.acquire_lease("senior", "s", "FILE", "/y", "MUTATES", 300)
        g = await k.acquire("junior", "j", "FILE", "/y", "MUTATES", 1000, timeout=30)
        self.assertGreaterEqual(g["acquired_at"], short["expires_at"])
        with self.assertRaises(klock.AcquireTimeoutError) as cm:
            await k.acquire("junior", "j", "FILE", "/x", "MUTATES", 1000, timeout=0.2)
        self.assertEqual((cm.exception.reason, cm.exception.held_by), ("DIE", "senior"))

    async def test_lease_all_takes_every_path_at_once(self) -> None:
        k = self.aklock
        await k.register_agent("a", 1)
        await k.register_agent("b", 2)
        async with k.lease_all("a", "s", [("FILE", "/p", "MUTATES"), ("FILE", "/q", "MUTATES")],
                               ttl=5000) as lease:
            self.assertEqual(len(lease.lease_ids), 2)
            d = await k.acquire_lease("b", "t", "FILE", "/q", "MUTATES", 1000)
            self.assertEqual(d["reason"], "DIE")
        self.assertEqual(await k.active_lease_count(), 0)

    async def test_many_tasks_share_one_connection(self) -> None:
        k = self.aklock
        for n in range(16):
            await k.register_agent("t%d" % n, n + 1)

        async def worker(n: int) -> None:
            for i in range(20):
                g = await k.acquire_lease("t%d" % n, "s", "FILE", "/t/%d" % n, "MUTATES", 60000)
                self.assertTrue(g["success"], g)
                self.assertTrue(await k.release_lease(g["lease_id"]))

        await asyncio.gather(*(worker(n) for n in range(16)))
        self.assertEqual(await k.active_lease_count(), 0)
        self.assertEqual(self.klock.stats()["grants"], 16 * 20)

    async def test_resent_acquire_returns_the_same_lease(self) -> None:
        proxy = CutProxy(os.path.join(self.dir, "p.sock"), self.daemon.socket_path)
        self.addCleanup(proxy.close)
        c = await self.new_async_client(proxy.path)
        await c.register_agent("a", 1)
        proxy.cut("acquire")
        g = await c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 60000)
        self.assertEqual(proxy.cuts, 1)
        self.assertGreaterEqual(c.reconnects, 1)
        self.assertTrue(g["success"], g)
        leases = self.klock.list_leases()["leases"]
        self.assertEqual([l["lease_id"] for l in leases], [g["lease_id"]], "one lease, not two")

    async def test_timeout_and_cancel_release_a_late_grant(self) -> None:
        # An acquire whose caller gave up stays in flight; when the daemon
        # grants it after all, the client releases the lease at once.
        k = self.aklock
        await k.register_agent("senior", 1)
        await k.register_agent("junior", 2)
        held = await k.acquire_lease("junior", "j", "FILE", "/x", "MUTATES", 60000)
        task = asyncio.ensure_future(
            k.acquire_lease("senior", "s", "FILE", "/x", "MUTATES", 60000, wait_timeout=30000))
        await eventually(lambda: _waiters(k, 1), "the senior to wait")
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        self.assertTrue(await k.release_lease(held["lease_id"]))
        await eventually(lambda: _count(k, 0), "the late grant to be released")
        self.assertEqual(self.klock.stats()["grants"], 2, "the senior was granted, then released")


class AsyncioRestartTest(KlockdTestCase, unittest.IsolatedAsyncioTestCase):
    persistent = True

    async def test_restart_with_leases_held_and_acquires_parked(self) -> None:
        for graceful in (False, True):
            with self.subTest(graceful=graceful):
                await self.check_restart(graceful)

    async def check_restart(self, graceful: bool) -> None:
        k = KlockClient(self.daemon.socket_path, timeout=30)
        self.addAsyncCleanup(k.close)
        await k.register_agent("senior", 1)
        await k.register_agent("junior", 2)
        paths = ["/%s/%d" % (graceful, n) for n in range(3)]
        lease = await k.lease_all("junior", "j", [("FILE", p, "MUTATES") for p in paths], ttl=3000)
        session = "s-%s" % graceful
        parked = [asyncio.ensure_future(k.acquire("senior", session, "FILE", p, "MUTATES", 60000,
                                                  timeout=60)) for p in paths]
        await eventually(lambda: _waiters(k, 3), "three acquires to park in the daemon")
        loop = asyncio.get_running_loop()
        if graceful:  # parked acquires are answered SHUTTING_DOWN, then resent
            await loop.run_in_executor(None, self.daemon.restart)
        else:
            await loop.run_in_executor(None, self.daemon.kill)
            await loop.run_in_executor(None, self.daemon.start)
        await eventually(lambda: _waiters(k, 3), "the parked acquires to be resent")
        before = lease.expires_at
        await eventually(lambda: _true_after(lease.expires_at > before or lease.lost),
                         "a renewal on the restarted daemon")
        self.assertFalse(lease.lost, lease.lost_error)
        self.assertFalse(any(t.done() for t in parked))
        self.assertTrue(await lease.release())
        grants: List[Dict[str, Any]] = list(await asyncio.wait_for(asyncio.gather(*parked), 60))
        self.assertEqual(len({g["lease_id"] for g in grants}), 3)
        leases = (await k.list_leases(agent_id="senior"))["leases"]
        self.assertEqual(sorted(l["lease_id"] for l in leases), sorted(g["lease_id"] for g in grants),
                         "one lease per parked acquire, however often it was sent")
        self.assertGreaterEqual(k.reconnects, 1)
        self.assertEqual(await k.end_session("senior", session), 3)
        await k.close()


class AsyncioKeepAliveTest(KlockdTestCase, unittest.IsolatedAsyncioTestCase):
    persistent = True

    async def test_keepalive_redials_at_once_before_giving_a_lease_up(self) -> None:
        # As ReconnectTest's test of the same name, for the asyncio client.
        from klock._core import Redial

        for name in ("FIRST", "CAP"):
            self.addCleanup(setattr, Redial, name, getattr(Redial, name))
            setattr(Redial, name, 60.0)  # one failed dial: the next in a minute
        k = KlockClient(self.daemon.socket_path, timeout=30)
        self.addAsyncCleanup(k.close)
        await k.register_agent("a", 1)
        loop = asyncio.get_running_loop()
        async with k.lease("a", "s", "FILE", "/x", "MUTATES", ttl=6000) as lease:
            before = lease.expires_at
            await loop.run_in_executor(None, self.daemon.kill)
            await eventually(lambda: _true_after(k._conn._dial_error is not None),
                             "a renewal's redial to fail")
            await loop.run_in_executor(None, self.daemon.start)
            await eventually(lambda: _true_after(lease.expires_at > before or lease.lost),
                             "a renewal on the restarted daemon, or the loss", timeout=30)
            self.assertFalse(lease.lost, lease.lost_error)
            self.assertEqual(k.reconnects, 1)


class AsyncioNoDaemonTest(unittest.IsolatedAsyncioTestCase):
    async def test_daemon_not_running(self) -> None:
        path = os.path.join(short_tempdir(self), "none.sock")
        k = KlockClient(path)
        with self.assertRaises(klock.DaemonNotRunningError) as cm:
            await k.stats()
        self.assertIn(path, str(cm.exception))
        await k.close()


async def _true_after(value: Any) -> Any:
    return value


async def _waiters(k: KlockClient, n: int) -> bool:
    return bool((await k.stats())["waiters"] == n)


async def _count(k: KlockClient, n: int) -> bool:
    return await k.active_lease_count() == n


if __name__ == "__main__":
    unittest.main()
