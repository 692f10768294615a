"""The client against a klockd whose disk fills up (issue 12): UNAVAILABLE is
retried with backoff within the caller's deadline, then raised as
UnavailableError; a blocking acquire rides it out until the disk heals.
Needs root to mount a tmpfs (CI runs as root); env KLOCKD_BIN."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import unittest
from typing import Any, Dict

from support import Klockd, klockd_binary, short_tempdir

import klock


class DiskFullTest(unittest.TestCase):
    def setUp(self) -> None:
        binary = klockd_binary()
        if binary is None:
            self.skipTest("KLOCKD_BIN is not set (tests/python_test.go sets it)")
        if os.geteuid() != 0:
            self.skipTest("needs root to mount a tmpfs for the state directory")
        self.dir = short_tempdir(self)
        self.disk = os.path.join(self.dir, "disk")
        os.mkdir(self.disk)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", self.disk],
                       check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", self.disk], check=False)
        self.daemon = Klockd(binary, os.path.join(self.dir, "k.sock"),
                             os.path.join(self.disk, "state"), os.path.join(self.dir, "klockd.log"))
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.klock = klock.KlockClient(self.daemon.socket_path, timeout=10)
        self.addCleanup(self.klock.close)

    def fill(self) -> str:
        path = os.path.join(self.disk, "fill")
        subprocess.run(["dd", "if=/dev/zero", "of=" + path, "bs=64k"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)  # stops at ENOSPC
        return path

    def test_unavailable_is_retried_then_raised_and_outlived(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        held = k.acquire_lease("a", "s", "FILE", "/before", "MUTATES", 600000)
        self.assertTrue(held["success"])
        fill = self.fill()

        # The journal's last page may still take a few records: acquire
        # until the disk says no (each refused change is retried for 0.5 s).
        k.timeout = 0.5
        granted = 1
        for n in range(2000):
            started = time.monotonic()
            try:
                if k.acquire_lease("a", "s", "FILE", "/during/%d" % n, "MUTATES", 600000)["success"]:
                    granted += 1
            except klock.UnavailableError as e:
                took = time.monotonic() - started
                err = e
                break
        else:
            self.fail("klockd never refused a change with its disk full")
        self.assertEqual(err.code, "UNAVAILABLE")
        self.assertIn("ENOSPC", str(err).upper())
        # Retried with backoff (10, 20, 40, 80, 160 ms, each plus up to
        # half) until the next retry could not be answered within the call's
        # timeout: a lower bound made of sleeps, which a slow machine only raises.
        self.assertGreaterEqual(took, 0.15, "refusals were retried with backoff")
        self.assertLess(took, 5, "and then given up")
        self.assertEqual(k.active_lease_count(), granted, "reads are served; nothing more was granted")

        # A blocking acquire keeps asking (backoff) while the disk is full,
        # and is granted once klockd heals.
        self.assertTrue(k.stats()["degraded"])
        got: Dict[str, Any] = {}
        errors = []

        def blocking() -> None:
            try:
                got.update(k.acquire("a", "s", "FILE", "/after", "MUTATES", 600000, timeout=60))
            except klock.KlockError as e:
                errors.append(e)

        t = threading.Thread(target=blocking)
        t.start()
        # The one-shot acquire above gave up after its 0.5 s; a blocking
        # acquire rides the fault out.
        t.join(1.5)
        self.assertTrue(t.is_alive(), "the blocking acquire gave up while the disk was full: %s"
                        % errors)
        os.unlink(fill)
        t.join(60)
        self.assertEqual(errors, [])
        self.assertTrue(got.get("success"), got)
        self.assertEqual(k.active_lease_count(), granted + 1)


if __name__ == "__main__":
    unittest.main()
