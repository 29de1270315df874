"""Tunnel benchmark: direct, nginx-hop, ssh -R (-N and -tt), intunnel-tcp (a TCP tunnel), intunnel (its inspector on, the
default, and off: intunnel-no-inspect), intunnel-nginx, python-2hop (the floor of any Python relay and client:
bench/forwarder.py).

    .venv/bin/python -m bench.tunnel                 # everything, ~4 minutes
    .venv/bin/python -m bench.tunnel --quick         # shorter runs, fewer agents
    .venv/bin/python -m bench.tunnel --only direct,intunnel --no-write

Prints a table (each figure as a ratio to ``direct`` and to ``ssh -R -tt``)
and the issue's targets, and writes them to bench/RESULTS.md.  Loopback only;
every run is bounded in time; every process started here is stopped at exit.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import load, procs, report, servers, stack

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_tools(tools=("wrk", "nginx", "sshd", "ssh", "ssh-keygen", "openssl")) -> None:
    """wrk is a bench-only tool: install it from Debian when it is missing."""
    if shutil.which("wrk") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk (apt-get)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        if shutil.which("wrk") is None:
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit("bench: missing tools: " + ", ".join(missing))


def serving(port: int, host: str, tls: bool = False) -> bool:
    """True when GET /1k through ``port`` answers 200 with the 1 KiB body."""
    try:
        elapsed, n = load.download_once(port, "/1k", host, tls)
        return n == servers.SMALL_BODY
    except (OSError, RuntimeError, ValueError, KeyError):
        return False


DIRECT_HOST = "direct"  # Host header for the paired direct runs (nginx ignores it)


def wrk_with_cpu(url: str, host: str, opts, close: bool, sides: dict[str, int], paired_url: str | None = None):
    """Best of --repeat wrk runs, with the CPU microseconds per request each side spent in it.

    With ``paired_url`` (the local app), a direct run precedes each run of the
    target and the best direct run is returned too: ratios then compare runs
    made within seconds of each other, so load that comes and goes elsewhere on
    the machine moves both alike.
    """
    best = best_direct = None
    for _ in range(opts.repeat):
        if paired_url:
            direct = load.wrk(paired_url, DIRECT_HOST, 32, opts.duration, close=close)
            if best_direct is None or direct.rps > best_direct.rps:
                best_direct = direct
        meter = procs.CpuMeter(sides)
        result = load.wrk(url, host, 32, opts.duration, close=close)
        per_request = meter.per_request(result.requests)
        # Best of --repeat runs: other work on a shared machine only ever makes a run slower.
        if best is None or result.rps > best[0].rps:
            best = (result, per_request)
    return best[0], best[1], best_direct


def route_buckets(metrics_port: int) -> list[tuple[float, float]]:
    """The relay's ``intunnel_relay_route_seconds`` histogram now: (upper bound, cumulative count)."""
    for family in stack.metric_families(metrics_port):
        if family.name == "intunnel_relay_route_seconds":
            return sorted((float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket"))
    raise RuntimeError("the relay's metrics have no intunnel_relay_route_seconds")


def histogram_quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The q-quantile (seconds) of what was observed between two scrapes, interpolated inside its
    bucket as Prometheus' ``histogram_quantile`` does (so only as fine as the buckets)."""
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = bound, cumulative
    return lower


def measure_http(name: str, port: int, host: str, opts, tls: bool = False,
                 sides: dict[str, int] | None = None, app: servers.App | None = None,
                 metrics_port: int | None = None, bulk: bool = True) -> dict:
    """The traffic figures for one target: keep-alive, new connections, bulk both ways
    (not with ``bulk`` False).

    ``sides`` names the processes of the tunnel ("relay", "client" -> pid) whose
    CPU time per request is reported too.  With ``app``, every measurement is
    paired with one of the app directly, stored under "paired_direct".  With
    ``metrics_port`` (the relay's /metrics), the relay's own route latency during
    the new-connection runs is reported too (a new connection is where the route
    lookup happens; keep-alive requests mostly stay on their upstream).
    """
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}/1k"
    paired_url = f"http://127.0.0.1:{app.port}/1k" if app else None
    sides = sides or {}
    out: dict = {}
    paired: dict[str, float] = {}
    load.wrk(url, host, 32, 1)  # warm-up: connections, pools, caches
    ka, ka_cpu, ka_direct = wrk_with_cpu(url, host, opts, False, sides, paired_url)
    log(f"{name}: keep-alive {ka.rps:,.0f} req/s p50 {ka.p50_ms:.3f} ms p99 {ka.p99_ms:.2f} ms errors {ka.errors}"
        + "".join(f", {side} {us:.0f} us CPU/req" for side, us in ka_cpu.items())
        + (f" (direct alongside: {ka_direct.rps:,.0f} req/s, p99 {ka_direct.p99_ms:.2f} ms)" if ka_direct else ""))
    out.update(ka_rps=ka.rps, ka_p50=ka.p50_ms, ka_p99=ka.p99_ms)
    route_before = route_buckets(metrics_port) if metrics_port else None
    cl, cl_cpu, cl_direct = wrk_with_cpu(url, host, opts, True, sides, paired_url)
    log(f"{name}: new connection per request {cl.rps:,.0f} req/s p50 {cl.p50_ms:.3f} ms p99 {cl.p99_ms:.2f} ms "
        f"errors {cl.errors}"
        + "".join(f", {side} {us:.0f} us CPU/req" for side, us in cl_cpu.items())
        + (f" (direct alongside: {cl_direct.rps:,.0f} req/s)" if cl_direct else ""))
    out.update(close_rps=cl.rps, close_p50=cl.p50_ms, close_p99=cl.p99_ms)
    if metrics_port:
        route_after = route_buckets(metrics_port)
        out["route_p50_ms"], out["route_p99_ms"] = (
            1000 * histogram_quantile(q, route_before, route_after) for q in (0.5, 0.99))
        log(f"{name}: relay route latency (intunnel_relay_route_seconds, new connections, "
            f"{route_after[-1][1] - route_before[-1][1]:.0f} requests) p50 {out['route_p50_ms']:.3f} ms "
            f"p99 {out['route_p99_ms']:.3f} ms")
    if app:
        paired.update(ka_rps=ka_direct.rps, ka_p50=ka_direct.p50_ms, ka_p99=ka_direct.p99_ms,
                      close_rps=cl_direct.rps, close_p50=cl_direct.p50_ms, close_p99=cl_direct.p99_ms)
    for side in ka_cpu:
        out[f"{side}_us_ka"] = ka_cpu[side]
        out[f"{side}_us_close"] = cl_cpu[side]
    # Every process in the path plus wrk: with all of them on the same cores, this is
    # what a keep-alive request costs the machine (the budget a ratio to direct allows).
    out["total_us_ka"] = sum(ka_cpu.values())
    for run, what in ((ka, "keep-alive"), (cl, "new-connection")):
        if run.errors:
            log(f"{name}: WARNING {run.errors} errors in the {what} run")
    transfers = (("down_mbs", lambda p, h, t: load.download_once(p, "/64m", h, t)),
                 ("up_mbs", lambda p, h, t: load.upload_once(p, "/dav/up.bin", h, servers.BULK_BODY, t)))
    if not bulk:
        if app:
            out["paired_direct"] = paired
        return out
    for key, transfer in transfers:
        if app:
            paired[key] = load.best_rate(lambda: transfer(app.port, DIRECT_HOST, False), opts.bulk_seconds / 2)
        out[key] = load.best_rate(lambda: transfer(port, host, tls), opts.bulk_seconds)
    log(f"{name}: 64 MiB download {out['down_mbs']:,.0f} MB/s, upload {out['up_mbs']:,.0f} MB/s"
        + (f" (direct alongside: {paired['down_mbs']:,.0f} / {paired['up_mbs']:,.0f} MB/s)" if app else ""))
    if app:
        out["paired_direct"] = paired
    return out


def run_ssh(results, work: Path, app: servers.App, opts) -> None:
    sshd = servers.start_sshd(work / "sshd")
    try:
        for name, interactive in (("ssh-R -N", False), ("ssh-R -tt", True)):
            if not opts.wants(name):
                continue
            remote = procs.free_port()
            ssh = servers.ssh_forward(sshd, remote, app.port, interactive, work / f"{name.replace(' ', '')}.log")
            try:
                procs.wait_until(lambda: ssh.poll() is not None or serving(remote, f"127.0.0.1:{remote}"),
                                 15, f"{name} forwarding")
                if ssh.poll() is not None:
                    raise RuntimeError(f"{name} exited")
                # Memory: the sshd listener and its session processes / the ssh client.
                figures = {"relay_rss": procs.tree_rss_kib(sshd.proc.pid) / 1024,
                           "client_rss": procs.status_kib(ssh.pid, "VmRSS") / 1024}
                figures.update(measure_http(name, remote, f"127.0.0.1:{remote}", opts,
                                            sides={"relay": sshd.proc.pid, "client": ssh.pid}, app=app))
                results[name] = figures
            finally:
                procs.stop(ssh)
    finally:
        procs.stop(sshd.proc)


def idle_rss(st: stack.Stack, client) -> dict[str, float]:
    """RSS of the relay and the client once the tunnel serves and both are idle."""
    time.sleep(1)  # let start-up garbage settle; a bench figure, not a test assertion
    return {"relay_rss": procs.status_kib(st.relay.pid, "VmRSS") / 1024,
            "client_rss": procs.status_kib(client.pid, "VmRSS") / 1024}


def kib_per_idle_agent(st: stack.Stack, app: servers.App, count: int) -> float | None:
    """Relay RSS growth per connected idle agent (control channel + warm data pool each)."""
    from . import agents
    tokens = st.add_many_tunnels("idle", count, app.port)
    before_agents = st.agents()
    before = procs.status_kib(st.relay.pid, "VmRSS")
    swarm = agents.start_swarm(st, tokens)
    try:
        procs.wait_until(lambda: swarm.poll() is not None or st.agents() >= before_agents + count,
                         120, f"{count} agents to connect")
        if swarm.poll() is not None:
            log("agent swarm exited early: " + st.logs()[-2000:])
            return None
        agents.wait_settled(st.relay.pid)
        after = procs.status_kib(st.relay.pid, "VmRSS")
    finally:
        procs.stop(swarm)
    per_agent = (after - before) / count
    log(f"intunnel: relay RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB with {count} idle agents "
        f"({per_agent:.1f} KiB each)")
    procs.wait_until(lambda: st.agents() <= before_agents, 60, "the idle agents to be dropped")
    return per_agent


def restart_time(st: stack.Stack, host: str) -> float:
    """Seconds from starting a new relay (after a graceful stop) until the tunnel serves /1k again."""
    st.stop_relay()
    start = time.monotonic()
    st.start_relay()
    procs.wait_until(lambda: serving(st.relay_port, host), 30, "the tunnel to serve after the restart",
                     interval=0.01)
    elapsed = time.monotonic() - start
    log(f"intunnel: serving again {elapsed:.2f} s after the relay restart")
    return elapsed


def profile(st: stack.Stack, client, host: str, opts) -> None:
    """py-spy the relay and the client during a keep-alive and a new-connection run (collapsed stacks)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log("--profile needs py-spy (pip install py-spy); skipped")
        return
    out = Path(opts.profile)
    out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{st.relay_port}/1k"
    for mode, close in (("keepalive", False), ("newconn", True)):
        spies = [procs.start([spy, "record", "--pid", str(pid), "--duration", str(int(opts.duration) + 1),
                              "--rate", "250", "--format", "raw", "--nonblocking",
                              "-o", str(out / f"{name}-{mode}.txt")], out / f"py-spy-{name}-{mode}.log")
                 for name, pid in (("relay", st.relay.pid), ("client", client.pid))]
        load.wrk(url, host, 32, opts.duration, close=close)
        for proc in spies:
            proc.wait(opts.duration + 30)
    log(f"profiles (collapsed stacks, for flamegraph.pl or speedscope) in {out}")


def run_intunnel(results, work: Path, app: servers.App, front: servers.Front | None, relay_port: int, opts) -> None:
    if opts.wants("intunnel"):
        metrics_port = procs.free_port()
        with stack.Stack(work / "intunnel", relay_port, uvloop=opts.uvloop,
                         settings={"relay_metrics_listen": f"127.0.0.1:{metrics_port}"}) as st:
            token = st.add_tunnel("bench", app.port)
            st.start_relay()
            client = st.start_client(app.port, token)
            host = st.public_host("bench")
            st.wait_serving(relay_port, host, "/1k", watch=client)
            figures = idle_rss(st, client)
            figures.update(measure_http("intunnel", relay_port, host, opts,
                                        sides={"relay": st.relay.pid, "client": client.pid,
                                               "app": app.proc.pid}, app=app, metrics_port=metrics_port))
            if opts.profile:
                profile(st, client, host, opts)
            if opts.wants("intunnel-no-inspect"):
                # The same stack, the client again without its inspector (issue 15: what the
                # default costs against --no-inspect, in one run).
                procs.stop(client)
                client = st.start_client(app.port, token, extra=["--no-inspect"])
                st.wait_serving(relay_port, host, "/1k", watch=client)
                results["intunnel-no-inspect"] = measure_http(
                    "intunnel-no-inspect", relay_port, host, opts, app=app, bulk=False,
                    sides={"relay": st.relay.pid, "client": client.pid, "app": app.proc.pid})
            if opts.agents:
                figures["kib_per_agent"] = kib_per_idle_agent(st, app, opts.agents)
            figures["restart_s"] = restart_time(st, host)
            results["intunnel"] = figures
    if front is not None and opts.wants("intunnel-nginx"):
        # Set up as deployed: the relay trusts the proxy in front (and follows every response,
        # so nginx's keep-alive connections can move between tunnels).
        with stack.Stack(work / "intunnel-nginx", relay_port, uvloop=opts.uvloop,
                         settings={"relay_trust_proxy": True, "relay_metrics_listen": ""}) as st:
            token = st.add_tunnel("benchtls", app.port)
            st.start_relay()
            client = st.start_client(app.port, token, server=f"https://localhost:{front.tls_port}",
                                     extra=["--insecure"])
            host = f"benchtls.localhost:{front.tls_port}"
            st.wait_serving(front.tls_port, host, "/1k", tls=True, watch=client)
            results["intunnel-nginx"] = measure_http("intunnel-nginx", front.tls_port, host, opts, tls=True,
                                                     sides={"relay": st.relay.pid, "client": client.pid,
                                                            "front": front.proc.pid, "app": app.proc.pid}, app=app)


def run_intunnel_tcp(results, work: Path, app: servers.App, opts) -> None:
    """A TCP tunnel (issue 16): `intunnel tcp` to the app, wrk at the tunnel's public port. The relay
    parses nothing on this path: each connection is one data connection spliced raw."""
    port = procs.free_port()
    with stack.Stack(work / "intunnel-tcp", settings={"relay_tcp_ports": f"{port}-{port}",
                                                      "relay_tcp_listen_host": "127.0.0.1",
                                                      "relay_metrics_listen": ""}, uvloop=opts.uvloop) as st:
        token, remote = st.add_tcp_tunnel("benchtcp", app.port)
        st.start_relay()
        client = st.start_client(app.port, token, kind="tcp")
        host = f"127.0.0.1:{remote}"
        st.wait_serving(remote, host, "/1k", watch=client)
        figures = idle_rss(st, client)
        figures.update(measure_http("intunnel-tcp", remote, host, opts, app=app,
                                    sides={"relay": st.relay.pid, "client": client.pid, "app": app.proc.pid}))
        results["intunnel-tcp"] = figures


def run_python_2hop(results, work: Path, app: servers.App, opts) -> None:
    """The floor of a Python relay and client (bench/forwarder.py): two forwarders that parse
    nothing, chained where the relay and the client sit, wrk at the first.  What they cost per
    request is spent before any work of InTunnel's own (routing, framing, safety)."""
    second_port, first_port = procs.free_port(), procs.free_port()
    hops = []
    try:
        for name, listen, to in (("client", second_port, app.port), ("relay", first_port, second_port)):
            hops.append(procs.start([sys.executable, "-m", "bench.forwarder", "--listen", f"127.0.0.1:{listen}",
                                     "--to", f"127.0.0.1:{to}"], work / f"python-2hop-{name}.log",
                                    env={**os.environ, "PYTHONPATH": str(REPO)}))
        host = f"127.0.0.1:{first_port}"
        procs.wait_until(lambda: any(h.poll() is not None for h in hops) or serving(first_port, host), 15,
                         "the Python forwarders")
        if any(h.poll() is not None for h in hops):
            raise RuntimeError("a Python forwarder exited")
        figures = {"relay_rss": procs.status_kib(hops[1].pid, "VmRSS") / 1024,
                   "client_rss": procs.status_kib(hops[0].pid, "VmRSS") / 1024}
        figures.update(measure_http("python-2hop", first_port, host, opts, app=app,
                                    sides={"relay": hops[1].pid, "client": hops[0].pid, "app": app.proc.pid}))
        results["python-2hop"] = figures
    finally:
        for hop in hops:
            procs.stop(hop)


def machine_line() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {nginx}, {ssh}")


def write_results(path: Path, text: str, opts) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = (f"# Tunnel benchmark results\n\nLatest run: {stamp}, `python -m bench.tunnel"
            f"{' ' + ' '.join(opts.argv) if opts.argv else ''}`.\n\nMachine: {machine_line()}\n\n{text}\n")
    notes = HERE / "NOTES.md"
    if notes.exists():
        body += "\n" + notes.read_text()
    # Keep the other benches' sections (bench/api_bench.py, bench/relays.py write them between markers).
    if path.exists():
        for section in report.marked_sections(path.read_text()):
            body += "\n" + section
    path.write_text(body)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.tunnel", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4, help="seconds of each wrk run (default 4)")
    p.add_argument("--repeat", type=int, default=2, help="wrk runs per figure, the best counts (default 2)")
    p.add_argument("--bulk-seconds", type=float, default=2, help="seconds of repeated 64 MiB transfers per direction")
    p.add_argument("--agents", type=int, default=1000, help="idle agents for the per-agent memory figure (0: skip)")
    p.add_argument("--only", default="", help="comma-separated targets: " + ",".join(report.TARGET_ORDER))
    p.add_argument("--quick", action="store_true", help="2 s runs, 1 s bulk, 200 agents")
    p.add_argument("--app-workers", type=int, default=1, help="nginx workers of the local app (default 1)")
    p.add_argument("--uvloop", action="store_true",
                   help="experiment: run relay and client on uvloop (the [server] or [fast] extra)")
    p.add_argument("--profile", metavar="DIR", help="also py-spy relay and client under load, stacks to DIR")
    p.add_argument("--front-workers", default="1",
                   help="nginx workers of the hop / TLS front: a number or auto (default 1)")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"), help="results file (default bench/RESULTS.md)")
    p.add_argument("--no-write", action="store_true", help="print only, don't write the results file")
    opts = p.parse_args(argv)
    opts.argv = list(argv)
    if opts.quick:
        opts.duration, opts.bulk_seconds, opts.repeat, opts.agents = 2, 1, 1, min(opts.agents, 200)
    wanted = {t.strip() for t in opts.only.split(",") if t.strip()}
    unknown = wanted - set(report.TARGET_ORDER)
    if unknown:
        p.error("unknown target(s): " + ", ".join(sorted(unknown)))
    opts.wants = lambda name: not wanted or name in wanted or name == "direct"
    return opts


def main(argv=None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    ensure_tools()
    results: dict[str, dict[str, float]] = {}
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # bodies in RAM, not on disk
    with tempfile.TemporaryDirectory(prefix="intunnel-bench-", dir=base) as tmp:
        work = Path(tmp)
        app = servers.start_app(work / "app", opts.app_workers)
        front = None
        try:
            log(f"local app (nginx) on 127.0.0.1:{app.port}")
            results["direct"] = measure_http("direct", app.port, f"127.0.0.1:{app.port}", opts,
                                             sides={"app": app.proc.pid})
            relay_port = procs.free_port()
            front = servers.start_front(work / "front", app.port, relay_port, opts.front_workers)
            if opts.wants("nginx-hop"):
                results["nginx-hop"] = measure_http("nginx-hop", front.hop_port, f"127.0.0.1:{front.hop_port}", opts,
                                                    sides={"relay": front.proc.pid, "app": app.proc.pid}, app=app)
            if opts.wants("ssh-R -N") or opts.wants("ssh-R -tt"):
                run_ssh(results, work, app, opts)
            if opts.wants("intunnel") or opts.wants("intunnel-nginx"):
                run_intunnel(results, work, app, front, relay_port, opts)
            if opts.wants("intunnel-tcp"):
                run_intunnel_tcp(results, work, app, opts)
            if opts.wants("python-2hop"):
                run_python_2hop(results, work, app, opts)
            if len(results) > 1:
                # direct once more at the end, best of both: other load on the machine must not
                # lower the baseline and so flatter every ratio.
                again = measure_http("direct (again)", app.port, f"127.0.0.1:{app.port}", opts,
                                     sides={"app": app.proc.pid})
                results["direct"] = report.best_of(results["direct"], again)
        finally:
            procs.stop(front.proc if front else None)
            procs.stop(app.proc)
    text = ("Each cell: value (ratio to `direct` / ratio to `ssh-R -tt`).\n\n" + report.table(results)
            + "\n\n## Targets (issue 3)\n\n" + report.targets_report(results))
    print(text)
    if not opts.no_write:
        write_results(Path(opts.out), text, opts)
        log(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
