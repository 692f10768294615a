"""klock.protected against a real klockd (env KLOCKD_BIN): sync and async tools."""

from __future__ import annotations

import asyncio
import threading
import time
import unittest
from typing import Any, Dict, List

from support import KlockdTestCase, now_ms, wait_until

import klock
from klock import KlockConflictError, protected
from klock.asyncio import KlockClient as AsyncKlockClient


class ProtectedSyncTest(KlockdTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.klock.register_agent("senior", 100)
        self.klock.register_agent("junior", 200)

    def holders(self, path: str) -> List[str]:
        return [l["agent_id"] for l in self.klock.list_leases(resource_prefix="FILE:" + path)["leases"]]

    def test_grant_runs_the_tool_and_releases(self) -> None:
        seen: List[List[str]] = []

        @protected(self.klock, "senior", "s1", "FILE", lambda kw: kw["path"], ttl_ms=5000)
        def write(path: str, text: str) -> str:
            seen.append(self.holders(path))
            return text.upper()

        self.assertEqual(write(path="/src/a.ts", text="hi"), "HI")
        self.assertEqual(write("/src/a.ts", "positional"), "POSITIONAL",
                         "positional arguments reach the extractor by name")
        self.assertEqual(seen, [["senior"], ["senior"]])
        self.assertEqual(self.klock.active_lease_count(), 0)
        self.assertEqual(write.__name__, "write")

    def test_die_raises_conflict_error(self) -> None:
        held = self.grant("senior", "s1", "/src/a.ts")
        ran = []

        @protected(self.klock, "junior", "s2", "FILE", lambda kw: kw["path"])
        def write(path: str) -> None:
            ran.append(path)

        with self.assertRaises(KlockConflictError) as cm:
            write(path="/src/a.ts")
        e = cm.exception
        self.assertEqual((e.reason, e.held_by, e.agent_id, e.resource_path),
                         ("DIE", "senior", "junior", "/src/a.ts"))
        self.assertTrue(1 <= e.wait_time <= 1000, e.wait_time)
        self.assertEqual(e.wait_time_ms, e.wait_time)
        self.assertIsInstance(e, RuntimeError)   # as upstream's KlockConflictError
        self.assertIsInstance(e, klock.KlockError)
        self.assertIn("senior", str(e))
        self.assertEqual(ran, [])
        self.assertEqual([l["lease_id"] for l in self.klock.list_leases()["leases"]], [held["lease_id"]])

    def test_wait_is_done_in_the_daemon_then_granted(self) -> None:
        held = self.grant("junior", "j", "/src/a.ts")
        got: Dict[str, Any] = {}

        @protected(self.klock, "senior", "s1", "FILE", lambda kw: kw["path"], max_retries=30)
        def write(path: str) -> None:
            got["holders"] = self.holders(path)

        t = threading.Thread(target=write, kwargs={"path": "/src/a.ts"})
        t.start()
        wait_until(lambda: self.klock.stats()["waiters"] == 1, what="the senior to wait in the daemon")
        self.assertTrue(self.klock.release_lease(held["lease_id"]))
        t.join(30)
        self.assertEqual(got.get("holders"), ["senior"])
        self.assertEqual(self.klock.stats()["waits"], 0,
                         "waited in the daemon: no WAIT answer, so no polling")

    def test_wait_timeout(self) -> None:
        self.grant("junior", "j", "/src/a.ts")

        @protected(self.klock, "senior", "s1", "FILE", lambda kw: kw["path"], wait_ms=200)
        def write(path: str) -> None:
            raise AssertionError("must not run")

        with self.assertRaises(KlockConflictError) as cm:
            write(path="/src/a.ts")
        self.assertEqual((cm.exception.reason, cm.exception.held_by), ("WAIT_TIMEOUT", "junior"))
        self.assertGreaterEqual(cm.exception.wait_time, 200)

    def test_several_paths_are_taken_atomically(self) -> None:
        self.grant("senior", "s1", "/src/b.ts")

        @protected(self.klock, "junior", "s2", "FILE", lambda kw: kw["paths"])
        def edit(paths: List[str]) -> List[str]:
            return sorted(l["resource"] for l in self.klock.list_leases(agent_id="junior")["leases"])

        with self.assertRaises(KlockConflictError) as cm:
            edit(paths=["/src/a.ts", "/src/b.ts"])
        self.assertEqual(cm.exception.reason, "DIE")
        self.assertEqual(self.holders("/src/a.ts"), [], "all or nothing: /src/a.ts was not taken")
        self.assertEqual(edit(paths=["/src/a.ts", "/src/c.ts"]), ["FILE:/src/a.ts", "FILE:/src/c.ts"])
        self.assertEqual(self.klock.active_lease_count(), 1)

    def test_tool_raising_releases(self) -> None:
        @protected(self.klock, "senior", "s1", "FILE", lambda kw: kw["path"])
        def boom(path: str) -> None:
            raise KeyError("tool failed")

        with self.assertRaises(KeyError):
            boom(path="/src/a.ts")
        self.assertEqual(self.klock.active_lease_count(), 0)

    def test_long_tool_is_renewed(self) -> None:
        # A ttl the renewals keep on a loaded machine (as the asyncio test).
        @protected(self.klock, "senior", "s1", "FILE", lambda kw: kw["path"], ttl_ms=1000)
        def slow(path: str) -> int:
            first = self.klock.list_leases()["leases"][0]
            wait_until(lambda: now_ms() > first["expires_at"] + 1000, what="two ttls to pass")
            now = self.klock.list_leases()["leases"]
            self.assertEqual([l["lease_id"] for l in now], [first["lease_id"]], "still held")
            return int(now[0]["expires_at"] - first["expires_at"])

        self.assertGreater(slow(path="/src/a.ts"), 0, "the lease was renewed while the tool ran")
        self.assertEqual(self.klock.active_lease_count(), 0)

    def test_lost_lease_is_reported_after_the_tool(self) -> None:
        lost: List[klock.KlockError] = []

        @protected(self.klock, "senior", "s1", "FILE", lambda kw: kw["path"], ttl_ms=300,
                   on_lost=lost.append)
        def revoked(path: str) -> str:
            lease_id = self.klock.list_leases()["leases"][0]["lease_id"]
            self.assertTrue(self.klock.revoke(lease_id))
            wait_until(lambda: lost, what="the keep-alive to notice")
            return "done"

        with self.assertRaises(klock.LeaseLostError):
            revoked(path="/src/a.ts")

    def test_context_manager(self) -> None:
        guard = protected(self.klock, "senior", "s1", "FILE", resource_path=["/a", "/b"])
        with guard as lease:
            self.assertEqual(len(lease.lease_ids), 2)
            self.assertEqual(self.klock.active_lease_count(), 2)
            with self.assertRaises(RuntimeError):
                guard.__enter__()
        self.assertEqual(self.klock.active_lease_count(), 0)
        with self.assertRaises(ValueError):
            protected(self.klock, "senior", "s1", "FILE")

    def test_bad_extractor(self) -> None:
        @protected(self.klock, "senior", "s1", "FILE", lambda kw: kw["missing"])
        def tool(path: str) -> None:
            raise AssertionError("must not run")

        with self.assertRaises(ValueError) as cm:
            tool(path="/x")
        self.assertIsInstance(cm.exception.__cause__, KeyError)


class ProtectedAsyncTest(KlockdTestCase, unittest.IsolatedAsyncioTestCase):
    """Async tools, with the asyncio client and with the sync one."""

    async def asyncSetUp(self) -> None:
        self.klock.register_agent("senior", 100)
        self.klock.register_agent("junior", 200)
        self.aklock = AsyncKlockClient(self.daemon.socket_path)
        self.addAsyncCleanup(self.aklock.close)

    def clients(self) -> List[Any]:
        return [self.aklock, self.klock]

    async def test_grant_die_several_and_raising(self) -> None:
        for client in self.clients():
            with self.subTest(client=type(client).__module__):
                seen: List[int] = []

                @protected(client, "junior", "s2", "FILE", lambda kw: kw["paths"], ttl_ms=5000)
                async def edit(paths: List[str], fail: bool = False) -> str:
                    seen.append(self.klock.active_lease_count())
                    await asyncio.sleep(0)
                    if fail:
                        raise KeyError("tool failed")
                    return "ok"

                self.assertEqual(await edit(paths=["/a", "/b"]), "ok")
                self.assertEqual(seen, [2])
                with self.assertRaises(KeyError):
                    await edit(["/a"], fail=True)
                self.assertEqual(self.klock.active_lease_count(), 0)
                held = self.grant("senior", "s1", "/b")
                with self.assertRaises(KlockConflictError) as cm:
                    await edit(paths=["/a", "/b"])
                self.assertEqual((cm.exception.reason, cm.exception.held_by), ("DIE", "senior"))
                self.assertEqual(self.klock.active_lease_count(), 1)
                self.klock.release_lease(held["lease_id"])

    async def test_wait_then_granted_without_blocking_the_loop(self) -> None:
        for client in self.clients():
            with self.subTest(client=type(client).__module__):
                held = self.grant("junior", "j", "/w")
                ticks = [0]

                @protected(client, "senior", "s1", "FILE", lambda kw: kw["path"])
                async def write(path: str) -> str:
                    return path

                async def ticker() -> None:
                    while True:
                        ticks[0] += 1
                        await asyncio.sleep(0.01)

                tick = asyncio.ensure_future(ticker())
                task = asyncio.ensure_future(write(path="/w"))
                while self.klock.stats()["waiters"] != 1:
                    await asyncio.sleep(0.01)
                before = ticks[0]
                while ticks[0] < before + 5:  # the loop runs while the senior waits
                    await asyncio.sleep(0.01)
                self.assertFalse(task.done())
                self.klock.release_lease(held["lease_id"])
                self.assertEqual(await asyncio.wait_for(task, 30), "/w")
                tick.cancel()
                self.assertEqual(self.klock.active_lease_count(), 0)

    async def test_long_tool_is_renewed(self) -> None:
        for client in self.clients():
            with self.subTest(client=type(client).__module__):
                # A ttl the renewals can keep on a loaded machine: with
                # 300 ms one CI run (load 12) saw the lease expire.
                @protected(client, "senior", "s1", "FILE", lambda kw: kw["path"], ttl_ms=1000)
                async def slow(path: str) -> int:
                    first = self.klock.list_leases()["leases"][0]
                    while now_ms() < first["expires_at"] + 1000:
                        await asyncio.sleep(0.05)
                    now = self.klock.list_leases()["leases"]
                    self.assertEqual([l["lease_id"] for l in now], [first["lease_id"]])
                    return int(now[0]["expires_at"] - first["expires_at"])

                self.assertGreater(await slow(path="/slow"), 0)
                self.assertEqual(self.klock.active_lease_count(), 0)

    async def test_async_context_manager(self) -> None:
        async with protected(self.aklock, "senior", "s1", "FILE", resource_path="/ctx") as lease:
            self.assertEqual(lease.resource, "FILE:/ctx")
            self.assertEqual(self.klock.active_lease_count(), 1)
        self.assertEqual(self.klock.active_lease_count(), 0)

    async def test_sync_function_with_the_asyncio_client_is_refused(self) -> None:
        with self.assertRaises(TypeError):
            @protected(self.aklock, "senior", "s1", "FILE", lambda kw: kw["path"])
            def tool(path: str) -> None:
                pass


if __name__ == "__main__":
    unittest.main()
