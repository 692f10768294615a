"""Upstream Klock's own callers, in the shape they call a client, against our
KlockClient and a real klockd (env KLOCKD_BIN).

Upstream's klock-langchain ``klock_protected`` and its oss_v1 demos (read
with the search tool; not installed here: no PyPI, and no langchain-core)
use a client in exactly these ways, which must keep working unchanged:

- ``acquire_lease(agent_id, session_id, resource_type, resource_path,
  predicate, ttl_ms)``, six positional arguments, returning a dict read
  with ``.get("success")``, ``.get("lease_id")``, ``.get("reason")``
  (``"WAIT"``/``"DIE"``/other) and ``.get("wait_time")`` (ms, may be None);
- ``release_lease(lease_id)`` in a ``finally``;
- ``register_agent(agent_id, priority)``;
- one client shared by agents running in a ThreadPoolExecutor, each doing a
  read-modify-write of one shared file;
- the decorator called with keywords on a tool's ``_run(self, ...)``, the
  extractor reading the tool's keyword arguments.

The polling loop below is written here from that description, not copied.
"""

from __future__ import annotations

import os
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

from support import KlockdTestCase, short_tempdir

from klock import KlockConflictError, protected


class Denied(Exception):
    def __init__(self, result: Dict[str, Any]) -> None:
        super().__init__(result.get("reason"))
        self.result = result


def take_polling(client: Any, agent: str, session: str, path: str, tries: int = 200) -> str:
    """A WAIT is slept off and asked again; anything else denied is raised."""
    for _ in range(tries):
        result = client.acquire_lease(agent, session, "FILE", path, "MUTATES", 60000)
        if result.get("success"):
            return str(result.get("lease_id"))
        wait_ms = result.get("wait_time")
        if result.get("reason") != "WAIT":
            raise Denied(result)
        time.sleep((1000 if wait_ms is None else wait_ms) / 1000.0)
    raise AssertionError("%s never got %s" % (agent, path))


class UpstreamShapeTest(KlockdTestCase):
    def test_shared_client_two_agents_one_file(self) -> None:
        # oss_v1 "with_klock": two agents add a feature each to one file;
        # with the lease held across read-modify-write, both features survive.
        k = self.klock
        k.register_agent("refactor-bot", 100)
        k.register_agent("test-bot", 200)
        path = os.path.join(short_tempdir(self), "auth.ts")
        with open(path, "w") as f:
            f.write("// auth\n")
        inside = threading.Barrier(2, timeout=1.0)
        denials: List[Dict[str, Any]] = []

        def agent(name: str, feature: str) -> None:
            for _ in range(100):
                try:
                    lease_id = take_polling(k, name, name + "-session", path)
                except Denied as d:
                    denials.append(d.result)
                    time.sleep(max(int(d.result.get("wait_time") or 0), 1) / 1000.0)
                    continue  # the agent retries the tool later, as an LLM would
                try:
                    with open(path) as f:
                        code = f.read()
                    try:
                        inside.wait()  # a second holder now would lose a feature
                    except threading.BrokenBarrierError:
                        pass
                    with open(path, "w") as f:
                        f.write(code + "// " + feature + "\n")
                    return
                finally:
                    k.release_lease(lease_id)
            raise AssertionError(name + " never finished")

        with ThreadPoolExecutor(max_workers=2) as pool:
            done = [pool.submit(agent, "refactor-bot", "FEATURE: rate limit"),
                    pool.submit(agent, "test-bot", "FEATURE: audit log")]
            for fut in done:
                fut.result(60)
        with open(path) as f:
            text = f.read()
        self.assertIn("FEATURE: rate limit", text)
        self.assertIn("FEATURE: audit log", text)
        self.assertTrue(inside.broken or inside.n_waiting == 0)
        for d in denials:  # what upstream's helper reads from a denial
            self.assertIn(d.get("reason"), ("DIE", "WAIT"), d)
            self.assertIsInstance(d.get("wait_time"), int, d)
        self.assertEqual(k.active_lease_count(), 0)

    def test_decorator_with_upstream_keywords_on_a_tool_method(self) -> None:
        k = self.klock
        k.register_agent("refactor-agent-1", 100)
        k.register_agent("other-agent", 50)
        root = short_tempdir(self)
        seen: List[List[str]] = []

        class WriteFileTool:  # stands in for langchain's BaseTool
            name = "write_file"

            @protected(
                klock_client=k,
                agent_id="refactor-agent-1",
                session_id="session-123",
                resource_type="FILE",
                resource_path_extractor=lambda kwargs: kwargs.get("filepath"),
                predicate="MUTATES",
                ttl_ms=60000,
                max_retries=1,
            )
            def _run(self, filepath: str, content: str) -> str:
                seen.append([l["agent_id"] for l in k.list_leases()["leases"]])
                with open(filepath, "w") as f:
                    f.write(content)
                return "wrote " + filepath

        tool = WriteFileTool()
        target = os.path.join(root, "a.txt")
        self.assertEqual(tool._run(filepath=target, content="x"), "wrote " + target)
        self.assertEqual(seen, [["refactor-agent-1"]])
        self.assertEqual(k.active_lease_count(), 0)
        held = k.acquire_lease("other-agent", "o", "FILE", target, "MUTATES", 60000)
        with self.assertRaises(KlockConflictError) as cm:
            tool._run(filepath=target, content="y")
        self.assertIsInstance(cm.exception, RuntimeError)  # upstream's error is one
        self.assertEqual(cm.exception.reason, "DIE")
        self.assertTrue(k.release_lease(held["lease_id"]))


if __name__ == "__main__":
    unittest.main()
