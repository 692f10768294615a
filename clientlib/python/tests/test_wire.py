"""Wire-level tests of the client against a scripted fake daemon (no klockd needed)."""

from __future__ import annotations

import os
import threading
import time
import unittest
from typing import Any, Dict, List

import msgpack
from support import FakeConn, FakeDaemon, linked_worktree, short_tempdir, wait_until

import klock
from klock.connection import DEFAULT_MAX_FRAME


def grant(req: Dict[str, Any]) -> Dict[str, Any]:
    a = req["args"]
    return {"success": True, "lease_id": "L-" + a.get("idem", ""), "agent_id": a["agent_id"],
            "session_id": a["session_id"], "resource": a["resource_type"] + ":" + a["resource_path"],
            "predicate": a["predicate"], "acquired_at": 1, "expires_at": 2, "fence": 7}


def echo(conn: FakeConn, req: Dict[str, Any]) -> None:
    if req["op"] == "acquire":
        conn.ok(req, grant(req))
    else:
        conn.ok(req, {"op": req["op"], "args": req.get("args")})


class WireTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        self.path = os.path.join(self.dir, "d.sock")

    def serve(self, handler) -> FakeDaemon:
        d = FakeDaemon(self.path, handler)
        self.addCleanup(d.stop)
        return d

    def client(self, timeout: float = 10.0) -> klock.KlockClient:
        c = klock.KlockClient(self.path, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def test_request_encoding(self) -> None:
        d = self.serve(echo)
        c = self.client()
        self.assertEqual(c.active_lease_count(), 0)  # result lacks "count": 0
        c.register_agent("a", 5)
        c.register_agent("b")
        reqs = d.requests
        self.assertEqual(reqs[0]["op"], "active_lease_count")
        self.assertNotIn("args", reqs[0], "an op without arguments sends no args map")
        self.assertEqual(reqs[1], {"id": reqs[1]["id"], "op": "register_agent",
                                   "args": {"agent_id": "a", "priority": 5}})
        self.assertEqual(reqs[2]["args"], {"agent_id": "b"}, "priority=None is omitted")
        ids = [r["id"] for r in reqs]
        self.assertTrue(all(isinstance(i, int) and i > 0 for i in ids), ids)
        self.assertEqual(len(set(ids)), len(ids), "ids are unique")
        # the body is exactly one msgpack map
        self.assertIsInstance(msgpack.unpackb(d.raw_bodies[0]), dict)

    def test_acquire_carries_fresh_idem(self) -> None:
        d = self.serve(echo)
        c = self.client()
        r1 = c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)
        c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)
        self.assertTrue(r1["success"])
        k1, k2 = d.requests[0]["args"]["idem"], d.requests[1]["args"]["idem"]
        self.assertNotEqual(k1, k2)
        self.assertLessEqual(len(k1.encode()), 64)
        self.assertNotIn("wait_timeout", d.requests[0]["args"])
        c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000, wait_timeout=250, idem="k")
        self.assertEqual(d.requests[2]["args"]["wait_timeout"], 250)
        self.assertEqual(d.requests[2]["args"]["idem"], "k")

    def test_leases_are_bound_to_the_process_by_default(self) -> None:
        d = self.serve(lambda conn, req: conn.ok(req, grant(req) if req["op"] == "acquire"
                                                 else {"success": True, "leases": []}))
        c = self.client()
        c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)
        c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000, bind=None)
        c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000, bind="none")
        c.acquire_many("a", "s", [("FILE", "/x", "MUTATES")], 1000)
        c.acquire_many("a", "s", [("FILE", "/x", "MUTATES")], 1000, bind=None)
        c.acquire("a", "s", "FILE", "/x", "MUTATES", 1000, timeout=5)
        c.lease("a", "s", "FILE", "/x", "MUTATES", ttl=60000, bind=None).release()
        binds = [r["args"].get("bind") for r in d.requests if r["op"] != "release"]
        self.assertEqual(binds, ["process", None, "none", "process", None, "process", None])

    def test_hot_requests_decode_as_the_plain_encoding(self) -> None:
        # The precomputed encoder of acquire, release and heartbeat must say
        # exactly what msgpack.packb of the same map says, for every kind of
        # value a caller may pass (the daemon judges the odd ones).
        from klock import wire

        long = "/p/" + "é" * 200
        odd = [1.0, True, -1, 2**64 - 1, None, ["x"], b"bytes", "ä" * 100]
        cases = [("a", "s", "FILE", "/x", "MUTATES", 60000),
                 ("agent-" + "x" * 40, "s" * 250, "file", long, "mutates", 2**40)]
        cases += [("a", "s", "FILE", "/x", "MUTATES", v) for v in odd]
        cases += [("a", v, "FILE", "/x", "MUTATES", 5) for v in odd]
        for args in cases:
            for wait, bind in ((None, None), (250, None), (None, "process"), (0, "none")):
                with self.subTest(args=repr(args)[:60], wait=wait, bind=bind):
                    want: Dict[str, Any] = dict(zip(("agent_id", "session_id", "resource_type",
                                                     "resource_path", "predicate", "ttl"), args))
                    want["idem"] = "k1"
                    if wait is not None:
                        want["wait_timeout"] = wait
                    if bind is not None:
                        want["bind"] = bind
                    tail = wire.acquire_tail(*args, "k1", wait, bind)  # type: ignore[arg-type]
                    got = msgpack.unpackb(wire.frame(tail, 77)[4:], raw=False)
                    self.assertEqual(got, {"id": 77, "op": "acquire", "args": want})
                    self.assertEqual(type(got["args"]["ttl"]), type(args[5]))
        for big in ("ä" * 40000, "x" * 70000):  # str16 and str32
            self.assertEqual(msgpack.unpackb(wire.pack_str(big), raw=False), big)
        for lease_id in ("L", "x" * 40, "y" * 256):
            got = msgpack.unpackb(wire.frame(wire.release_tail(lease_id), 2**33)[4:], raw=False)
            self.assertEqual(got, {"id": 2**33, "op": "release", "args": {"lease_id": lease_id}})
            for ttl in (None, 5000):
                got = msgpack.unpackb(wire.frame(wire.heartbeat_tail(lease_id, ttl), 9)[4:])
                self.assertEqual(got["args"], {"lease_id": lease_id} if ttl is None
                                 else {"lease_id": lease_id, "ttl": ttl})
        frame = wire.frame(wire.request_tail("stats"), 1)
        self.assertEqual(int.from_bytes(frame[:4], "big"), len(frame) - 4)
        with self.assertRaises(klock.InvalidArgumentError):
            wire.acquire_tail("a", "\ud800", "FILE", "/x", "MUTATES", 1, "k")

    def test_argument_limits_are_checked_with_the_daemons_messages(self) -> None:
        # Sent, a 1 MB path would only meet the frame limit; the client says
        # what the daemon would (daemon/engine/validate.go checkText).
        d = self.serve(echo)
        c = self.client()
        cases = [
            (lambda: c.acquire_lease("a", "s", "FILE", "/" + "p" * (1 << 20), "MUTATES", 1000),
             "klock: resource_path is 1048577 bytes; at most 4096 are allowed"),
            (lambda: c.acquire_lease("a" * 257, "s", "FILE", "/x", "MUTATES", 1000),
             "klock: agent_id is 257 bytes; at most 256 are allowed"),
            (lambda: c.acquire_lease("a", "", "FILE", "/x", "MUTATES", 1000),
             "klock: session_id is required (1..256 bytes)"),
            (lambda: c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000, idem="é" * 33),
             "klock: idem is 66 bytes; at most 64 are allowed"),
            (lambda: c.release_lease("L" * 300), "klock: lease_id is 300 bytes; at most 256 are allowed"),
            (lambda: c.heartbeat_lease(""), "klock: lease_id is required (1..256 bytes)"),
            (lambda: c.acquire_many("a", "s", [("FILE", "/x", "MUTATES"),
                                               ("SYMBOL", "y" * 5000, "MUTATES")], 1000),
             "klock: intents[1].resource_path is 5000 bytes; at most 4096 are allowed"),
        ]
        for call, message in cases:
            with self.subTest(message):
                with self.assertRaises(klock.InvalidArgumentError) as cm:
                    call()
                self.assertEqual(cm.exception.message, message)
                self.assertEqual(cm.exception.code, "INVALID_ARGUMENT")
        self.assertEqual(d.requests, [], "nothing was sent")

    def test_unavailable_is_retried_within_the_timeout(self) -> None:
        state = {"n": 0}

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            if req["op"] == "acquire":
                state["n"] += 1
                if state["n"] <= 3 or req["args"]["agent_id"] == "never":
                    conn.error(req, "UNAVAILABLE", "klock: the state dir is full (ENOSPC)")
                    return
            echo(conn, req)

        d = self.serve(handler)
        c = self.client(timeout=5)
        g = c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)
        self.assertTrue(g["success"])
        acquires = [r for r in d.requests if r["op"] == "acquire"]
        self.assertEqual(len(acquires), 4, "three refusals, then the grant")
        self.assertEqual(len({r["args"]["idem"] for r in acquires}), 1, "retries keep the idem key")
        c.timeout = 0.3
        started = time.monotonic()
        with self.assertRaises(klock.UnavailableError) as cm:
            c.acquire_lease("never", "s", "FILE", "/x", "MUTATES", 1000)
        self.assertEqual(cm.exception.code, "UNAVAILABLE")
        self.assertIn("ENOSPC", str(cm.exception))
        self.assertLess(time.monotonic() - started, 5, "gave up within about the timeout")

    def test_acquire_many_intents(self) -> None:
        d = self.serve(lambda conn, req: conn.ok(req, {"success": True, "leases": []}))
        c = self.client()
        c.acquire_many("a", "s", [("FILE", "/a", "MUTATES"),
                                  {"resource_type": "SYMBOL", "resource_path": "f",
                                   "predicate": "CONSUMES"}], 500)
        args = d.requests[0]["args"]
        self.assertEqual(args["intents"], [
            {"resource_type": "FILE", "resource_path": "/a", "predicate": "MUTATES"},
            {"resource_type": "SYMBOL", "resource_path": "f", "predicate": "CONSUMES"}])
        self.assertEqual(args["ttl"], 500)
        self.assertIn("idem", args)

    def test_out_of_order_responses_reach_their_callers(self) -> None:
        held = []
        lock = threading.Lock()

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            with lock:
                held.append((conn, req))
                if len(held) < 3:
                    return
                batch = list(reversed(held))
            for cn, r in batch:  # answer the last first
                cn.ok(r, {"count": r["args"]["limit"]})

        self.serve(handler)
        c = self.client()
        got: Dict[int, int] = {}

        def worker(n: int) -> None:
            got[n] = c._request("active_lease_count", {"limit": n})["count"]

        threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(got, {1: 1, 2: 2, 3: 3})

    def test_many_threads_share_one_connection(self) -> None:
        d = self.serve(echo)
        c = self.client()
        errors = []

        def worker(n: int) -> None:
            try:
                for i in range(50):
                    r = c._request("stats", {"n": n, "i": i})
                    assert r["args"] == {"n": n, "i": i}, r
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(d.connections, 1)
        self.assertEqual(len(d.requests), 400)

    def test_error_codes_map_to_classes(self) -> None:
        cases = {
            "INVALID_ARGUMENT": klock.InvalidArgumentError,
            "UNKNOWN_AGENT": klock.UnknownAgentError,
            "PRIORITY_CONFLICT": klock.PriorityConflictError,
            "NOT_FOUND": klock.NotFoundError,
            "PERMISSION_DENIED": klock.PermissionDeniedError,
            "RESOURCE_EXHAUSTED": klock.ResourceExhaustedError,
            "UNKNOWN_OP": klock.UnknownOpError,
            "BAD_REQUEST": klock.BadRequestError,
            "INTERNAL": klock.InternalError,
            "UNAVAILABLE": klock.UnavailableError,
            "BIND_UNAVAILABLE": klock.BindUnavailableError,
        }
        self.serve(lambda conn, req: conn.error(req, req["args"]["lease_id"], "klock: it is wrong"))
        c = self.client()
        for code, cls in cases.items():
            with self.subTest(code=code):
                with self.assertRaises(cls) as cm:
                    c.release_lease(code)
                self.assertEqual(cm.exception.code, code)
                self.assertIsInstance(cm.exception, klock.KlockError)
                self.assertIn("it is wrong", str(cm.exception))
        with self.assertRaises(klock.KlockError) as cm:
            c.release_lease("SOMETHING_NEW")
        self.assertEqual(type(cm.exception), klock.KlockError)
        self.assertEqual(cm.exception.code, "SOMETHING_NEW")

    def test_package_exports_every_error(self) -> None:
        # klock/__init__.py repeats errors.__all__ by hand (mypy cannot see a
        # computed __all__ through "from klock import *"); this keeps the two
        # lists from drifting apart.
        # error_from_wire is the connection's helper, not part of the API.
        import klock.errors

        classes = {n for n in klock.errors.__all__ if isinstance(getattr(klock.errors, n), type)}
        self.assertEqual(classes - set(klock.__all__), set(), "klock.__all__ lacks error classes")
        for name in classes:
            self.assertIs(getattr(klock, name), getattr(klock.errors, name))

    def test_version_is_written_once(self) -> None:
        import re

        from klock import wire

        self.assertRegex(klock.__version__, r"^\d+\.\d+\.\d+$")
        self.assertEqual(wire.CLIENT_NAME, "klock-python/" + klock.__version__)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "pyproject.toml")) as f:
            pyproject = f.read()
        self.assertIsNone(re.search(r'(?m)^version\s*=\s*"', pyproject), "pyproject repeats the version")
        self.assertIn('version = {attr = "klock._version.__version__"}', pyproject)
        self.assertIn('requires-python = ">=3.9"', pyproject)

    def test_daemon_not_running(self) -> None:
        with self.assertRaises(klock.DaemonNotRunningError) as cm:
            klock.KlockClient(self.path)
        e = cm.exception
        self.assertIsNone(e.code)
        self.assertIsInstance(e, ConnectionError)
        self.assertEqual(e.socket_path, self.path)
        self.assertIn(self.path, str(e))
        self.assertIn("go run ./cmd/klockd", str(e))
        self.assertIn("klockd", str(e))

    def test_socket_from_environment(self) -> None:
        self.serve(echo)
        old = os.environ.get("KLOCK_SOCKET")
        os.environ["KLOCK_SOCKET"] = self.path
        try:
            c = klock.KlockClient()
            self.addCleanup(c.close)
            self.assertEqual(c.socket_path, self.path)
            self.assertEqual(c.evict_expired(), 0)
        finally:
            if old is None:
                del os.environ["KLOCK_SOCKET"]
            else:
                os.environ["KLOCK_SOCKET"] = old

    def test_default_socket_path(self) -> None:
        # $XDG_RUNTIME_DIR is not read (protocol/README.md "Transport"); the
        # per-user rule is checked against Go's in tests/python_test.go.
        uid = 4242424  # no /run/user directory of its own
        cases = [
            ({"KLOCK_SOCKET": "/s.sock", "XDG_RUNTIME_DIR": "/r"}, 0, "/s.sock"),
            ({"XDG_RUNTIME_DIR": "/r"}, 0, "/run/klock/klockd.sock"),
            ({"XDG_RUNTIME_DIR": "/run/user/%d" % uid}, uid, "/tmp/klock-%d/klockd.sock" % uid),
            ({"KLOCK_SOCKET": ""}, uid, "/tmp/klock-%d/klockd.sock" % uid),
        ]
        for env, euid, want in cases:
            with self.subTest(env=env, euid=euid):
                self.assertEqual(klock.default_socket_path(env, euid), want)
        run_user = short_tempdir(self)
        mine = os.path.join(run_user, str(os.geteuid()))
        os.mkdir(mine)
        from klock.socketpath import user_sockets

        self.assertEqual(user_sockets(os.geteuid(), run_user),
                         [os.path.join(mine, "klock", "klockd.sock"),
                          "/tmp/klock-%d/klockd.sock" % os.geteuid()])
        self.assertEqual(user_sockets(uid, run_user), ["/tmp/klock-%d/klockd.sock" % uid])

    def test_reconnect_resends_in_flight_request(self) -> None:
        state = {"dropped": False}

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            if req["op"] == "acquire" and not state["dropped"]:
                state["dropped"] = True
                conn.close()  # the daemon "restarts" with the request in flight
                return
            echo(conn, req)

        d = self.serve(handler)
        c = self.client()
        r = c.acquire_lease("a", "s", "FILE", "/x", "MUTATES", 1000)
        self.assertTrue(r["success"])
        acquires = [q for q in d.requests if q["op"] == "acquire"]
        self.assertEqual(len(acquires), 2)
        self.assertEqual(acquires[0]["id"], acquires[1]["id"])
        self.assertEqual(acquires[0]["args"]["idem"], acquires[1]["args"]["idem"],
                         "a resend carries the same idem key")
        self.assertEqual(d.connections, 2)
        self.assertEqual(c.reconnects, 1)

    def test_reconnect_after_daemon_comes_back(self) -> None:
        d = self.serve(echo)
        c = self.client()
        self.assertEqual(c.stats()["op"], "stats")
        d.stop()
        # An idle client notices the close with its next call, which waits
        # (redialling) while nothing listens.
        result: Dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(c.stats()))
        t.start()
        wait_until(lambda: c._conn.in_flight() and not c._conn.connected, what="the call to wait")
        # bring the daemon back
        d2 = self.serve(echo)
        t.join(10)
        self.assertEqual(result.get("op"), "stats")
        self.assertEqual(d2.connections, 1)

    def test_unreachable_daemon_times_out_with_clear_error(self) -> None:
        d = self.serve(echo)
        c = self.client(timeout=0.3)
        self.assertEqual(c.stats()["op"], "stats")
        d.stop()
        with self.assertRaises(klock.DaemonNotRunningError) as cm:
            c.stats()
        self.assertIn(self.path, str(cm.exception))

    def test_shutting_down_is_retried_on_next_connection(self) -> None:
        state = {"n": 0}

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            state["n"] += 1
            if state["n"] == 1:
                conn.error(req, "SHUTTING_DOWN", "klock: daemon is stopping")
                conn.close()
                return
            conn.ok(req, {"count": 3})

        d = self.serve(handler)
        c = self.client()
        self.assertEqual(c.active_lease_count(), 3)
        self.assertEqual(d.connections, 2)

    def test_timeout(self) -> None:
        self.serve(lambda conn, req: None)  # never answers
        c = self.client(timeout=0.1)
        with self.assertRaises(klock.KlockTimeoutError) as cm:
            c.stats()
        self.assertIsInstance(cm.exception, TimeoutError)
        self.assertIsNone(cm.exception.code)

    def test_daemon_that_stops_reading_cannot_hang_callers(self) -> None:
        import socket

        import klock.connection as connection

        ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ln.bind(self.path)
        ln.listen(64)
        self.addCleanup(ln.close)
        held = []

        def stuck() -> None:  # answers hello, then never reads again
            while True:
                try:
                    conn, _ = ln.accept()
                except OSError:
                    return
                held.append(conn)
                body = conn.recv(65536)[4:]
                req = msgpack.unpackb(body, raw=False)
                resp = msgpack.packb({"id": req["id"], "ok": True, "result": {"max_frame": 1 << 20}})
                conn.sendall(len(resp).to_bytes(4, "big") + resp)

        threading.Thread(target=stuck, daemon=True).start()
        self.addCleanup(lambda: [c.close() for c in held])
        saved = connection._SEND_TIMEOUT
        connection._SEND_TIMEOUT = 0.1
        self.addCleanup(setattr, connection, "_SEND_TIMEOUT", saved)
        c = self.client(timeout=1.0)
        errors = []

        def worker() -> None:
            try:
                c._request("stats", {"pad": "x" * 900000})  # a few of these fill the socket buffer
            except klock.KlockError as e:
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertFalse(any(t.is_alive() for t in threads), "a caller hung")
        self.assertEqual(len(errors), 4)
        for e in errors:
            self.assertIsInstance(e, (klock.KlockTimeoutError, klock.KlockConnectionError))

    def test_oversized_request_is_refused_locally(self) -> None:
        d = self.serve(echo)
        c = self.client()
        with self.assertRaises(klock.BadFrameError):
            c._request("stats", {"pad": "x" * (DEFAULT_MAX_FRAME + 1)})
        self.assertEqual(d.requests, [])
        self.assertEqual(c.stats()["op"], "stats", "the connection is still usable")

    def test_hello_on_every_connection_sets_max_frame(self) -> None:
        state = {"dropped": False}

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            if not state["dropped"]:
                state["dropped"] = True
                conn.close()
                return
            echo(conn, req)

        d = FakeDaemon(self.path, handler, max_frame=200)
        self.addCleanup(d.stop)
        c = self.client()
        self.assertEqual(d.hellos, 1)
        with self.assertRaises(klock.BadFrameError) as cm:
            c.release_lease("x" * 200)
        self.assertIn("200", str(cm.exception))
        self.assertEqual(c.stats()["op"], "stats")  # dropped once, then resent
        self.assertEqual(d.hellos, 2, "the client says hello again after reconnecting")

    def test_daemon_that_never_answers_hello(self) -> None:
        import socket

        import klock.connection as connection

        ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ln.bind(self.path)
        ln.listen(4)  # connections wait in the backlog; nobody answers
        self.addCleanup(ln.close)
        saved = connection._HANDSHAKE_TIMEOUT
        connection._HANDSHAKE_TIMEOUT = 0.1
        self.addCleanup(setattr, connection, "_HANDSHAKE_TIMEOUT", saved)
        with self.assertRaises(klock.KlockConnectionError) as cm:
            klock.KlockClient(self.path)
        self.assertIn(self.path, str(cm.exception))

    def test_unencodable_argument(self) -> None:
        self.serve(echo)
        c = self.client()
        with self.assertRaises(klock.InvalidArgumentError):
            c.release_lease(object())  # type: ignore[arg-type]

    def test_close_fails_calls_in_flight(self) -> None:
        self.serve(lambda conn, req: None)
        c = self.client()
        errors = []

        def worker() -> None:
            try:
                c.stats()
            except klock.KlockError as e:
                errors.append(e)

        t = threading.Thread(target=worker)
        t.start()
        wait_until(lambda: c._conn._pending, what="call in flight")
        c.close()
        t.join(5)
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], klock.KlockConnectionError)
        with self.assertRaises(klock.KlockConnectionError):
            c.stats()

    def test_forked_child_gets_its_own_connection(self) -> None:
        d = self.serve(echo)
        c = self.client()
        self.assertEqual(c.stats()["op"], "stats")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: use the inherited client, report, and leave at once
            code = 1
            try:
                os.close(r)
                code = 0 if c.active_lease_count() == 0 else 2
                c.close()
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            status = f.read(1)
        os.waitpid(pid, 0)
        self.assertEqual(status, b"\x00", "the child could call the daemon")
        self.assertEqual(d.connections, 2, "the child dialled its own connection")
        self.assertEqual(c.stats()["op"], "stats", "the parent's connection is untouched")
        self.assertEqual(c.reconnects, 0)

    def test_stray_frames_are_ignored(self) -> None:
        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            conn.send({"id": 0, "ok": False, "error": {"code": "BAD_REQUEST", "message": "x"}})
            conn.send({"id": 999999, "ok": True, "result": {}})
            conn.send_raw((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")  # not msgpack
            conn.ok(req, {"count": 1})

        self.serve(handler)
        c = self.client()
        self.assertEqual(c.active_lease_count(), 1)

    def test_client_path_names_the_worktree_path(self) -> None:
        # protocol/README.md "FILE paths": a path the worktree rule moved to
        # the main worktree is sent with the path as named, as client_path;
        # one it left alone (or not a FILE) is sent without.
        main, linked = linked_worktree(self)
        d = self.serve(echo)
        c = self.client()
        c.acquire_lease("a", "s", "FILE", linked + "/src//x.py", "MUTATES", 1000)
        c.acquire_lease("a", "s", "FILE", main + "/src/x.py", "MUTATES", 1000)
        c.acquire_lease("a", "s", "SYMBOL", linked + "/src/x.py", "MUTATES", 1000)
        c.acquire("a", "s", "FILE", linked + "/y", "MUTATES", 1000, timeout=5)
        c.acquire_many("a", "s", [("FILE", linked + "/src/", "MUTATES"),
                                  ("FILE", main + "/z", "MUTATES")], 1000)
        args = [r["args"] for r in d.requests]
        self.assertEqual((args[0]["resource_path"], args[0]["client_path"]),
                         (main + "/src/x.py", linked + "/src/x.py"))
        self.assertNotIn("client_path", args[1])
        self.assertNotIn("client_path", args[2])
        self.assertEqual((args[3]["resource_path"], args[3]["client_path"]),
                         (main + "/y", linked + "/y"))
        intents = args[4]["intents"]
        self.assertEqual((intents[0]["resource_path"], intents[0]["client_path"]),
                         (main + "/src/", linked + "/src/"))
        self.assertNotIn("client_path", intents[1])

    def test_blocking_acquire_retries_die_then_waits(self) -> None:
        state = {"n": 0}

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            state["n"] += 1
            if state["n"] == 1:
                conn.ok(req, {"success": False, "reason": "DIE", "wait_time": 5,
                              "held_by": "senior", "message": "m"})
            else:
                conn.ok(req, grant(req))

        d = self.serve(handler)
        c = self.client()
        g = c.acquire("a", "s", "FILE", "/x", "MUTATES", 1000, timeout=10)
        self.assertTrue(g["success"])
        a0, a1 = d.requests[0]["args"], d.requests[1]["args"]
        self.assertEqual(a0["idem"], a1["idem"], "one blocking acquire uses one idem key")
        self.assertGreater(a0["wait_timeout"], 0, "WAIT verdicts are waited for in the daemon")
        self.assertLessEqual(a0["wait_timeout"], 10000)

    def test_blocking_acquire_follows_the_retry_table(self) -> None:
        # protocol/README.md "Retries": CONFLICT is retried after wait_time,
        # RESOURCE_EXHAUSTED and UNAVAILABLE with backoff; the first answer of
        # each kind below is a refusal, the second a grant.
        seen: Dict[str, int] = {}

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            agent = req["args"]["agent_id"]
            seen[agent] = seen.get(agent, 0) + 1
            if seen[agent] > 1:
                conn.ok(req, grant(req))
            elif agent == "conflict":
                conn.ok(req, {"success": False, "reason": "CONFLICT", "wait_time": 5,
                              "held_by": "conflict", "message": "m"})
            else:
                conn.error(req, agent.rstrip("2"), "klock: refused for now")

        self.serve(handler)
        c = self.client()
        for agent in ("conflict", "RESOURCE_EXHAUSTED", "UNAVAILABLE"):
            with self.subTest(agent):
                self.assertTrue(c.acquire(agent, "s", "FILE", "/x", "MUTATES", 1000, timeout=10)["success"])
                self.assertEqual(seen[agent], 2)
        with self.assertRaises(klock.ResourceExhaustedError):  # one call: fail
            c.acquire_lease("RESOURCE_EXHAUSTED2", "s", "FILE", "/x", "MUTATES", 1000)
        seen["INVALID_ARGUMENT"] = 0
        with self.assertRaises(klock.InvalidArgumentError):  # blocking: fail at once
            c.acquire("INVALID_ARGUMENT", "s", "FILE", "/x", "MUTATES", 1000, timeout=10)
        self.assertEqual(seen["INVALID_ARGUMENT"], 1)

    def test_blocking_acquire_gives_up(self) -> None:
        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            reason = "SESSION_EXPIRED" if req["args"]["agent_id"] == "c" else "DIE"
            conn.ok(req, {"success": False, "reason": reason, "wait_time": 20,
                          "held_by": "other", "message": "m"})

        self.serve(handler)
        c = self.client()
        with self.assertRaises(klock.AcquireTimeoutError) as cm:
            c.acquire("a", "s", "FILE", "/x", "MUTATES", 1000, timeout=0.1)
        self.assertEqual(cm.exception.reason, "DIE")
        self.assertEqual(cm.exception.held_by, "other")
        self.assertIsInstance(cm.exception, TimeoutError)
        with self.assertRaises(klock.LeaseDeniedError) as cm2:
            c.acquire("c", "s", "FILE", "/x", "MUTATES", 1000, timeout=10)
        self.assertEqual(cm2.exception.reason, "SESSION_EXPIRED")
        self.assertNotIsInstance(cm2.exception, klock.AcquireTimeoutError)


if __name__ == "__main__":
    unittest.main()


class LeaseKeepAliveTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = short_tempdir(self)
        self.path = os.path.join(self.dir, "d.sock")
        self.heartbeats = 0
        self.fail_after = 3
        self.refusals: List[str] = []
        self.skew_ms = 0  # the daemon's lease clock minus ours
        self.lock = threading.Lock()

        def handler(conn: FakeConn, req: Dict[str, Any]) -> None:
            if req["op"] == "acquire":
                g = grant(req)
                g["expires_at"] = int(time.time() * 1000) + self.skew_ms + req["args"]["ttl"]
                conn.ok(req, g)
            elif req["op"] == "heartbeat":
                with self.lock:
                    self.heartbeats += 1
                    n = self.heartbeats
                    refusal = self.refusals.pop(0) if self.refusals else None
                if refusal is not None:
                    conn.error(req, refusal, "klock: refused")
                elif n > self.fail_after:
                    conn.error(req, "NOT_FOUND", "klock: lease is not active")
                else:
                    conn.ok(req, {"lease_id": req["args"]["lease_id"],
                                  "expires_at": int(time.time() * 1000) + 60000})
            elif req["op"] == "release":
                conn.ok(req, {"released": True})

        self.daemon = FakeDaemon(self.path, handler)
        self.addCleanup(self.daemon.stop)
        self.client = klock.KlockClient(self.path, timeout=5)
        self.addCleanup(self.client.close)

    def test_renews_then_releases(self) -> None:
        self.fail_after = 10**9
        # A ttl the keep-alive can meet on a busy machine: the lease's time
        # is its own (sent + ttl), whatever expires_at the daemon reports.
        with self.client.lease("a", "s", "FILE", "/x", "MUTATES", ttl=600) as lease:
            self.assertTrue(lease.lease_id.startswith("L-"))
            self.assertEqual(lease.fence, 7)
            wait_until(lambda: self.heartbeats >= 3, what="three renewals")
            self.assertFalse(lease.lost)
            lease.check()
            hb = [r for r in self.daemon.requests if r["op"] == "heartbeat"][0]
            self.assertEqual(hb["args"], {"lease_id": lease.lease_id})
        self.assertEqual(self.daemon.ops()[-1], "release")
        self.assertFalse(lease.release(), "a second release is a no-op")

    def test_keepalive_follows_the_retry_table(self) -> None:
        # A heartbeat refused INTERNAL (or UNAVAILABLE, or a broken
        # connection) is sent again until the lease is about to expire; one
        # refused INVALID_ARGUMENT (or NOT_FOUND...) loses the lease at once.
        self.fail_after = 10**9
        self.refusals = ["INTERNAL", "UNAVAILABLE", "INVALID_ARGUMENT"]
        lease = self.client.lease("a", "s", "FILE", "/x", "MUTATES", ttl=300)
        self.assertTrue(lease.wait_lost(10))
        self.assertIn("INVALID_ARGUMENT", str(lease.lost_error))
        self.assertEqual(self.refusals, [], "INTERNAL and UNAVAILABLE were retried, not final")

    def test_keepalive_keeps_its_own_clock(self) -> None:
        # protocol/README.md "Time and fences": a client measures a lease's
        # time on its own monotonic clock and never compares expires_at with
        # its wall clock, which may differ from the daemon's lease clock
        # (here the daemon's is an hour behind, as after a suspend). A
        # refused renewal is then retried, not taken as a lease past expiry.
        self.fail_after = 10**9
        self.skew_ms = -3600 * 1000
        self.refusals = ["UNAVAILABLE"]
        with self.client.lease("a", "s", "FILE", "/x", "MUTATES", ttl=3000) as lease:
            wait_until(lambda: self.heartbeats >= 2 or lease.lost, what="a renewal after the refusal")
            self.assertFalse(lease.lost, lease.lost_error)
            self.assertEqual(self.refusals, [])

    def test_loss_is_observable(self) -> None:
        lost = []
        lease = self.client.lease("a", "s", "FILE", "/x", "MUTATES", ttl=30, on_lost=lost.append)
        self.assertTrue(lease.wait_lost(10))
        self.assertTrue(lease.lost)
        self.assertIsInstance(lease.lost_error, klock.LeaseLostError)
        with self.assertRaises(klock.LeaseLostError):
            lease.check()
        self.assertEqual(len(lost), 1)
        self.assertIs(lost[0], lease.lost_error)
        self.assertFalse(lease.release())
        self.assertNotIn("release", self.daemon.ops(), "a lost lease is not released again")
