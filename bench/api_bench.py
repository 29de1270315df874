"""REST API benchmark: the web app under cheroot and waitress, 8 keep-alive clients on loopback, SQLite and PostgreSQL.

    .venv/bin/python -m bench.api_bench                 # both databases, both servers, 5 s per endpoint; updates bench/RESULTS.md
    .venv/bin/python -m bench.api_bench --db sqlite --server cheroot --duration 2 --no-write

Measures ``GET /api/tunnels`` for a user with 50 tunnels, ``GET /api/user/profile``
and the writes ``POST /api/tunnels`` + ``DELETE /api/tunnels/<id>`` (each client
creates a tunnel and deletes it again, in a loop): requests per second, p50 and
p99 latency, and SQL queries per request (counted with a hook on peewee's
``execute_sql``, for a user with 1 and with 50 tunnels, which must give the same
count).  The app runs as a real ``intunnel web`` subprocess (its own
interpreter, so the clients don't share its GIL) with the rate limits raised out
of the way and the access log on as in production (written to a file), once on
a fresh SQLite file and once on a fresh database of a throwaway PostgreSQL
cluster the benchmark starts itself (``tests/support/postgres.py``, as the
tests do), under each WSGI server asked for (``--server``, the ``web_server``
setting: cheroot and waitress by default).  Each server also runs a bare
hello-world WSGI app (``bench.api_bench --serve-bare``: the same server set up
by the same ``make_server``, no Bottle, no database), and every figure is also
given as a ratio to that app's req/s under the same server, so what the app
costs is told apart from what the server costs.  All servers run for the whole
benchmark and every endpoint is measured on each of them right after the other,
so load elsewhere on a shared machine hits all alike.  The GET load comes from ``wrk -t1 -c8`` (8 keep-alive
connections) when wrk is installed, else from 8 Python threads with one
``http.client`` keep-alive connection each; the writes come from the Python
threads (they need the id the POST returned) and, with wrk, once more from wrk
with ``bench/api_writes.lua`` (POST and DELETE alternating on each connection:
one latency for both methods, without the Python clients' own GIL turns); all
log in by session cookie.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EMAIL, PASSWORD = "bench@example.com", "bench-password"
TARGET_P99_MS = 25.0
ENDPOINTS = ("/api/tunnels", "/api/user/profile")
WRITES = ("POST /api/tunnels", "DELETE /api/tunnels/<id>")  # measured together: create, then delete
WRITE_MIX = "+".join(WRITES)  # the same writes from wrk (bench/api_writes.lua): one latency for both methods
WRITER = "writer@example.com"  # the write load's user (no tunnels between its create/delete pairs)
BACKENDS = ("sqlite", "postgresql")
SERVERS = ("cheroot", "waitress")
BARE = "bare"  # the hello-world app's rows: backend column "-"
BASELINE = "/healthz"  # same server and middleware, no credential, no SQL: the floor under the API figures
MARKER = "api-bench"  # the section's markers in the results file (bench.report.write_section)
SECTION_START, SECTION_END = f"<!-- {MARKER} -->", f"<!-- /{MARKER} -->"
UNLIMITED = str(10 ** 9)
CLIENTS = {"wrk": "`wrk -t1 -c{n}`, one connection per client", "python": "threads, `http.client`"}


@dataclass(frozen=True)
class Result:
    path: str
    backend: str       # a database, or BARE for the hello-world app
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def bench_settings(data_dir: str, port: int = 0, database_url: str = ""):
    from intunnel.settings import load_settings, prepare_data_dir
    return prepare_data_dir(load_settings(env={}, overrides={
        "data_dir": data_dir, "web_listen": f"127.0.0.1:{port}", "rate_limit_get": UNLIMITED,
        "rate_limit_write": UNLIMITED, "login_max_failures": UNLIMITED, "database_url": database_url}))


def seed_database(settings, tunnels_per_user: int) -> None:
    """The benchmark user with N tunnels, and a user with 1 (for the query-count check)."""
    from intunnel import accounts, tunnels
    from intunnel.models import database, open_database
    open_database(settings)
    with database.connection_context():
        user = accounts.create_user(EMAIL, "bench", PASSWORD)
        for i in range(tunnels_per_user):
            tunnels.create(settings, user, f"Tunnel {i}", f"bench{i}", 3000 + i)
        small = accounts.create_user("one@example.com", "one", PASSWORD)
        tunnels.create(settings, small, "Only", "only", 3000)
        accounts.create_user(WRITER, "writer", PASSWORD)


def login_cookie(host: str, port: int, email: str) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/login", body=json.dumps({"email": email, "password": PASSWORD}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"login failed: {response.status}")
    cookie = response.getheader("Set-Cookie", "")
    return cookie.split(";", 1)[0]


def count_queries(settings) -> dict[tuple[str, str], float]:
    """SQL statements per request for each endpoint, users with 1 and with N tunnels."""
    import logging
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # one worker thread: queueing is expected
    from intunnel.models import database
    from intunnel.web.app import create_app
    from intunnel.web.serve import make_server, start_in_thread, stop_server

    app = create_app(settings.replace(web_listen="127.0.0.1:0"))
    server = make_server(settings.replace(web_listen="127.0.0.1:0"), app=app, threads=1)
    thread = start_in_thread(server)
    db = database.obj
    counter = {"n": 0}
    original = db.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        counter["n"] += 1
        return original(sql, params, *args, **kwargs)

    counts = {}
    try:
        host, port = server.effective_host, server.effective_port
        for email, label in ((EMAIL, "50 tunnels"), ("one@example.com", "1 tunnel")):
            cookie = login_cookie(host, port, email)
            conn = http.client.HTTPConnection(host, port, timeout=10)
            db.execute_sql = counting
            for path in ENDPOINTS:
                counter["n"] = 0
                repeats = 20
                for _ in range(repeats):
                    conn.request("GET", path, headers={"Cookie": cookie})
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200, (path, r.status)
                counts[(path, label)] = counter["n"] / repeats
            db.execute_sql = original
            conn.close()
        cookie = login_cookie(host, port, WRITER)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        counter_post = counter_delete = 0
        db.execute_sql = counting
        for i in range(repeats):
            counter["n"] = 0
            tunnel_id = create_tunnel(conn, cookie, f"count{i}")
            counter_post += counter["n"]
            counter["n"] = 0
            delete_tunnel(conn, cookie, tunnel_id)
            counter_delete += counter["n"]
        db.execute_sql = original
        conn.close()
        for label in ("1 tunnel", "50 tunnels"):  # the writer owns none besides its own: one figure
            counts[(WRITES[0], label)] = counter_post / repeats
            counts[(WRITES[1], label)] = counter_delete / repeats
    finally:
        db.execute_sql = original
        stop_server(server, thread)
    return counts


def create_tunnel(conn: http.client.HTTPConnection, cookie: str, subdomain: str) -> int:
    """POST /api/tunnels on a keep-alive connection; the new tunnel's id."""
    body = json.dumps({"name": subdomain, "subdomain": subdomain, "local_port": 3000})
    conn.request("POST", "/api/tunnels", body=body, headers={"Cookie": cookie, "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"POST /api/tunnels: {r.status} {data[:200]!r}")
    return json.loads(data)["tunnel"]["id"]


def delete_tunnel(conn: http.client.HTTPConnection, cookie: str, tunnel_id: int) -> None:
    conn.request("DELETE", f"/api/tunnels/{tunnel_id}", headers={"Cookie": cookie})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"DELETE /api/tunnels/{tunnel_id}: {r.status} {data[:200]!r}")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hello_app(environ, start_response):
    """The bare WSGI app the servers are measured with: no framework, no database."""
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def serve_bare(server: str, port: int, threads: int) -> int:
    """``--serve-bare``: ``hello_app`` under ``server``, set up by the web app's own make_server."""
    import signal
    from intunnel.settings import load_settings
    from intunnel.web.serve import STOP_SIGNALS, make_server, serve_until_signalled
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)   # as `intunnel web`: before any thread starts
    settings = load_settings(env={}, overrides={"web_listen": f"127.0.0.1:{port}", "web_server": server,
                                                "web_threads": str(threads)})
    return serve_until_signalled(make_server(settings, app=hello_app))


@contextlib.contextmanager
def web_subprocess(data_dir: str, port: int, log_path: Path, threads: int, database_url: str = "",
                   server: str = "", bare: bool = False):
    env = {**os.environ, "INTUNNEL_DATA_DIR": data_dir, "INTUNNEL_WEB_THREADS": str(threads), "INTUNNEL_WEB_LISTEN": f"127.0.0.1:{port}",
           "INTUNNEL_RATE_LIMIT_GET": UNLIMITED, "INTUNNEL_RATE_LIMIT_WRITE": UNLIMITED,
           "INTUNNEL_LOGIN_MAX_FAILURES": UNLIMITED, "INTUNNEL_LOG_LEVEL": "info",
           # no metrics listener: its fixed default port would collide with other engineers' servers
           "INTUNNEL_WEB_METRICS_LISTEN": "", "INTUNNEL_DATABASE_URL": database_url}
    if server:
        env["INTUNNEL_WEB_SERVER"] = server
    argv = [sys.executable, "-m", "bench.api_bench", "--serve-bare", "--server", server, "--port", str(port),
            "--threads", str(threads)] if bare else [sys.executable, "-m", "intunnel.cli", "web"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"intunnel web did not start; see {log_path}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_clients(port: int, path: str, cookie: str, clients: int, seconds: float, backend: str = "") -> Result:
    return _run_threads(port, path, cookie, clients, seconds, backend)[0]


def run_writes(port: int, cookie: str, clients: int, seconds: float, backend: str) -> list[Result]:
    """Each client: POST a tunnel, DELETE it, again; one Result per method."""
    return _run_threads(port, WRITES[0], cookie, clients, seconds, backend, writes=True)


def _run_threads(port: int, path: str, cookie: str, clients: int, seconds: float, backend: str,
                 writes: bool = False) -> list[Result]:
    kinds = 2 if writes else 1
    latencies: list[list[list[float]]] = [[[] for _ in range(clients)] for _ in range(kinds)]
    errors = [0] * clients
    start_barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Cookie": cookie}
        n = 0
        start_barrier.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                break
            try:
                if writes:
                    n += 1
                    tunnel_id = create_tunnel(conn, cookie, f"w{os.getpid()}c{i}n{n}")
                    t1 = time.perf_counter()
                    latencies[0][i].append(t1 - t0)
                    delete_tunnel(conn, cookie, tunnel_id)
                    latencies[1][i].append(time.perf_counter() - t1)
                    continue
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException, RuntimeError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            if ok:
                latencies[0][i].append(time.perf_counter() - t0)
            else:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start_barrier.wait()
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.perf_counter() - began
    results = []
    for kind, name in zip(latencies, WRITES if writes else (path,)):
        merged = sorted(x for per in kind for x in per)
        if not merged:
            raise RuntimeError(f"no successful request to {name}")
        q = statistics.quantiles(merged, n=100, method="inclusive")
        results.append(Result(name, backend, len(merged), sum(errors), elapsed, q[49] * 1000, q[98] * 1000))
    return results


def run_wrk(port: int, path: str, cookie: str, clients: int, seconds: float, backend: str = "") -> Result:
    """The same load from wrk (C, epoll, one thread): only the server's latency is measured."""
    from bench.load import parse_wrk
    argv = [shutil.which("wrk"), "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency",
            "--timeout", "5s", "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    r = parse_wrk(out.stdout)
    return Result(path, backend, r.requests, r.errors, r.requests / r.rps if r.rps else seconds, r.p50_ms, r.p99_ms)


def run_wrk_writes(port: int, cookie: str, clients: int, seconds: float, backend: str, prefix: str) -> Result:
    """POSTs and DELETEs alternating on every connection, from wrk (bench/api_writes.lua): the writes'
    latency without the Python clients' own (8 threads taking turns on one GIL in this process)."""
    from bench.load import parse_wrk
    argv = [shutil.which("wrk"), "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout",
            "5s", "-s", str(HERE / "api_writes.lua"), "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{port}",
            "--", prefix]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    r = parse_wrk(out.stdout)
    return Result(WRITE_MIX, backend, r.requests, r.errors, r.requests / r.rps if r.rps else seconds,
                  r.p50_ms, r.p99_ms)


def machine_line() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}, " \
           f"load average {load:.1f} at start"


def in_app_latency(log_path: Path, offset: int, path: str) -> tuple[float, float]:
    """p50 and p99 of the time spent inside the app (from its access log lines), in ms.

    The difference to the client-side figures is waitress's queueing and socket
    work, plus waiting for a CPU on a shared machine.
    """
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    durations = []
    for one in path.split("+"):   # WRITE_MIX: both methods' lines
        method, _, one = one.rpartition(" ")
        pattern = re.escape(one).replace(re.escape("<id>"), r"\d+")
        durations += [float(m.group(1)) for m in re.finditer(
            " " + (method or "GET") + " " + pattern + r" 200 \S+ ([\d.]+)ms", text)]
    durations.sort()
    if len(durations) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(durations, n=100, method="inclusive")
    return q[49], q[98]


def bare_rps(results: list[Result], server: str) -> float:
    """The hello-world app's req/s under ``server``: the mean of its runs (first and last of the benchmark)."""
    runs = [r.rps for r in results if r.backend == BARE and r.server == server]
    return statistics.fmean(runs) if runs else float("nan")


def report(results: list[Result], counts: dict, in_app: dict, opts, machine: str, versions: dict | None = None) -> str:
    versions = versions or {}
    where = " and ".join(f"{'a fresh SQLite file' if b == 'sqlite' else 'a throwaway PostgreSQL cluster'}"
                         f"{' (' + versions[b] + ')' if versions.get(b) else ''}" for b in opts.backends)
    servers = ", ".join(opts.servers)
    lines = [
        f"## API\n\n{SECTION_START}\n",
        f"`python -m bench.api_bench --db {','.join(opts.backends)} --server {','.join(opts.servers)} "
        f"--duration {opts.duration:g} --clients {opts.clients} --client {opts.client}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); {machine}.",
        f"`intunnel web` under {servers} ({opts.threads} threads each, the `web_server` setting) on {where}, "
        f"and a bare hello-world WSGI app under each server (`make_server` of the web app, no Bottle, no "
        f"database), all up for the whole run; each endpoint measured on every server and database right "
        f"after the other, the bare app first and last; {opts.clients} keep-alive "
        f"clients on loopback (GETs: {CLIENTS[opts.client].format(n=opts.clients)}; writes: "
        f"{CLIENTS['python']}, each client POSTs a tunnel and DELETEs it"
        f"{'; then the same from wrk, POST and DELETE alternating on each connection, bench/api_writes.lua' if opts.client == 'wrk' else ''}"
        f"), session cookie, rate limits raised, "
        f"access log on; after a {opts.warmup:g} s warm-up. \"x bare\": req/s as a ratio to the bare app's "
        f"(mean of its two runs) under the same server.\n",
        "| endpoint | database | server | req/s | x bare | p50 | p99 | errors | in-app p50 / p99 | "
        "SQL queries/request (1 tunnel / 50 tunnels) | p99 < 25 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(ENDPOINTS + WRITES + (WRITE_MIX, BASELINE, "/"))
    rank = {name: i for i, name in enumerate(opts.servers)}
    backends = list(BACKENDS) + [BARE]
    seen_bare: dict[str, int] = {}
    for r in sorted(results, key=lambda r: (order.index(r.path), backends.index(r.backend), rank[r.server])):
        label = r.path if r.path in WRITES else f"GET {r.path}"
        if r.path == WRITE_MIX:
            label = "POST + DELETE /api/tunnels (wrk, alternating)"
        if r.path == "/api/tunnels":
            label += f" ({opts.tunnels} tunnels)"
        if r.path == BASELINE:
            label += " (app baseline)"
        ratio = r.rps / bare_rps(results, r.server)
        if r.backend == BARE:
            seen_bare[r.server] = seen_bare.get(r.server, 0) + 1
            label = f"bare hello-world app ({'first' if seen_bare[r.server] == 1 else 'last'} run)"
            lines.append(f"| {label} | - | {r.server} | {r.rps:,.0f} | {ratio:.2f} | {r.p50_ms:.1f} ms | "
                         f"{r.p99_ms:.1f} ms | {r.errors} | - | - | "
                         f"{'met' if r.p99_ms < TARGET_P99_MS else 'NOT met'} |")
            continue
        q1, qn = (sum(counts[r.backend].get((p, label), 0) for p in r.path.split("+")) / len(r.path.split("+"))
                  for label in ("1 tunnel", "50 tunnels"))
        a50, a99 = in_app[(r.backend, r.server, r.path)]
        lines.append(f"| {label} | {r.backend} | {r.server} | {r.rps:,.0f} | {ratio:.2f} | {r.p50_ms:.1f} ms | "
                     f"{r.p99_ms:.1f} ms | {r.errors} | {a50:.2f} / {a99:.2f} ms | {q1:g} / {qn:g} | "
                     f"{'met' if r.p99_ms < TARGET_P99_MS else 'NOT met'} |")
    if len(opts.servers) == 2:
        lines += side_by_side(results, *opts.servers)
    lines.append(f"\n{SECTION_END}\n")
    return "\n".join(lines)


def side_by_side(results: list[Result], a: str, b: str) -> list[str]:
    """One line per endpoint and database: server ``a`` against server ``b``."""
    lines = [f"\n{a} against {b}, same run:\n",
             f"| endpoint | database | req/s {a} / {b} | x bare {a} / {b} | p99 {a} / {b} |",
             "|---|---|---|---|---|"]
    by = {(r.path, r.backend, r.server): r for r in results if r.backend != BARE}
    for (path, backend, server), ra in by.items():
        rb = by.get((path, backend, b))
        if server != a or rb is None:
            continue
        label = path if path in WRITES else "POST + DELETE (wrk)" if path == WRITE_MIX else f"GET {path}"
        lines.append(f"| {label} | {backend} | {ra.rps:,.0f} / {rb.rps:,.0f} ({ra.rps / rb.rps:.2f}x) | "
                     f"{ra.rps / bare_rps(results, a):.2f} / {rb.rps / bare_rps(results, b):.2f} | "
                     f"{ra.p99_ms:.1f} / {rb.p99_ms:.1f} ms |")
    return lines


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the API section of the results file, leaving the rest alone."""
    from bench.report import write_section as write_marked
    write_marked(path, "## API", MARKER, section)


def parse_backends(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--db takes {','.join(BACKENDS)} (or one of them), not {value!r}")
    return names


@contextlib.contextmanager
def backend_database(backend: str, tmp: str):
    """The database URL for one backend ("" for the SQLite file in the data dir) and a version label."""
    if backend == "sqlite":
        import sqlite3
        yield "", f"SQLite {sqlite3.sqlite_version}"
        return
    # The tests' throwaway cluster: initdb + postgres on a free loopback port, removed at the end.
    from tests.support.postgres import PostgresCluster
    cluster = PostgresCluster.start()
    try:
        version = cluster.execute("SHOW server_version")[0][0].split()[0]
        yield cluster.new_database(), f"PostgreSQL {version}, fsync off"
    finally:
        cluster.stop()


def parse_servers(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    if not names or any(n not in SERVERS for n in names):
        raise argparse.ArgumentTypeError(f"--server takes {','.join(SERVERS)} (or one of them), not {value!r}")
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", dest="backends", type=parse_backends, default=BACKENDS,
                   help="databases to measure, side by side: sqlite,postgresql (default both)")
    p.add_argument("--server", dest="servers", type=parse_servers, default=SERVERS,
                   help="WSGI servers to measure, side by side: cheroot,waitress (default both)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per endpoint (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per endpoint (default 1)")
    p.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients (default 8)")
    p.add_argument("--tunnels", type=int, default=50, help="tunnels of the benchmark user (default 50)")
    p.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python",
                   help="load generator: wrk (default when installed) or Python threads with http.client")
    p.add_argument("--threads", type=int, default=None, help="server threads (default: the web_threads setting)")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"), help="results file (default bench/RESULTS.md)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)  # the bare app's subprocess
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    from intunnel.settings import load_settings
    opts.threads = opts.threads or load_settings(env={}).web_threads
    if opts.serve_bare:
        return serve_bare(opts.servers[0], opts.port, opts.threads)

    machine = machine_line()
    results, counts, in_app, versions = [], {}, {}, {}
    load = run_wrk if opts.client == "wrk" else run_clients

    def measure_bare() -> None:
        for server, (port, _) in bare.items():
            print(f"[api-bench] bare app, {server}", file=sys.stderr, flush=True)
            run_clients(port, "/", "", opts.clients, opts.warmup)
            results.append(dataclasses.replace(load(port, "/", "", opts.clients, opts.duration, BARE),
                                               server=server))

    with tempfile.TemporaryDirectory(prefix="intunnel-api-bench-") as tmp, contextlib.ExitStack() as stack:
        servers = {}  # (backend, server) -> (port, log path)
        for backend in opts.backends:
            url, versions[backend] = stack.enter_context(backend_database(backend, tmp))
            data_dir = os.path.join(tmp, backend)
            settings = bench_settings(data_dir, database_url=url)
            seed_database(settings, opts.tunnels)
            counts[backend] = count_queries(settings)
            for server in opts.servers:
                port, log_path = free_port(), Path(tmp) / f"web-{backend}-{server}.log"
                stack.enter_context(web_subprocess(data_dir, port, log_path, opts.threads, url, server))
                servers[backend, server] = port, log_path
        bare = {}
        for server in opts.servers:
            port, log_path = free_port(), Path(tmp) / f"bare-{server}.log"
            stack.enter_context(web_subprocess(tmp, port, log_path, opts.threads, server=server, bare=True))
            bare[server] = port, log_path
        measure_bare()
        for path in ENDPOINTS + WRITES[:1] + (BASELINE,):
            for (backend, server), (port, log_path) in servers.items():
                print(f"[api-bench] {backend} {server} {path}", file=sys.stderr, flush=True)
                if path in WRITES:
                    cookie = login_cookie("127.0.0.1", port, WRITER)
                    run_writes(port, cookie, opts.clients, opts.warmup, backend)
                    offset = log_path.stat().st_size
                    measured = run_writes(port, cookie, opts.clients, opts.duration, backend)
                    if opts.client == "wrk":
                        for r in measured:
                            in_app[(backend, server, r.path)] = in_app_latency(log_path, offset, r.path)
                        offset = log_path.stat().st_size
                        measured = [dataclasses.replace(r, server=server) for r in measured] + [
                            run_wrk_writes(port, cookie, opts.clients, opts.duration, backend, f"k{port}x")]
                else:
                    cookie = login_cookie("127.0.0.1", port, EMAIL)
                    run_clients(port, path, cookie, opts.clients, opts.warmup)
                    offset = log_path.stat().st_size
                    measured = [load(port, path, cookie, opts.clients, opts.duration, backend)]
                for r in measured:
                    results.append(dataclasses.replace(r, server=server))
                    in_app.setdefault((backend, server, r.path), in_app_latency(log_path, offset, r.path))
        measure_bare()
    section = report(results, counts, in_app, opts, machine, versions)
    print(section)
    if not opts.no_write:
        write_section(Path(opts.out), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
