#!/usr/bin/env python3
"""The Python client's benchmark: klock's seed API against redis-py, side by side.

One command starts its own klockd (in memory) and redis-server, both on Unix
sockets in a temporary directory, and runs W threads that loop
acquire -> release on their own resource through one shared client::

    python3 clientlib/python/bench/bench.py                 # 2 s cells, 5 repetitions
    python3 clientlib/python/bench/bench.py --short         # CI: tiny cells, 1 repetition
    python3 clientlib/python/bench/bench.py --compare before=/tmp/old/clientlib/python
                                                            # add an older client, same run

Back ends:

- ``klock``: ``KlockClient.acquire_lease(agent, "s", "FILE", path, "MUTATES",
  30000)`` then ``release_lease(lease_id)``; one client shared by the threads,
  one agent per thread.
- ``klock-NAME`` (with ``--compare NAME=DIR``, repeatable): the same loop with
  the ``klock`` package found in DIR, to measure a change before/after in
  one run (e.g. DIR from ``git archive REV clientlib/python | tar -x``).
- ``redis-py``: ``Redis.set(key, token, nx=True, px=30000)`` then the
  standard compare-and-delete Lua release (``Script``, i.e. EVALSHA); one
  ``redis.Redis`` (its connection pool) shared by the threads.

Each cell (back end x W x repetition) runs in a fresh worker process; cells
are interleaved (repetition -> W -> back end) so that the machine's drift
hits every back end alike. The table shows medians over repetitions, and the
ratio column is the median of the per-repetition ratios to redis-py.

Needs: klockd (``--klockd``, else on PATH, else ``go build`` from this
checkout), redis-server (``apt-get install -y redis-server``) and redis-py
(``apt-get install -y python3-redis``; PyPI's ``redis`` works too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_DIR = os.path.dirname(HERE)                       # clientlib/python
REPO_ROOT = os.path.dirname(os.path.dirname(CLIENT_DIR))  # the checkout

TTL_MS = 30000

REDIS_RELEASE = """if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
else
    return 0
end"""


# ----- the worker: one cell, in its own process ----------------------------------


def _percentile(sorted_ns: Sequence[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    i = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[i] / 1000.0


def process_cpu(pid: int) -> float:
    """User + system CPU seconds process pid has used (/proc/PID/stat); 0 if unknown."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_worker(backend: str, sock: str, server_pid: int, threads: int, warmup: float,
               duration: float) -> Dict[str, Any]:
    """Runs one cell and returns its figures (the worker process prints them)."""
    if backend.startswith("klock"):
        import klock

        client: Any = klock.KlockClient(sock)
        for t in range(threads):
            client.register_agent("bench-%d" % t, t + 1)

        def pair_loop(t: int, start_ns: int, end_ns: int, out: List[Tuple[int, int, int]]) -> None:
            acquire, release = client.acquire_lease, client.release_lease
            agent, path = "bench-%d" % t, "/bench/%d" % t
            clock = time.perf_counter_ns
            while True:
                t0 = clock()
                if t0 >= end_ns:
                    return
                r = acquire(agent, "s", "FILE", path, "MUTATES", TTL_MS)
                t1 = clock()
                if not r["success"] or not release(r["lease_id"]):
                    raise RuntimeError("bench: klock pair failed: %r" % (r,))
                t2 = clock()
                if t0 >= start_ns and t2 <= end_ns:
                    out.append((t0, t1, t2))

        version = getattr(klock, "__version__", "?")
        settings = "klock %s from %s" % (version, os.path.dirname(os.path.dirname(klock.__file__)))
    elif backend == "redis-py":
        import redis

        client = redis.Redis(unix_socket_path=sock)
        script = client.register_script(REDIS_RELEASE)
        client.ping()

        def pair_loop(t: int, start_ns: int, end_ns: int, out: List[Tuple[int, int, int]]) -> None:
            set_, key, prefix = client.set, "bench:%d" % t, "w%d-" % t
            clock = time.perf_counter_ns
            n = 0
            while True:
                t0 = clock()
                if t0 >= end_ns:
                    return
                n += 1
                token = prefix + str(n)
                if not set_(key, token, nx=True, px=TTL_MS):
                    raise RuntimeError("bench: redis SET NX failed on %s" % key)
                t1 = clock()
                if script(keys=[key], args=[token]) != 1:
                    raise RuntimeError("bench: redis release failed on %s" % key)
                t2 = clock()
                if t0 >= start_ns and t2 <= end_ns:
                    out.append((t0, t1, t2))

        parser = type(client.connection_pool.get_connection("PING")._parser).__name__
        settings = "redis-py %s (parser %s)" % (redis.__version__, parser)
    else:
        raise SystemExit("bench: unknown back end %r" % backend)

    results: List[List[Tuple[int, int, int]]] = [[] for _ in range(threads)]
    errors: List[BaseException] = []
    start_ns = time.perf_counter_ns() + int((warmup + 0.05) * 1e9)
    end_ns = start_ns + int(duration * 1e9)

    def run(t: int) -> None:
        try:
            pair_loop(t, start_ns, end_ns, results[t])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    # CPU over the measured window only: this thread sleeps through it.
    time.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / 1e9))
    cpu0, srv0 = time.process_time(), process_cpu(server_pid)
    time.sleep(max(0.0, (end_ns - time.perf_counter_ns()) / 1e9))
    cpu, srv = time.process_time() - cpu0, process_cpu(server_pid) - srv0
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    pairs = sorted(t2 - t0 for out in results for (t0, _, t2) in out)
    calls = sorted([t1 - t0 for out in results for (t0, t1, _) in out]
                   + [t2 - t1 for out in results for (_, t1, t2) in out])
    total = len(pairs)
    return {
        "backend": backend,
        "threads": threads,
        "pairs": total,
        "seconds": duration,
        "pairs_per_sec": total / duration,
        "p50_pair_us": _percentile(pairs, 0.50),
        "p99_pair_us": _percentile(pairs, 0.99),
        "p50_call_us": _percentile(calls, 0.50),
        "client_cpu_us": 1e6 * cpu / max(1, total),
        "server_cpu_us": 1e6 * srv / max(1, total),
        "settings": settings,
    }


# ----- the driver ---------------------------------------------------------------


class Server:
    """A server child process on a Unix socket."""

    def __init__(self, name: str, argv: List[str], sock: str, log: str) -> None:
        self.name = name
        self.sock = sock
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("bench: %s exited (%s) before listening:\n%s"
                                 % (name, self.proc.returncode, self.logs()))
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(sock)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise SystemExit("bench: %s did not listen on %s:\n%s" % (name, sock, self.logs()))
                time.sleep(0.01)

    def logs(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def find_klockd(given: str, tmp: str) -> str:
    if given:
        return given
    found = shutil.which("klockd")
    if found:
        return found
    out = os.path.join(tmp, "klockd")
    print("bench: building klockd (go build ./cmd/klockd)", file=sys.stderr)
    subprocess.run(["go", "build", "-o", out, "./cmd/klockd"], cwd=REPO_ROOT, check=True)
    return out


def find_redis(given: str) -> str:
    for p in ([given] if given else []) + [shutil.which("redis-server") or "", "/usr/bin/redis-server"]:
        if p and os.path.exists(p):
            return p
    raise SystemExit("bench: redis-server not found; install it (apt-get install -y redis-server)"
                     " or pass --redis-server")


def run_cell(backend: str, sock: str, threads: int, args: argparse.Namespace,
             server: Server, compare: Dict[str, str]) -> Dict[str, Any]:
    env = dict(os.environ)
    path = compare.get(backend, CLIENT_DIR)
    env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    argv = [sys.executable, os.path.abspath(__file__), "worker", "--backend", backend,
            "--socket", sock, "--server-pid", str(server.proc.pid), "--threads", str(threads), "--warmup", str(args.warmup),
            "-d", str(args.d)]
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=120 + 2 * (args.d + args.warmup))
    if proc.returncode != 0:
        raise SystemExit("bench: %s worker failed (%d):\n%s" % (backend, proc.returncode, proc.stderr))
    cell: Dict[str, Any] = json.loads(proc.stdout)
    return cell


COLUMNS = [("pairs_per_sec", "pairs/s", "%.0f"), ("p50_pair_us", "p50 pair µs", "%.1f"),
           ("p50_call_us", "p50 call µs", "%.1f"), ("p99_pair_us", "p99 pair µs", "%.1f"),
           ("client_cpu_us", "client CPU µs/pair", "%.1f"),
           ("server_cpu_us", "server CPU µs/pair", "%.1f")]


def summarise(cells: List[Dict[str, Any]], backends: List[str], threads: List[int]) -> List[Dict[str, Any]]:
    """Medians per (W, back end); ratios to redis-py as medians of per-repetition ratios."""
    rows = []
    for w in threads:
        for b in backends:
            mine = [c for c in cells if c["backend"] == b and c["threads"] == w]
            if not mine:
                continue
            row: Dict[str, Any] = {"backend": b, "threads": w, "reps": len(mine),
                                   "pairs": statistics.median(c["pairs"] for c in mine)}
            for key, _, _ in COLUMNS:
                row[key] = statistics.median(c[key] for c in mine)
            ratios = []
            for c in mine:
                peer = [r for r in cells if r["backend"] == "redis-py" and r["threads"] == w
                        and r["rep"] == c["rep"]]
                if peer and peer[0]["pairs_per_sec"] > 0:
                    ratios.append(c["pairs_per_sec"] / peer[0]["pairs_per_sec"])
            row["vs_redis"] = statistics.median(ratios) if ratios else None
            row["vs_redis_each"] = ratios
            rows.append(row)
    return rows


def markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = ["Run %s: `%s`" % (meta["started"], meta["command"]), "",
             "Machine: %s; load average at start %s." % (meta["machine"], meta["load"]), ""]
    head = ["W", "back end"] + [title for _, title, _ in COLUMNS] + ["pairs/s ÷ redis-py"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|--:|---|" + "--:|" * (len(COLUMNS) + 1))
    for r in rows:
        cells = [str(r["threads"]), r["backend"]] + [fmt % r[key] for key, _, fmt in COLUMNS]
        if r["vs_redis"] is None:
            cells.append("-")
        else:
            each = ", ".join("%.2f" % x for x in r["vs_redis_each"])
            cells.append("%.2f" % r["vs_redis"] + (" (%s)" % each if len(r["vs_redis_each"]) > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for b, s in sorted(meta["settings"].items()):
        lines.append("- `%s`: %s" % (b, s))
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%d CPUs, %s, Linux %s, Python %s" % (os.cpu_count() or 0, model, platform.release(),
                                                  platform.python_version())


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        p = argparse.ArgumentParser(prog="bench.py worker")
        p.add_argument("--backend", required=True)
        p.add_argument("--socket", required=True)
        p.add_argument("--server-pid", type=int, required=True)
        p.add_argument("--threads", type=int, required=True)
        p.add_argument("--warmup", type=float, required=True)
        p.add_argument("-d", type=float, required=True)
        a = p.parse_args(argv[1:])
        print(json.dumps(run_worker(a.backend, a.socket, a.server_pid, a.threads, a.warmup, a.d)))
        return 0

    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-d", type=float, default=2.0, help="measured seconds per cell (default 2)")
    p.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds before each cell")
    p.add_argument("--reps", type=int, default=5, help="repetitions of every cell (default 5)")
    p.add_argument("-w", default="1,8", help="thread counts, comma separated (default 1,8)")
    p.add_argument("--backends", default="klock,redis-py", help="klock, redis-py (default both)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                   help="a directory holding another klock package: adds the back end"
                   " klock-NAME (repeatable)")
    p.add_argument("--klockd", default="", help="klockd binary (default: on PATH, else go build)")
    p.add_argument("--klockd-compare", action="append", default=[], metavar="NAME=PATH",
                   help="another klockd binary: adds the back end klockd-NAME, this client"
                   " against a klockd started from PATH, side by side (repeatable)")
    p.add_argument("--redis-server", default="", help="redis-server binary (default: on PATH)")
    p.add_argument("--json", default="", help="write every cell and the summary as JSON here")
    p.add_argument("--md", default="", help="write the table as Markdown here (for BENCHMARKS.md)")
    p.add_argument("--short", action="store_true", help="CI mode: 0.2 s cells, 1 repetition")
    a = p.parse_args(argv)
    if a.short:
        a.d, a.warmup, a.reps = 0.2, 0.05, 1
    backends = [b for b in a.backends.split(",") if b]
    compare: Dict[str, str] = {}
    for spec in a.compare:
        name, _, path = spec.partition("=")
        if not name or not os.path.isdir(os.path.join(path, "klock")):
            raise SystemExit("bench: --compare %s: want NAME=DIR, DIR holding a klock package" % spec)
        compare["klock-" + name] = os.path.abspath(path)
        backends.insert(len(compare), "klock-" + name)
    daemons: Dict[str, str] = {}
    for spec in a.klockd_compare:
        name, _, path = spec.partition("=")
        if not name or not os.access(path, os.X_OK):
            raise SystemExit("bench: --klockd-compare %s: want NAME=PATH, PATH an executable klockd" % spec)
        daemons["klockd-" + name] = os.path.abspath(path)
        backends.insert(backends.index("klock") + len(daemons) if "klock" in backends else 0, "klockd-" + name)
    threads = [int(w) for w in a.w.split(",") if w]

    tmp = tempfile.mkdtemp(prefix="klkbench")
    servers: Dict[str, Server] = {}
    try:
        klockd = find_klockd(a.klockd, tmp)
        sock_k = os.path.join(tmp, "k.sock")
        servers["klock"] = Server("klockd", [klockd, "--socket", sock_k, "--state-dir", "",
                                             "--log-level", "warn"], sock_k, os.path.join(tmp, "klockd.log"))
        for b, path in daemons.items():
            sock = os.path.join(tmp, b + ".sock")
            servers[b] = Server(b, [path, "--socket", sock, "--state-dir", "", "--log-level", "warn"],
                                sock, os.path.join(tmp, b + ".log"))
        if "redis-py" in backends:
            sock_r = os.path.join(tmp, "r.sock")
            servers["redis-py"] = Server("redis-server", [
                find_redis(a.redis_server), "--port", "0", "--unixsocket", sock_r,
                "--unixsocketperm", "700", "--dir", tmp, "--save", "", "--appendonly", "no",
                "--loglevel", "warning"], sock_r, os.path.join(tmp, "redis.log"))
        meta: Dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python3 clientlib/python/bench/bench.py " + " ".join(argv),
            "machine": machine(),
            "load": " ".join("%.2f" % x for x in os.getloadavg()),
            "settings": {},
        }
        cells = []
        for rep in range(a.reps):
            for w in threads:
                for b in backends:
                    server = servers[b if b in servers else "klock"]
                    cell = run_cell(b, server.sock, w, a, server, compare)
                    cell["rep"] = rep
                    meta["settings"][b] = cell.pop("settings")
                    cells.append(cell)
                    print("rep %d W=%d %-12s %8.0f pairs/s  p50 pair %6.1f µs" % (
                        rep, w, b, cell["pairs_per_sec"], cell["p50_pair_us"]), file=sys.stderr)
        meta["settings"]["klockd"] = "%s --state-dir '' (in memory)" % klockd
        for b, path in daemons.items():
            meta["settings"][b] += "; against %s --state-dir '' (in memory)" % path
        rows = summarise(cells, backends, threads)
        md = markdown(rows, meta)
        print(md)
        if a.md:
            with open(a.md, "w") as f:
                f.write(md)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"meta": meta, "cells": cells, "summary": rows}, f, indent=1)
    finally:
        for s in servers.values():
            s.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
