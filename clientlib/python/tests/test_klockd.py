"""End-to-end tests of the klock client against a real klockd (env KLOCKD_BIN).

tests/python_test.go builds klockd and runs this suite; by hand:

    go build -o /tmp/klockd ./cmd/klockd
    KLOCKD_BIN=/tmp/klockd PYTHONPATH=clientlib/python \\
        /usr/bin/python3 -m unittest discover -s clientlib/python/tests -v
"""

from __future__ import annotations

import os
import unittest
import uuid

from support import KlockdTestCase, linked_worktree, now_ms, wait_until

import klock


class SeedExamplesTest(KlockdTestCase):
    def test_complete_example(self) -> None:
        k = self.klock
        self.assertIsNone(k.register_agent("agent-senior", 100))
        self.assertIsNone(k.register_agent("agent-junior", 200))

        senior = k.acquire_lease("agent-senior", "s1", "FILE", "/src/auth.ts", "MUTATES", 60000)
        self.assertIs(senior["success"], True)
        self.assertEqual(senior["agent_id"], "agent-senior")
        self.assertEqual(senior["resource"], "FILE:/src/auth.ts")
        uuid.UUID(senior["lease_id"])
        self.assertIsInstance(senior["fence"], int)
        self.assertGreater(senior["expires_at"], now_ms() + 50000)

        junior = k.acquire_lease("agent-junior", "s2", "FILE", "/src/auth.ts", "MUTATES", 60000)
        self.assertIs(junior["success"], False)
        self.assertEqual(junior["reason"], "DIE")
        self.assertTrue(1 <= junior["wait_time"] <= 1000, junior)
        self.assertEqual(junior["held_by"], "agent-senior")
        self.assertNotIn("lease_id", junior)

        other = k.acquire_lease("agent-junior", "s2", "FILE", "/src/utils.ts", "MUTATES", 60000)
        self.assertIs(other["success"], True)
        self.assertGreater(other["fence"], senior["fence"], "fences grow with every grant")

        self.assertIs(k.release_lease(senior["lease_id"]), True)
        self.assertIs(k.release_lease(other["lease_id"]), True)
        self.assertEqual(k.active_lease_count(), 0)

    def test_wait_die_in_action(self) -> None:
        # The seed's example with ttl 300 ms instead of 5000, and a wait on the
        # condition instead of time.sleep(6).
        k = self.klock
        k.register_agent("senior", 100)
        k.register_agent("junior", 200)
        held = k.acquire_lease("senior", "s1", "FILE", "/db.ts", "MUTATES", 300)
        self.assertTrue(held["success"])

        result = k.acquire_lease("junior", "s2", "FILE", "/db.ts", "MUTATES", 300)
        self.assertIs(result["success"], False)
        self.assertEqual(result["reason"], "DIE")

        wait_until(lambda: now_ms() >= held["expires_at"], what="the senior's ttl")
        self.assertGreaterEqual(k.evict_expired(), 0)
        self.assertEqual(k.active_lease_count(), 0, "expired leases are never counted")

        retry = k.acquire_lease("junior", "s2", "FILE", "/db.ts", "MUTATES", 300)
        self.assertIs(retry["success"], True)


class MethodsTest(KlockdTestCase):
    def test_hello(self) -> None:
        h = self.klock.hello()
        self.assertEqual(h["protocol"], 1)
        self.assertEqual(h["pid"], self.daemon.proc.pid)
        self.assertGreater(h["max_frame"], 0)
        self.assertIsInstance(h["server"], str)
        self.assertLessEqual(h["started_at"], now_ms())

    def test_register_agent(self) -> None:
        k = self.klock
        k.register_agent("a", 10)
        k.register_agent("a", 10)  # same priority: no-op
        k.register_agent("a")      # no priority: no-op
        k.register_agent("b")      # the daemon assigns registration time
        agents = {a["agent_id"]: a for a in k.list_agents()["agents"]}
        self.assertEqual(agents["a"]["priority"], 10)
        self.assertGreater(agents["b"]["priority"], 10)
        k.register_agent("a", 5)   # holds nothing: applied
        held = self.grant("a", "s", "/x")
        with self.assertRaises(klock.PriorityConflictError) as cm:
            k.register_agent("a", 6)
        self.assertEqual(cm.exception.code, "PRIORITY_CONFLICT")
        k.release_lease(held["lease_id"])
        k.register_agent("a", 6)
        agents = {a["agent_id"]: a for a in k.list_agents()["agents"]}
        self.assertEqual(agents["a"]["priority"], 6)

    def test_unregister_agent(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        held = self.grant("a", "s", "/x")
        with self.assertRaises(klock.PriorityConflictError):
            k.unregister_agent("a")
        k.release_lease(held["lease_id"])
        self.assertIs(k.unregister_agent("a"), True)
        self.assertIs(k.unregister_agent("a"), False)
        with self.assertRaises(klock.UnknownAgentError):
            k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)

    def test_release_lease(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        held = self.grant("a", "s", "/x")
        self.assertIs(k.release_lease(held["lease_id"]), True)
        self.assertIs(k.release_lease(held["lease_id"]), False, "releasing twice is harmless")
        self.assertIs(k.release_lease(str(uuid.uuid4())), False)

    def test_heartbeat_lease(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        held = self.grant("a", "s", "/x", ttl=1000)
        r = k.heartbeat_lease(held["lease_id"], 60000)
        self.assertEqual(r["lease_id"], held["lease_id"])
        self.assertGreater(r["expires_at"], now_ms() + 50000)
        r2 = k.heartbeat_lease(held["lease_id"])  # keeps the new ttl
        self.assertGreater(r2["expires_at"], now_ms() + 50000)
        k.release_lease(held["lease_id"])
        with self.assertRaises(klock.NotFoundError) as cm:
            k.heartbeat_lease(held["lease_id"])
        self.assertEqual(cm.exception.code, "NOT_FOUND")

    def test_acquire_many(self) -> None:
        k = self.klock
        k.register_agent("senior", 1)
        k.register_agent("junior", 2)
        intents = [("FILE", "/a", "MUTATES"), ("SYMBOL", "auth.login", "CONSUMES")]
        r = k.acquire_many("senior", "s", intents, 60000)
        self.assertIs(r["success"], True)
        self.assertEqual([g["resource"] for g in r["leases"]], ["FILE:/a", "SYMBOL:auth.login"])
        self.assertEqual(k.active_lease_count(), 2)
        # all or nothing: /b is free but /a is not
        d = k.acquire_many("junior", "t", [("FILE", "/b", "MUTATES"), ("FILE", "/a", "CONSUMES")],
                           60000)
        self.assertIs(d["success"], False)
        self.assertEqual(d["reason"], "DIE")
        self.assertEqual(d["held_by"], "senior")
        self.assertEqual(k.active_lease_count(), 2)
        # idem returns the same set
        r1 = k.acquire_many("junior", "t", [("FILE", "/c", "MUTATES")], 60000, idem="k1")
        r2 = k.acquire_many("junior", "t", [("FILE", "/c", "MUTATES")], 60000, idem="k1")
        self.assertEqual(r1["leases"][0]["lease_id"], r2["leases"][0]["lease_id"])

    def test_acquire_idem(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        r1 = k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 60000, idem="same")
        r2 = k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 60000, idem="same")
        self.assertEqual(r1["lease_id"], r2["lease_id"])
        self.assertEqual(r1["fence"], r2["fence"])
        self.assertEqual(k.active_lease_count(), 1)
        with self.assertRaises(klock.InvalidArgumentError):
            k.acquire_lease("a", "s", "FILE", "/other", "MUTATES", 60000, idem="same")

    def test_end_session(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        self.grant("a", "s", "/x")
        self.grant("a", "s", "/y")
        self.grant("a", "other", "/z", predicate="CONSUMES")
        self.assertEqual(k.end_session("a", "s"), 2)
        self.assertEqual(k.active_lease_count(), 1)
        r = k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)
        self.assertIs(r["success"], False)
        self.assertEqual(r["reason"], "SESSION_EXPIRED")
        with self.assertRaises(klock.LeaseDeniedError) as cm:
            k.acquire("a", "s", "FILE", "/x", "MUTATES", 1000, timeout=5)
        self.assertEqual(cm.exception.reason, "SESSION_EXPIRED")

    def test_list_leases(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        k.register_agent("b", 2)
        for p in ("/src/b.ts", "/src/a.ts", "/lib/c.ts"):
            self.grant("a", "s", p)
        self.grant("b", "s", "/src/z.ts")
        all_ = k.list_leases()
        self.assertIs(all_["truncated"], False)
        self.assertEqual([l["resource"] for l in all_["leases"]],
                         ["FILE:/lib/c.ts", "FILE:/src/a.ts", "FILE:/src/b.ts", "FILE:/src/z.ts"])
        first = all_["leases"][0]
        for key in ("lease_id", "agent_id", "session_id", "resource", "predicate",
                    "acquired_at", "expires_at", "fence", "owner_uid", "owner_pid"):
            self.assertIn(key, first)
        self.assertEqual(first["owner_uid"], os.geteuid())
        self.assertEqual(first["owner_pid"], os.getpid())
        self.assertEqual(len(k.list_leases(agent_id="b")["leases"]), 1)
        self.assertEqual(len(k.list_leases(resource_prefix="FILE:/src/")["leases"]), 3)
        page = k.list_leases(limit=2)
        self.assertEqual(len(page["leases"]), 2)
        self.assertIs(page["truncated"], True)

    def test_list_agents(self) -> None:
        k = self.klock
        k.register_agent("young", 300)
        k.register_agent("old", 100)
        self.grant("old", "s", "/x")
        r = k.list_agents()
        self.assertEqual([a["agent_id"] for a in r["agents"]], ["old", "young"])
        self.assertEqual(r["agents"][0]["leases"], 1)
        self.assertEqual(r["agents"][0]["waiting"], 0)
        self.assertIs(k.list_agents(limit=1)["truncated"], True)

    def test_stats(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        k.register_agent("b", 2)
        held = self.grant("a", "s", "/x")
        k.acquire_lease("b", "s", "FILE", "/x", "MUTATES", 1000)
        s = k.stats()
        for key in ("uptime_ms", "connections", "agents", "leases", "waiters", "ops",
                    "grants", "waits", "dies", "expirations", "fence"):
            self.assertIn(key, s)
        self.assertEqual(s["agents"], 2)
        self.assertEqual(s["leases"], 1)
        self.assertGreaterEqual(s["grants"], 1)
        self.assertGreaterEqual(s["dies"], 1)
        self.assertGreaterEqual(s["connections"], 1)
        self.assertEqual(s["fence"], held["fence"])

    def test_revoke_freeze_thaw(self) -> None:
        # The test runs klockd as its own uid, which makes it an admin.
        k = self.klock
        k.register_agent("a", 1)
        held = self.grant("a", "s", "/x")
        self.assertIs(k.revoke(held["lease_id"]), True)
        self.assertIs(k.revoke(held["lease_id"]), False)
        self.assertEqual(k.active_lease_count(), 0)

        self.assertIs(k.freeze("FILE", "/x"), True)
        r = k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)
        self.assertEqual((r["success"], r["reason"]), (False, "RESOURCE_LOCKED"))
        self.assertIs(k.thaw("FILE", "/x"), False)
        self.grant("a", "s", "/x")

    def test_evict_expired(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        held = self.grant("a", "s", "/x", ttl=50)
        wait_until(lambda: now_ms() > held["expires_at"], what="the lease's ttl")
        self.assertIn(k.evict_expired(), (0, 1))
        self.assertEqual(k.evict_expired(), 0)
        self.assertEqual(k.active_lease_count(), 0)


class ClientPathTest(KlockdTestCase):
    def test_holder_path_in_a_linked_worktree_is_shown(self) -> None:
        # protocol/README.md "FILE paths": klockd keeps the client_path the
        # client sent and shows it in list_leases and in the denials that
        # lease decides (held_path).
        main, linked = linked_worktree(self)
        k = self.klock
        k.register_agent("senior", 1)
        k.register_agent("junior", 2)
        held = k.acquire_lease("senior", "s", "FILE", linked + "/src/a.py", "MUTATES", 60000)
        self.assertEqual(held["resource"], "FILE:" + main + "/src/a.py")
        [lease] = k.list_leases()["leases"]
        self.assertEqual(lease.get("client_path"), linked + "/src/a.py")
        denied = k.acquire_lease("junior", "j", "FILE", main + "/src/a.py", "MUTATES", 60000)
        self.assertEqual((denied["reason"], denied.get("held_path")), ("DIE", linked + "/src/a.py"))


class BadArgumentsTest(KlockdTestCase):
    def test_invalid_arguments(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        cases = [
            ("empty agent", lambda: k.acquire_lease("", "s", "FILE", "/x", "MUTATES", 1000)),
            ("empty session", lambda: k.acquire_lease("a", "", "FILE", "/x", "MUTATES", 1000)),
            ("bad predicate", lambda: k.acquire_lease("a", "s", "FILE", "/x", "SMASHES", 1000)),
            ("bad type", lambda: k.acquire_lease("a", "s", "DISK", "/x", "MUTATES", 1000)),
            ("empty path", lambda: k.acquire_lease("a", "s", "FILE", "", "MUTATES", 1000)),
            ("zero ttl", lambda: k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 0, bind=None)),
            ("negative ttl", lambda: k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", -5)),
            ("string ttl", lambda: k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", "5")),
            ("huge ttl", lambda: k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 10**12)),
            ("control char", lambda: k.acquire_lease("a\n", "s", "FILE", "/x", "MUTATES", 1000)),
            ("long agent", lambda: k.register_agent("a" * 257)),
            ("negative priority", lambda: k.register_agent("p", -1)),
            ("long idem", lambda: k.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000,
                                                  idem="i" * 65)),
            ("limit too big", lambda: k.list_leases(limit=10001)),
            ("no intents", lambda: k.acquire_many("a", "s", [], 1000)),
            ("65 intents", lambda: k.acquire_many(
                "a", "s", [("FILE", "/f%d" % i, "CONSUMES") for i in range(65)], 1000)),
            ("invalid before unknown agent",
             lambda: k.acquire_lease("nobody", "s", "FILE", "/x", "SMASHES", 1000)),
        ]
        for name, call in cases:
            with self.subTest(name):
                with self.assertRaises(klock.InvalidArgumentError) as cm:
                    call()
                self.assertEqual(cm.exception.code, "INVALID_ARGUMENT")
                self.assertTrue(cm.exception.message, "the message says what is wrong")
        self.assertEqual(k.active_lease_count(), 0)

    def test_unknown_agent_and_lease(self) -> None:
        k = self.klock
        with self.assertRaises(klock.UnknownAgentError):
            k.acquire_lease("ghost", "s", "FILE", "/x", "MUTATES", 1000)
        with self.assertRaises(klock.NotFoundError):
            k.heartbeat_lease(str(uuid.uuid4()))
        with self.assertRaises(klock.UnknownOpError):
            k._request("no_such_op")

    def test_case_insensitive_vocabulary(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        r = self.grant("a", "s", "/src/./x/../auth.ts", predicate="mutates", typ="file")
        self.assertEqual(r["resource"], "FILE:/src/auth.ts")
        self.assertEqual(r["predicate"], "MUTATES")


class LimitsTest(KlockdTestCase):
    daemon_args = ["--max-leases", "1"]

    def test_resource_exhausted(self) -> None:
        k = self.klock
        k.register_agent("a", 1)
        self.grant("a", "s", "/x")
        with self.assertRaises(klock.ResourceExhaustedError) as cm:
            k.acquire_lease("a", "s", "FILE", "/y", "MUTATES", 1000)
        self.assertEqual(cm.exception.code, "RESOURCE_EXHAUSTED")


class PermissionsTest(KlockdTestCase):
    daemon_args = ["--socket-mode", "0666"]

    def setUp(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("needs root to act as a second uid (tests/permissions_test.go covers non-root runs)")
        super().setUp()
        os.chmod(self.dir, 0o755)  # let the other uid reach the socket

    def as_nobody(self, fn) -> str:
        """Runs fn() in a child process as uid/gid 65534; returns what it returned (or the error)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            out = "crash"
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                out = str(fn())
            except klock.KlockError as e:
                out = "%s %s" % (type(e).__name__, e.code)
            except BaseException as e:
                out = "unexpected %r" % (e,)
            finally:
                os.write(w, out.encode())
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
        os.waitpid(pid, 0)
        return out

    def test_other_uid_is_refused(self) -> None:
        k = self.klock
        k.register_agent("root-agent", 1)
        held = self.grant("root-agent", "s", "/x")
        path = self.daemon.socket_path

        def client() -> klock.KlockClient:
            return klock.KlockClient(path, timeout=10)

        cases = {
            "revoke (admin)": lambda: client().revoke(held["lease_id"]),
            "freeze (admin)": lambda: client().freeze("FILE", "/y"),
            "release another uid's lease": lambda: client().release_lease(held["lease_id"]),
            "heartbeat another uid's lease": lambda: client().heartbeat_lease(held["lease_id"]),
            "acquire for another uid's agent": lambda: client().acquire_lease(
                "root-agent", "s", "FILE", "/z", "MUTATES", 1000),
            "end another uid's session": lambda: client().end_session("root-agent", "s"),
        }
        for name, fn in cases.items():
            with self.subTest(name):
                self.assertEqual(self.as_nobody(fn), "PermissionDeniedError PERMISSION_DENIED")
        # open ops work for everyone
        self.assertEqual(self.as_nobody(lambda: client().active_lease_count()), "1")
        self.assertEqual(k.active_lease_count(), 1)


if __name__ == "__main__":
    unittest.main()
