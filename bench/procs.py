"""Process and port helpers for the benchmark: start, wait, measure, stop.

Everything runs on loopback; every process started here is stopped by
``stop()`` (its whole process group), also when the bench fails half-way.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A currently free loopback TCP port (small race window, fine for a bench)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.02):
    """Poll ``condition()`` until it returns a truthy value, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start(argv: list[str], log: Path, env: dict | None = None, stdin=subprocess.DEVNULL,
          pass_fds: tuple = ()) -> subprocess.Popen:
    """Start ``argv`` in its own process group with stdout+stderr going to ``log``."""
    out = open(log, "ab")
    try:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                                env=env, start_new_session=True, pass_fds=pass_fds)
    finally:
        out.close()


def socket_activated(argv: list[str], sock: socket.socket) -> list[str]:
    """``argv`` started as systemd starts a socket-activated service (sd_listen_fds(3)): ``sock``,
    a listening socket the caller keeps open across restarts as intunnel-relay.socket does, as
    fd 3, with LISTEN_FDS and LISTEN_PID naming the process.  Start it with
    ``pass_fds=(sock.fileno(),)``; the trampoline execs, so the pid it names is the program's
    (a Python one: dash's redirections stop at fd 9)."""
    fd = sock.fileno()
    move = "" if fd == 3 else f"os.dup2({fd}, 3, inheritable=True); os.close({fd}); "
    return [sys.executable, "-c", "import os, sys; " + move + "os.environ.update(LISTEN_FDS='1', "
            "LISTEN_PID=str(os.getpid())); os.execvp(sys.argv[1], sys.argv[1:])", *argv]


def stop(proc: subprocess.Popen | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Stop a process started by ``start`` and its group; SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_rss_kib(pid: int) -> int:
    """RSS of a process plus all its descendants, in KiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            total += status_kib(p, "VmRSS")
        except (OSError, KeyError):
            pass
    return total


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children, e.g. wrk."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its live descendants."""
    ticks = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time each named process tree uses from now on, and this process's waited-for children
    (the load generators, as ``"wrk"``): ``per_request(n)`` gives microseconds per request."""

    def __init__(self, sides: dict[str, int]):
        self.sides = dict(sides)
        self.before = {side: tree_cpu_seconds(pid) for side, pid in self.sides.items()}
        self.before_children = children_cpu_seconds()

    def used(self) -> dict[str, float]:
        used = {side: tree_cpu_seconds(pid) - self.before[side] for side, pid in self.sides.items()}
        used["wrk"] = children_cpu_seconds() - self.before_children  # the load generator: same cores
        return used

    def per_request(self, requests: int) -> dict[str, float]:
        return {side: 1e6 * cpu / max(1, requests) for side, cpu in self.used().items()}


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat): busy is
    everything but idle and iowait, whoever ran it."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - fields[3] - fields[4]) / tick, total / tick
