"""Leases bound to their process (issue 15) against a real klockd (env KLOCKD_BIN)."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from typing import List

from support import KlockdTestCase, now_ms, wait_until

import klock

# Takes a lease the way a script would, prints the grant's id, and exits
# without releasing it. argv: socket, bind ("process", "none" or "default"),
# client ("sync" or "asyncio").
SCRIPT = r"""
import asyncio, json, sys
import klock, klock.asyncio

socket, bind, client = sys.argv[1:4]
kw = {} if bind == "default" else {"bind": None if bind == "none" else bind}
if client == "sync":
    k = klock.KlockClient(socket)
    g = k.acquire_lease("script", "s", "FILE", "/script/" + bind, "MUTATES", 60000, **kw)
else:
    async def main():
        k = klock.asyncio.KlockClient(socket)
        return await k.acquire_lease("script", "s", "FILE", "/script/" + bind, "MUTATES", 60000, **kw)
    g = asyncio.run(main())
print(json.dumps(g))
"""


class BindTest(KlockdTestCase):
    def run_script(self, bind: str, client: str) -> dict:
        import json

        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(klock.__file__)))
        out = subprocess.run([sys.executable, "-c", SCRIPT, self.daemon.socket_path, bind, client],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        grant = json.loads(out.stdout)
        self.assertTrue(grant["success"], grant)
        return dict(grant)

    def leases(self) -> List[str]:
        return [l["lease_id"] for l in self.klock.list_leases(agent_id="script")["leases"]]

    def test_a_script_that_exits_without_releasing_frees_its_lease(self) -> None:
        self.klock.register_agent("script", 1)
        for client in ("sync", "asyncio"):
            for bind in ("default", "process"):
                with self.subTest(client=client, bind=bind):
                    g = self.run_script(bind, client)
                    self.assertIsInstance(g.get("bound_pid"), int, g)
                    # Its ttl is a minute: only the exit can end it this soon.
                    wait_until(lambda: g["lease_id"] not in self.leases(), timeout=20,
                               what="the lease to end with its process")
                    self.assertLess(now_ms(), g["expires_at"])

    def test_opting_out_leaves_the_lease_to_its_ttl(self) -> None:
        self.klock.register_agent("script", 1)
        for client in ("sync", "asyncio"):
            with self.subTest(client=client):
                g = self.run_script("none", client)
                self.assertNotIn("bound_pid", g)
                self.assertIn(g["lease_id"], self.leases(), "an unbound lease outlives its process")
                self.assertTrue(self.klock.release_lease(g["lease_id"]))

    def test_bound_lease_without_ttl_needs_no_keepalive(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        g = k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 0)
        self.assertEqual((g["expires_at"], g["bound_pid"]), (0, os.getpid()))
        with k.lease("a", "s", "FILE", "/y", "MUTATES", ttl=0) as lease:
            self.assertFalse(lease.renewable)
            self.assertEqual(k._keepalive.threads(), 0, "nothing to renew")
        self.assertEqual(k.active_lease_count(), 1)
        with self.assertRaises(klock.InvalidArgumentError):
            k.acquire_lease("a", "s", "FILE", "/z", "MUTATES", 0, bind=None)


if __name__ == "__main__":
    unittest.main()
