"""Test hosts with their own addresses: network namespaces on a bridge this test makes (root only).

``Lab(n)`` makes a bridge in this (the root) namespace with ``SUBNET``.1 and ``n`` network
namespaces, host ``i`` at ``SUBNET``.(11 + i), each joined to the bridge by a veth pair:
separate hosts as far as the network goes (their own addresses and routes; what one binds
the others reach only over the bridge).  ``cut(i)`` takes host ``i``'s link down (no RST,
no FIN: its peers just stop hearing from it, as when a host is cut off), ``restore(i)`` puts
it back.  Everything is removed on exit, and leftovers of a killed run are removed first.

The addresses are private-range, but only ever on interfaces this test made: nothing outside
this machine is addressed.  ``Forwarder`` lets the hosts reach a loopback-only server of the
root namespace (the tests' PostgreSQL) at the bridge's address.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading

SUBNET = "10.231.77"
BRIDGE_IP = f"{SUBNET}.1"


def available() -> str | None:
    """Why namespaces can't be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"itprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode:
        return f"cannot make a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


class Lab:
    def __init__(self, hosts: int):
        tag = os.getpid() % 10000
        self.bridge = f"itbr{tag}"
        self.names = [f"it{tag}h{i}" for i in range(hosts)]
        self.host_ends = [f"it{tag}v{i}" for i in range(hosts)]
        self.addresses = [f"{SUBNET}.{11 + i}" for i in range(hosts)]

    def __enter__(self) -> "Lab":
        self._remove()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{BRIDGE_IP}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name, end, address in zip(self.names, self.host_ends, self.addresses):
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
                _ip("link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", name)
                _ip("link", "set", end, "master", self.bridge)
                _ip("link", "set", end, "up")
                _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=name)
                _ip("link", "set", "eth0", "up", ns=name)
                _ip("link", "set", "lo", "up", ns=name)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc):
        self._remove()

    def _remove(self) -> None:
        for name, end in zip(self.names, self.host_ends):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            _ip("link", "del", end, check=False)
        _ip("link", "del", self.bridge, check=False)

    def prefix(self, i: int) -> list[str]:
        """The argv prefix that runs a command on host ``i``."""
        return ["ip", "netns", "exec", self.names[i]]

    def cut(self, i: int) -> None:
        _ip("link", "set", self.host_ends[i], "down")

    def restore(self, i: int) -> None:
        _ip("link", "set", self.host_ends[i], "up")


class Forwarder:
    """TCP from ``listen`` to ``target``, both ways, on a thread of its own (until closed)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(listen, ready), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("forwarder did not start")
        self.port = self.server.sockets[0].getsockname()[1]

    def _run(self, listen, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._pair, *listen))
        ready.set()
        self.loop.run_forever()

    async def _pair(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self):
        async def stop():
            self.server.close()
            pairs = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pairs:
                task.cancel()
            await asyncio.gather(*pairs, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
