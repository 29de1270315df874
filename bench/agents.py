"""Many idle agents in one process, for the relay's memory-per-agent figure.

    python -m bench.agents --server http://localhost:PORT --local-port 3000 < tokens.txt

Each agent is the real client (``intunnel.client.agent.Agent``): control
channel, hello, heartbeats and its warm pool of data connections, exactly what
a laptop's ``intunnel http`` keeps open; they only share one event loop here
so 1,000 of them fit on a small machine.  Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time

from . import procs


async def _run(server: str, tokens: list[str], local_port: int) -> None:
    from intunnel.client.agent import Agent

    agents = [Agent(server, t, local_port, say=lambda line: None) for t in tokens]
    tasks = []
    for i, agent in enumerate(agents):
        tasks.append(asyncio.ensure_future(agent.run()))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # don't hit the relay's accept backlog with 5,000 connects at once
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    await stop
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def start_swarm(st, tokens: list[str]) -> subprocess.Popen:
    """Start the helper process with ``tokens`` (one agent each) against the stack's relay."""
    path = st.home / "swarm-tokens.txt"
    path.write_text("\n".join(tokens) + "\n")
    with open(path) as stdin:
        return procs.start([sys.executable, "-m", "bench.agents", "--server", st.relay_url,
                            "--local-port", "9"], st.home / "swarm.log", env=st.env, stdin=stdin)


def wait_settled(pid: int, timeout: float = 20.0, quiet: float = 1.0) -> int:
    """Wait until ``pid``'s RSS stops growing for ``quiet`` seconds; return it (KiB)."""
    deadline = time.monotonic() + timeout
    last = procs.status_kib(pid, "VmRSS")
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = procs.status_kib(pid, "VmRSS")
        if now > last + 64:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.agents")
    ap.add_argument("--server", required=True)
    ap.add_argument("--local-port", type=int, default=9)
    args = ap.parse_args(argv)
    tokens = [line.strip() for line in sys.stdin if line.strip()]
    asyncio.run(_run(args.server, tokens, args.local_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
