"""Several relays: a visitor forwarded by the relay without the agent to the one holding it, against
the direct path, and aggregate keep-alive req/s with one, two and three relays.

    .venv/bin/python -m bench.relays                 # about 2 minutes; writes the "Several relays" section of bench/RESULTS.md
    .venv/bin/python -m bench.relays --quick --no-write

One throwaway PostgreSQL cluster for the run (``tests/support/postgres.py``, as bench.api_bench
starts it), shared by real ``intunnel relay`` subprocesses (bench.stack: each its own config with
the same database_url, its own relay_id, relay_listen, peer listener and metrics listener, one
peer secret file for all), real ``intunnel http`` clients and the bench's local app
(bench.servers).  The load is bench.tunnel's: wrk, 1 KiB GET, 32 connections, keep-alive and a new
connection per request.

* Paths, side by side: ``direct app`` (wrk -> app), ``direct`` (wrk -> relay A, which holds the
  agent -> client -> app) and ``forwarded`` (wrk -> relay B -> relay A -> client -> app).  Each
  round runs the three one after the other; each figure is the best of --repeat rounds.  The CPU
  time of every process (/proc/PID/stat utime+stime, and wrk's) is divided by the requests.
* Aggregate: N = 1, 2, 3 relays, each with its own tunnel and client; the 32 connections split
  evenly over N wrk processes run at once, each at its own relay's own tunnel (no forwarding).
  All relays share this machine's cores, so this shows the cost of more relays, not scale-out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import load, procs, report, servers, stack
from .api_bench import backend_database, machine_line
from .tunnel import DIRECT_HOST, ensure_tools, log, serving

HERE = Path(__file__).resolve().parent
HEADING, MARKER = "## Several relays", "relays-bench"
CONNECTIONS = 32
PATHS = ("direct app", "direct", "forwarded")
MODES = (("ka", "keep-alive", False), ("close", "new connection", True))
SIDES = ("relay A", "relay B", "client", "app", "wrk")  # the processes of the paths' CPU table


# --- the relays ---------------------------------------------------------------------------

def relay_stack(work: Path, name: str, database_url: str, secret: Path) -> stack.Stack:
    """One relay's data dir and config: the shared database and secret, its own id and listeners."""
    return stack.Stack(work / f"relay-{name}", settings={
        "database_url": database_url, "relay_id": f"relay-{name}",
        "relay_peer_listen": f"127.0.0.1:{procs.free_port()}", "relay_peer_secret_file": str(secret),
        "relay_metrics_listen": f"127.0.0.1:{procs.free_port()}"})


def attached(st: stack.Stack) -> dict[str, float]:
    """The relay's ``intunnel_relay_attached_total`` by path: local, forwarded_out, forwarded_in."""
    port = int(st.settings.relay_metrics_listen.rsplit(":", 1)[1])
    return {s.labels["path"]: s.value for family in stack.metric_families(port)
            for s in family.samples if s.name == "intunnel_relay_attached_total"}


def attached_since(before: dict[str, float], st: stack.Stack) -> dict[str, float]:
    now = attached(st)
    return {path: now.get(path, 0) - before.get(path, 0) for path in ("local", "forwarded_out", "forwarded_in")}


def connect_client(owner: stack.Stack, at: stack.Stack, subdomain: str, app: servers.App):
    """A tunnel (made in the shared database through ``owner``) whose client connects to ``at``."""
    token = owner.add_tunnel(subdomain, app.port)
    return at.start_client(app.port, token)


def wait_serving(st: stack.Stack, subdomain: str, client) -> None:
    """Until GET /1k of the tunnel answers through this relay (the client must stay up)."""
    host = st.public_host(subdomain)

    def ok():
        if client.poll() is not None:
            raise RuntimeError(f"client exited with {client.returncode}: {st.logs()}")
        return serving(st.relay_port, host)
    try:
        procs.wait_until(ok, 30, f"{host} to serve")
    except TimeoutError as e:
        raise TimeoutError(f"{e}\n{st.logs()}") from None


# --- measuring ----------------------------------------------------------------------------

def measure_paths(targets: dict[str, tuple[int, str]], sides: dict[str, int], opts) -> dict:
    """``{path: {mode: figures}}``: rounds of the paths one after the other, best of --repeat."""
    results: dict = {name: {} for name in targets}
    for mode, label, close in MODES:
        if opts.warmup:
            for port, host in targets.values():
                load.wrk(f"http://127.0.0.1:{port}/1k", host, CONNECTIONS, opts.warmup, close=close)
        for _ in range(opts.repeat):
            for name, (port, host) in targets.items():
                meter = procs.CpuMeter(sides)
                r = load.wrk(f"http://127.0.0.1:{port}/1k", host, CONNECTIONS, opts.duration, close=close)
                cpu = meter.per_request(r.requests)
                log(f"{name}: {label} {r.rps:,.0f} req/s p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms, "
                    + ", ".join(f"{side} {us:.0f}" for side, us in cpu.items()) + " us CPU/req"
                    + (f", {r.errors} errors" if r.errors else ""))
                best = results[name].get(mode)
                # Best of the rounds: other load on a shared machine only ever makes a run slower.
                if best is None or r.rps > best["rps"]:
                    results[name][mode] = {"rps": r.rps, "p50": r.p50_ms, "p99": r.p99_ms, "errors": r.errors,
                                           "cpu": cpu, "total_us": sum(cpu.values())}
    return results


def split(total: int, parts: int) -> list[int]:
    """``total`` connections over ``parts`` load generators, as evenly as they go."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measure_aggregate(nodes: list[tuple[stack.Stack, object, str]], app: servers.App, opts) -> list[dict]:
    """Keep-alive with the first 1, 2, ... relays: one wrk per relay at once, at its own tunnel."""
    rows = []
    for n in range(1, len(nodes) + 1):
        used = nodes[:n]
        conns = split(CONNECTIONS, n)
        threads = max(1, 2 // n)  # wrk threads: 2 in all up to 2 relays (as bench.tunnel), 3 with 3

        def load_all(seconds):
            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(lambda i: load.wrk(f"http://127.0.0.1:{used[i][0].relay_port}/1k",
                                                        used[i][0].public_host(used[i][2]), conns[i], seconds,
                                                        threads=min(threads, conns[i])), range(n)))
        if opts.warmup:
            load_all(opts.warmup)
        sides = {"app": app.proc.pid}
        for i, (st, client, _) in enumerate(used):
            sides[f"relay {i}"], sides[f"client {i}"] = st.relay.pid, client.pid
        best = None
        for _ in range(opts.repeat):
            before = [attached(st) for st, _, _ in used]
            meter, (busy0, total0) = procs.CpuMeter(sides), procs.machine_cpu_seconds()
            runs = load_all(opts.duration)
            busy1, total1 = procs.machine_cpu_seconds()
            cpu = meter.per_request(sum(r.requests for r in runs))
            moved = [attached_since(b, st) for b, (st, _, _) in zip(before, used)]
            row = {"relays": n, "rps": sum(r.rps for r in runs), "per_relay": [r.rps for r in runs],
                   "p99": max(r.p99_ms for r in runs), "errors": sum(r.errors for r in runs),
                   "relays_us": sum(us for side, us in cpu.items() if side.startswith("relay")),
                   "clients_us": sum(us for side, us in cpu.items() if side.startswith("client")),
                   "app_us": cpu["app"], "wrk_us": cpu["wrk"], "total_us": sum(cpu.values()),
                   "forwarded": sum(m["forwarded_out"] for m in moved), "connections": conns,
                   # cores busy during the run: the whole machine's (others' tests included) and ours
                   "machine_cores": (busy1 - busy0) / max(total1 - total0, 1e-9) * os.cpu_count()}
            row["our_cores"] = row["total_us"] * row["rps"] / 1e6
            if best is None or row["rps"] > best["rps"]:
                best = row
        log(f"{n} relay(s): keep-alive {best['rps']:,.0f} req/s in all ("
            + " + ".join(f"{x:,.0f}" for x in best["per_relay"]) + f"), worst p99 {best['p99']:.2f} ms, "
            f"{best['total_us']:.0f} us CPU/req in all, {best['forwarded']:.0f} forwarded, cores busy: "
            f"{best['our_cores']:.2f} ours, {best['machine_cores']:.2f} the whole machine")
        if best["forwarded"]:
            raise RuntimeError(f"{n} relays: {best['forwarded']:.0f} requests were forwarded; each load "
                               "generator should hit its own relay's tunnel")
        rows.append(best)
    return rows


def run(opts) -> dict:
    """Everything the report shows: paths, hop (attachment counts), aggregate, cores, database,
    load_start, load_end."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # bodies in RAM, not on disk
    out: dict = {"cores": os.cpu_count(), "load_start": os.getloadavg()[0], "tree": tree_label()}
    with tempfile.TemporaryDirectory(prefix="intunnel-relays-bench-", dir=base) as tmp, \
            contextlib.ExitStack() as cleanup:
        work = Path(tmp)
        if opts.database_url:
            url, out["database"] = opts.database_url, "the given PostgreSQL database"
        else:
            url, out["database"] = cleanup.enter_context(backend_database("postgresql", tmp))
        app = servers.start_app(work / "app")
        cleanup.callback(procs.stop, app.proc)
        secret = work / "peer.secret"
        secret.write_text(secrets.token_urlsafe(48))
        secret.chmod(0o600)
        a = cleanup.enter_context(relay_stack(work, "a", url, secret))
        b = cleanup.enter_context(relay_stack(work, "b", url, secret))
        a.start_relay()
        b.start_relay()
        client = connect_client(a, a, "bench", app)
        wait_serving(a, "bench", client)
        wait_serving(b, "bench", client)  # the route is in the database and B forwards
        log(f"app on {app.port}, relay A on {a.relay_port} (holds the agent), relay B on {b.relay_port}")

        before = {"a": attached(a), "b": attached(b)}
        out["paths"] = measure_paths(
            {"direct app": (app.port, DIRECT_HOST), "direct": (a.relay_port, a.public_host("bench")),
             "forwarded": (b.relay_port, b.public_host("bench"))},
            {"relay A": a.relay.pid, "relay B": b.relay.pid, "client": client.pid, "app": app.proc.pid}, opts)
        out["hop"] = {"b": attached_since(before["b"], b), "a": attached_since(before["a"], a)}
        if out["hop"]["b"]["local"] or not out["hop"]["b"]["forwarded_out"]:
            raise RuntimeError(f"relay B was to forward every visitor to relay A: {out['hop']}")

        nodes = [(a, client, "bench")]
        for i in range(1, opts.relays):
            st = b if i == 1 else cleanup.enter_context(relay_stack(work, chr(ord("a") + i), url, secret))
            if st.relay is None:
                st.start_relay()
            own = connect_client(a, st, f"bench{i}", app)
            wait_serving(st, f"bench{i}", own)
            nodes.append((st, own, f"bench{i}"))
        out["aggregate"] = measure_aggregate(nodes, app, opts)
    out["load_end"] = os.getloadavg()[0]
    return out


# --- the report ---------------------------------------------------------------------------

def tree_label() -> str:
    """The code measured: HEAD, and whether intunnel/ has changes no commit holds (a shared tree)."""
    import subprocess
    repo = HERE.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "intunnel"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown tree"
    return f"commit {rev or 'unknown'}" + (" with uncommitted changes to intunnel/" if dirty else "")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def render(out: dict, opts, machine: str) -> str:
    paths, agg = out["paths"], out["aggregate"]
    cores = out["cores"]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"{HEADING}\n\n<!-- {MARKER} -->\n",
        f"`python -m bench.relays{' ' + ' '.join(opts.argv) if opts.argv else ''}` ({stamp}, "
        f"{out['tree']}); {machine}, {out['load_end']:.1f} at the end; {out['database']}.",
        f"Relays A and B are `intunnel relay` processes sharing one PostgreSQL database (their own "
        f"relay_id, listener, peer listener and metrics listener each, one peer secret file); one "
        f"`intunnel http` client holds the tunnel at relay A. wrk as in bench.tunnel: 1 KiB GET, "
        f"{CONNECTIONS} connections, {opts.duration:g} s runs, the three paths one after the other in each "
        f"round, best of {opts.repeat}.\n",
        "| path | keep-alive req/s | p50 | p99 | new connection req/s | p50 | p99 | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    what = {"direct app": "direct app (wrk -> app)", "direct": "direct (wrk -> relay A -> client -> app)",
            "forwarded": "forwarded (wrk -> relay B -> relay A -> client -> app)"}
    for name in PATHS:
        ka, cl = paths[name]["ka"], paths[name]["close"]
        lines.append(f"| {what[name]} | {ka['rps']:,.0f} | {ka['p50']:.2f} ms | {ka['p99']:.2f} ms | "
                     f"{cl['rps']:,.0f} | {cl['p50']:.2f} ms | {cl['p99']:.2f} ms | {ka['errors'] + cl['errors']} |")
    lines += ["", "| ratio of req/s | keep-alive | new connection |", "|---|---|---|"]
    for top, bottom in (("forwarded", "direct"), ("direct", "direct app"), ("forwarded", "direct app")):
        lines.append(f"| {top} / {bottom} | " + " | ".join(
            _ratio(paths[top][m]["rps"], paths[bottom][m]["rps"]) for m, _, _ in MODES) + " |")
    lines += ["", "CPU per request, µs (user + system, every process on the path and the idle ones):", "",
              "| process | " + " | ".join(f"{name}, {label}" for _, label, _ in MODES for name in PATHS) + " |",
              "|---|" + "---|" * (len(PATHS) * len(MODES))]
    for side in SIDES:
        lines.append(f"| {side} | " + " | ".join(f"{paths[name][m]['cpu'][side]:.0f}"
                                                 for m, _, _ in MODES for name in PATHS) + " |")
    lines.append("| **all of the above** | " + " | ".join(f"**{paths[name][m]['total_us']:.0f}**"
                                                        for m, _, _ in MODES for name in PATHS) + " |")
    hop = []
    for m, label, _ in MODES:
        f, d = paths["forwarded"][m], paths["direct"][m]
        hop.append(f"{label} +{f['total_us'] - d['total_us']:.0f} µs per request in all (relay B "
                   f"{f['cpu']['relay B']:.0f} µs, relay A {f['cpu']['relay A'] - d['cpu']['relay A']:+.0f} µs, "
                   f"client {f['cpu']['client'] - d['cpu']['client']:+.0f} µs, wrk "
                   f"{f['cpu']['wrk'] - d['cpu']['wrk']:+.0f} µs)")
    moved = out["hop"]
    lines += ["", "The extra hop (forwarded minus direct): " + "; ".join(hop) + ". During these runs relay B "
              f"attached an upstream through relay A {moved['b']['forwarded_out']:.0f} times and "
              f"{moved['b']['local']:.0f} times locally (`intunnel_relay_attached_total`: once per visitor "
              f"connection, whose keep-alive requests then follow it); relay A counted "
              f"{moved['a']['forwarded_in']:.0f} forwarded attachments (B's peer connections, which B "
              f"parks and reuses between visitors).", ""]
    lines += [f"Aggregate keep-alive with 1 to {len(agg)} relays: each relay its own tunnel and client, "
              f"the {CONNECTIONS} connections split evenly over one wrk per relay, run at once, each at its "
              f"own relay (0 forwarded). **This machine has {cores} cores shared by every relay, client, "
              f"the app and wrk (and other people's work): another relay adds processes on the same cores, "
              f"not CPU, so this measures the overhead of more relays, not scale-out.** The aggregate can "
              f"only rise while the cores are not full: \"cores used\" is all µs/req times req/s, what the "
              f"path's processes took; \"machine busy\" is the whole machine's busy time in the run "
              f"(/proc/stat), other load included; {cores} s / (all µs/req) bounds the aggregate. On "
              f"separate hosts each relay brings its own cores; the CPU per request is what carries over.", "",
              "| relays | aggregate req/s | per relay | worst p99 | relays µs/req | clients µs/req | app µs/req "
              "| wrk µs/req | all µs/req | cores used / machine busy | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    one = agg[0]["rps"]
    for row in agg:
        lines.append(f"| {row['relays']} | {row['rps']:,.0f} ({_ratio(row['rps'], one)}) | "
                     + " + ".join(f"{x:,.0f}" for x in row["per_relay"]) + f" | {row['p99']:.2f} ms | "
                     f"{row['relays_us']:.0f} | {row['clients_us']:.0f} | {row['app_us']:.0f} | "
                     f"{row['wrk_us']:.0f} | {row['total_us']:.0f} | {row['our_cores']:.2f} / "
                     f"{row['machine_cores']:.2f} of {cores} | {row['errors']} |")
    lines.append(f"\n<!-- /{MARKER} -->\n")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.relays", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4, help="seconds of each wrk run (default 4)")
    p.add_argument("--repeat", type=int, default=2, help="rounds, the best of each figure counts (default 2)")
    p.add_argument("--warmup", type=float, default=1, help="seconds of warm-up before each series (0: none)")
    p.add_argument("--quick", action="store_true", help="2 s runs, one round")
    p.add_argument("--relays", type=int, default=3, choices=(2, 3), help="most relays in the aggregate (default 3)")
    p.add_argument("--database-url", default="",
                   help="a migrated, empty PostgreSQL database to use instead of a throwaway cluster (tests)")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"), help="results file (default bench/RESULTS.md)")
    p.add_argument("--no-write", action="store_true", help="print only, don't write the results file")
    opts = p.parse_args(argv)
    opts.argv = [a for a in argv if not a.startswith("--database-url") and a != opts.database_url]
    if opts.quick:
        opts.duration, opts.repeat = 2, 1
    return opts


def main(argv=None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    ensure_tools(("wrk", "nginx"))
    machine = machine_line()
    section = render(run(opts), opts, machine)
    print(section)
    if not opts.no_write:
        report.write_section(Path(opts.out), HEADING, MARKER, section)
        log(f"wrote the {HEADING[3:]!r} section of {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
