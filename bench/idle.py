"""Idle memory and restart figures (issue 17), without wrk or nginx:

    .venv/bin/python -m bench.idle                  # 1,000 agents, 3 restarts; about a minute; updates
                                                    # the "Idle memory and restart" section of bench/RESULTS.md
    .venv/bin/python -m bench.idle --agents 200 --restarts 1 --no-write
    .venv/bin/python -m bench.idle --json new.json --before old.json   # a before column (old.json: the
                                                    # other tree's own --json run, e.g. from a git worktree)

- **relay RSS**: ``VmRSS`` of the relay process as systemd starts it (the ``intunnel``
  console script, ``intunnel relay``; not ``serve``, which also carries the web app), with one
  tunnel connected and idle, a second after the tunnel first served;
- **client RSS**: the light client as a user installs it (``pip install intunnel``: the
  standard library only, so no uvloop): this checkout's sources run by a fresh virtualenv's
  Python that has no site-packages of its own, default options (the inspector on);
- **relay memory per idle agent**: relay ``VmRSS`` growth with ``--agents`` real idle agents
  connected (bench/agents.py: control channel plus warm data pool each), divided by their number;
- **restart**: SIGTERM the relay with every agent connected, start a new one and time, from its
  start, until it listens, until the light client's tunnel serves again, and until every agent
  is back (``/_intunnel/healthz``'s count).  As deployed, the port is held across the restart
  (this process keeps the listening socket, as intunnel-relay.socket does: what connects meanwhile
  waits in its backlog); ``--no-socket-activation`` lets each relay bind it itself (a tree from
  before the socket unit needs it).

Everything runs on loopback ports chosen at run time, files in a temporary directory (in
``/dev/shm`` when there is one); every process started here is stopped at the end.  RSS is
robust against other load on the machine; the restart times are not (they include CPU the
new relay and 1,000 reconnecting agents need): repeat with ``--restarts``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import agents, procs, stack


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def start_app() -> http.server.ThreadingHTTPServer:
    """The local app: answers 200 "ok" (what the tunnel forwards to)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def console_script(name: str = "intunnel") -> list[str]:
    """How systemd runs the relay: the venv's console script (``python -m intunnel.cli`` if absent)."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", "intunnel.cli"]


def light_python(home: Path) -> str:
    """A Python with the standard library only: a fresh virtualenv (no pip) of this interpreter."""
    venv = home / "light-venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, capture_output=True)
    return str(venv / "bin" / "python")


def light_client(st: stack.Stack, python: str, local_port: int, token: str, *extra: str) -> subprocess.Popen:
    """``intunnel http PORT`` as the light client's console script runs it."""
    argv = [python, "-c", "import sys; from intunnel.cli import main; sys.exit(main())",
            "http", str(local_port), "--server", st.relay_url, "--token", token, *extra]
    env = {**st.env, "PYTHONPATH": str(stack.REPO)}   # the sources only: no site-packages beside them
    proc = procs.start(argv, st.home / f"light-client{'-'.join(('',) + extra)}.log", env=env)
    st.clients.append(proc)
    return proc


def floor_mib(python: str, modules: str) -> float:
    """RSS of ``python`` having imported ``modules`` (and nothing of ours): what any program on
    that interpreter and those libraries starts from."""
    code = f"import sys, {modules}; print('ready', flush=True); sys.stdin.read()"
    with subprocess.Popen([python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        try:
            proc.stdout.readline()
            return rss_mib(proc.pid)
        finally:
            proc.stdin.close()


def rss_mib(pid: int) -> float:
    return procs.status_kib(pid, "VmRSS") / 1024


def healthz_agents(st: stack.Stack) -> int:
    try:
        status, _, body = stack.http_request(st.relay_port, f"{st.domain}:{st.relay_port}", "/_intunnel/healthz",
                                             timeout=1)
    except (OSError, ValueError):
        return -1
    return int(json.loads(body)["agents"]) if status == 200 else -1


def serves(st: stack.Stack, host: str) -> bool:
    try:
        return stack.http_request(st.relay_port, host, "/", timeout=1)[0] == 200
    except (OSError, ValueError):
        return False


def restart(st: stack.Stack, host: str, expected: int, timeout: float = 60, swarm_pid: int | None = None) -> dict[str, float]:
    """Stop the relay gracefully (``stop_s``: SIGTERM to its exit), start a new one; seconds from
    its start to listening, to the light client's tunnel serving, and to ``expected`` agents connected
    (``relay_cpu_s``: the CPU seconds the new relay had used by then, its start-up included)."""
    stopping = time.monotonic()
    swarm_cpu = procs.tree_cpu_seconds(swarm_pid) if swarm_pid else 0.0
    st.stop_relay()
    start = time.monotonic()
    st.launch_relay()
    marks: dict[str, float] = {"stop_s": start - stopping}
    deadline = start + timeout
    while len(marks) < 6 and time.monotonic() < deadline:
        if st.relay.poll() is not None:
            raise RuntimeError(f"relay exited with {st.relay.returncode}: {st.logs()}")
        count = healthz_agents(st)
        now = time.monotonic() - start
        if count >= 0:
            marks.setdefault("listening_s", now)
        if "serving_s" not in marks and count >= 1 and serves(st, host):
            marks.setdefault("serving_s", time.monotonic() - start)
        if count >= expected and "all_agents_s" not in marks:
            marks["all_agents_s"] = now
            marks["relay_cpu_s"] = procs.tree_cpu_seconds(st.relay.pid)  # its start-up included
            marks["down_s"] = marks["stop_s"] + now
            if swarm_pid:   # the 1,000 agents' own CPU (one process, on the relay's cores) from the SIGTERM
                marks["agents_cpu_s"] = procs.tree_cpu_seconds(swarm_pid) - swarm_cpu
        time.sleep(0.005)
    if len(marks) < 6:
        raise TimeoutError(f"after {timeout:.0f}s only {marks} (agents {healthz_agents(st)}/{expected})")
    return marks


def measure(home: Path, count: int, restarts: int, log=print, activation: bool = True,
            settings: dict | None = None) -> dict:
    app = start_app()
    figures: dict = {"socket_activation": activation}
    try:
        with stack.Stack(home, settings=settings) as st:
            st.intunnel = console_script()
            if activation:   # as deployed: intunnel-relay.socket holds the port across restarts
                st.hold_relay_port()
            token = st.add_tunnel("idle-one", app.server_port)
            st.close_db()
            st.start_relay()
            python = light_python(home)
            client = light_client(st, python, app.server_port, token)
            host = st.public_host("idle-one")
            st.wait_serving(st.relay_port, host, "/", watch=client)
            time.sleep(1)  # let start-up garbage settle; a bench figure, not a test assertion
            figures["relay_rss_mib"] = rss_mib(st.relay.pid)
            figures["client_rss_mib"] = rss_mib(client.pid)
            procs.stop(client)   # the same without the inspector (on by default), for what it costs
            bare = light_client(st, python, app.server_port, token, "--no-inspect")
            st.wait_serving(st.relay_port, host, "/", watch=bare)
            time.sleep(1)
            figures["client_no_inspect_rss_mib"] = rss_mib(bare.pid)
            # What the interpreters start from: the relay's with asyncio, uvloop and sqlite3; the
            # light client's with asyncio (which imports ssl: OpenSSL's libraries alone are ~4.5 MiB).
            figures["relay_floor_mib"] = floor_mib(sys.executable, "asyncio, uvloop, sqlite3")
            figures["client_floor_mib"] = floor_mib(python, "asyncio")
            log(f"idle RSS: relay {figures['relay_rss_mib']:.1f} MiB (its interpreter with asyncio, uvloop and "
                f"sqlite3: {figures['relay_floor_mib']:.1f}), light client {figures['client_rss_mib']:.1f} MiB "
                f"({figures['client_no_inspect_rss_mib']:.1f} with --no-inspect; its interpreter with asyncio: "
                f"{figures['client_floor_mib']:.1f})")
            if count:
                tokens = st.add_many_tunnels("idle", count, app.server_port)
                st.close_db()
                before = procs.status_kib(st.relay.pid, "VmRSS")
                swarm = agents.start_swarm(st, tokens)
                try:
                    procs.wait_until(lambda: swarm.poll() is not None or healthz_agents(st) >= count + 1,
                                     180, f"{count} agents to connect", interval=0.1)
                    if swarm.poll() is not None:
                        raise RuntimeError("agent swarm exited early: " + st.logs()[-2000:])
                    after = agents.wait_settled(st.relay.pid)
                    figures["relay_rss_agents_mib"] = after / 1024
                    figures["kib_per_agent"] = (after - before) / count
                    log(f"relay RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB with {count} idle agents "
                        f"({figures['kib_per_agent']:.1f} KiB each)")
                    runs = []
                    for i in range(restarts):
                        marks = restart(st, host, count + 1, swarm_pid=swarm.pid)
                        runs.append(marks)
                        log(f"restart {i + 1}: old relay stopped in {marks['stop_s']:.2f} s; new one listening {marks['listening_s']:.2f} s, tunnel serving "
                            f"{marks['serving_s']:.2f} s, all {count + 1} agents back {marks['all_agents_s']:.2f} s "
                            f"(the relay's CPU by then: {marks['relay_cpu_s']:.2f} s, the agents' {marks.get('agents_cpu_s', 0):.2f} s)")
                    figures["restarts"] = runs
                finally:
                    procs.stop(swarm)
    finally:
        app.shutdown()
    return figures


HEADING, MARKER = "## Idle memory and restart (issue 17)", "idle-bench"
# (figure, unit, key, issue 17's limit or None); restart keys are the median over the restarts
ROWS = [("relay RSS, one tunnel idle", "MiB", "relay_rss_mib", 25),
        ("  its interpreter with asyncio, uvloop, sqlite3 (floor)", "MiB", "relay_floor_mib", None),
        ("light client RSS, one tunnel idle", "MiB", "client_rss_mib", 15),
        ("  the same with --no-inspect", "MiB", "client_no_inspect_rss_mib", None),
        ("  its interpreter with asyncio (floor)", "MiB", "client_floor_mib", None),
        ("relay memory per idle agent", "KiB", "kib_per_agent", 24),
        ("old relay: SIGTERM to exit", "s", "stop_s", None),
        ("new relay: start to listening", "s", "listening_s", None),
        ("new relay: start to the tunnel serving", "s", "serving_s", 1),
        ("new relay: start to every agent back", "s", "all_agents_s", 1),
        ("new relay: its CPU until every agent is back", "s", "relay_cpu_s", None),
        ("SIGTERM to every agent back (old relay's stop included)", "s", "down_s", None),
        ("the agents' process: its CPU from the SIGTERM until all are back", "s", "agents_cpu_s", None)]


def value(figures: dict, key: str) -> float | None:
    if key in figures:
        return figures[key]
    runs = [run[key] for run in figures.get("restarts", ()) if key in run]
    return statistics.median(runs) if runs else None


def spread(figures: dict, key: str) -> str:
    runs = [run[key] for run in figures.get("restarts", ()) if key in run]
    return f" ({min(runs):.2f}-{max(runs):.2f})" if len(runs) > 1 else ""


def section(figures: dict, count: int, before: dict | None = None, note: str = "") -> str:
    """The results file's section: the figures (``before``'s beside them) and the targets."""
    load = os.getloadavg()[0]
    head = "| figure | unit | " + ("before | after |" if before else "value |") + " issue 17 |"
    lines = [HEADING, "", f"<!-- {MARKER} -->",
             f"`python -m bench.idle --agents {count}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"load average {load:.1f} at the end (restart times: median and range of the restarts; RSS barely "
             f"moves with load, times do); the relay's port "
             + ("held across restarts as intunnel-relay.socket holds it" if figures.get("socket_activation", False)
                else "bound by each relay itself") + (f" (before: {'held' if before.get('socket_activation') else 'bound by each relay'})" if before else "")
             + f".{(' ' + note) if note else ''}", "", head,
             "|---|---|" + ("---|---|" if before else "---|") + "---|"]
    for label, unit, key, limit in ROWS:
        cells = []
        for figs in ([before] if before else []) + [figures]:
            v = value(figs, key)
            cells.append("n/a" if v is None else f"{v:.2f}{spread(figs, key)}" if unit == "s" else f"{v:.1f}")
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + f" | {'-' if limit is None else f'<= {limit}'} |")
    lines.append("")
    for label, unit, key, limit in ROWS:
        v = value(figures, key)
        if limit is not None and v is not None:
            lines.append(f"- {label} <= {limit} {unit}: {v:.2f} -> **{'met' if v <= limit else 'NOT met'}**")
    lines += [f"<!-- /{MARKER} -->", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=1000, help="idle agents for the per-agent figure (0: skip)")
    ap.add_argument("--restarts", type=int, default=3, help="relay restarts with the agents connected")
    ap.add_argument("--no-socket-activation", dest="socket_activation", action="store_false",
                    help="each relay binds relay_listen itself (a relay started without intunnel-relay.socket, "
                         "or a tree before it)")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a relay setting (repeatable), e.g. relay_agent_pool=2")
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    ap.add_argument("--before", metavar="FILE", help="figures of another tree (its --json) for a before column")
    ap.add_argument("--note", default="", help="a sentence for the section (e.g. what 'before' is)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section instead of updating --out")
    args = ap.parse_args(argv)
    try:
        settings = dict(stack.parse_setting(s) for s in args.setting)
    except ValueError as e:
        ap.error(str(e))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    home = Path(tempfile.mkdtemp(prefix="intunnel-idle-", dir=base))
    try:
        figures = measure(home, args.agents, args.restarts, activation=args.socket_activation, settings=settings)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures))
    before = json.loads(Path(args.before).read_text()) if args.before else None
    text = section(figures, args.agents, before, args.note)
    if args.no_write:
        print(text)
    else:
        from .report import write_section
        write_section(Path(args.out), HEADING, MARKER, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
