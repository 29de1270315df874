"""Forward one direction of a spliced pair inside the kernel: socket -> pipe -> socket.

``splice(2)`` moves the received pages into a pipe and from the pipe into the
other socket, so bulk bytes are never copied to user space and back: on a
loopback download that was three copies per byte (the kernel's receive copy,
the event loop's copy into a ``bytes`` object, the kernel's send copy) and
about 40 % of the client's and the relay's CPU (perf).

The event loop's transport keeps owning the socket (and closes it); while a
pump runs, the transport's reading is paused and the pump watches duplicates
of the two descriptors.  Backpressure is the pipe: nothing more is read from
the source while the pipe still holds bytes the destination won't take.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from typing import Callable

from .. import portable

# Asked for per splice; a pipe holds what its default 16 slots take.  Bigger pipes (F_SETPIPE_SZ)
# measured no faster here, and the kernel charges their whole size to the user's pipe budget
# (fs.pipe-user-pages-soft: 64 MiB), which concurrent bulk transfers would soon use up.
CHUNK = 1 << 20
# Linux only (os.splice is Python 3.10+, Linux); INTUNNEL_PORTABLE=1 turns it off (portable.py).
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice") and not portable.FORCED
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# splice(2) refused outright (a seccomp filter, a socket type or kernel without it): the
# event loop moves the bytes instead, for this connection and all later ones.
_REFUSED = (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def socket_fd(transport: asyncio.Transport) -> int | None:
    """The descriptor of a plain TCP transport; None for TLS, pipes or anything else."""
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None
    try:
        return sock.fileno()
    except (OSError, ValueError):
        return None


class Pump:
    """src socket -> pipe -> dst socket until EOF, an error or ``limit`` bytes.

    ``on_eof()`` runs once the source's EOF has been passed on (all bytes
    delivered), ``on_error()`` when either socket fails, ``on_limit()`` when
    ``limit`` bytes are delivered and ``on_refused()`` when the kernel refuses
    the very first splice (the pump has then stopped, nothing moved: the caller
    takes the sockets back).  ``on_moved()``, if given, runs whenever bytes came in.
    ``stop()`` releases the duplicated descriptors and the pipe (idempotent).
    """

    def __init__(self, src_fd: int, dst_fd: int, on_eof: Callable[[], None], on_error: Callable[[], None],
                 limit: int | None = None, on_limit: Callable[[], None] | None = None,
                 on_moved: Callable[[], None] | None = None, on_refused: Callable[[], None] | None = None):
        self.loop = asyncio.get_running_loop()
        self.on_eof, self.on_error, self.on_limit, self.on_moved = on_eof, on_error, on_limit, on_moved
        self.on_refused = on_refused
        self.moved_any = False
        self.left = limit      # bytes still to read from src (None: no limit)
        self.src = os.dup(src_fd)
        self.dst = os.dup(dst_fd)
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pending = 0       # bytes in the pipe, not yet in dst
        self.source_done = False
        self.stopped = False
        self.paused = False    # paused by the owner (backpressure from elsewhere)
        self.rx_meter = self.tx_meter = None   # netio.Conn.meter of src / dst: bytes counted
        self.loop.add_reader(self.src, self._readable)

    def _readable(self) -> None:
        want = CHUNK if self.left is None else min(CHUNK, self.left)
        try:
            n = os.splice(self.src, self.pipe_w, want, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            if not self.moved_any and e.errno in _REFUSED and self.on_refused is not None:
                global AVAILABLE
                AVAILABLE = False
                self.stop()
                self.on_refused()
            else:
                self._fail()
            return
        self.moved_any = True
        if n == 0:
            self.source_done = True
            self.loop.remove_reader(self.src)
            if not self.pending:
                self._eof()
            return
        self.pending += n
        if self.rx_meter is not None:
            self.rx_meter.rx += n
        if self.left is not None:
            self.left -= n
        if self.on_moved is not None:
            self.on_moved()
        self._flush()
        if not self.pending and self.left == 0 and not self.stopped:
            self.stop()
            self.on_limit()

    def _flush(self) -> None:
        while self.pending:
            try:
                n = os.splice(self.pipe_r, self.dst, self.pending, flags=_FLAGS)
            except BlockingIOError:
                # dst is full: stop reading until it drains (the pipe is the only buffer)
                self.loop.remove_reader(self.src)
                self.loop.add_writer(self.dst, self._writable)
                return
            except OSError:
                self._fail()
                return
            if n == 0:
                self._fail()
                return
            self.pending -= n
            if self.tx_meter is not None:
                self.tx_meter.tx += n

    def _writable(self) -> None:
        self._flush()
        if self.pending or self.stopped:
            return
        self.loop.remove_writer(self.dst)
        if self.source_done:
            self._eof()
        elif self.left == 0:
            self.stop()
            self.on_limit()
        elif not self.paused:
            self.loop.add_reader(self.src, self._readable)

    def pause(self) -> None:
        if not self.paused and not self.stopped:
            self.paused = True
            self.loop.remove_reader(self.src)

    def resume(self) -> None:
        if self.paused and not self.stopped:
            self.paused = False
            if not self.pending and not self.source_done:
                self.loop.add_reader(self.src, self._readable)

    def _eof(self) -> None:
        self.stop()
        self.on_eof()

    def _fail(self) -> None:
        self.stop()
        self.on_error()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.loop.remove_reader(self.src)
        self.loop.remove_writer(self.dst)
        for fd in (self.src, self.dst, self.pipe_r, self.pipe_w):
            os.close(fd)
