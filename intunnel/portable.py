"""Which Linux-only paths this process may take: the one place that decides.

The client is written for Linux, macOS and Windows.  Three things it uses exist on some of
them only, each behind a fallback: uvloop (not on Windows; the asyncio loop otherwise),
``splice(2)`` (Linux; the event loop copies otherwise, see ``wire/zerocopy.py``) and the
event loop's signal handlers (not on Windows; plain ``signal.signal`` handlers otherwise).

``INTUNNEL_PORTABLE=1`` turns all three off on Linux too, so that the fallbacks, what macOS
and Windows run, are what runs: CI runs the client's tests a second time that way.  It is
read once, when this module is imported.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

ENV = "INTUNNEL_PORTABLE"


def forced(environ=None) -> bool:
    """Whether ``environ`` (default: this process's) forces the portable paths."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV, "").strip().lower() not in ("", "0", "no", "false")


FORCED = forced()


def on_signal(loop, sig: int, callback: Callable[[], None]) -> str:
    """Call ``callback`` in ``loop`` when ``sig`` arrives; says which way: "loop" (the event
    loop's own handler, Unix) or "signal" (a plain handler handing it to the loop: Windows,
    where the loop's raises NotImplementedError, a loop not in the main thread, or FORCED)."""
    if not FORCED:
        try:
            loop.add_signal_handler(sig, callback)
            return "loop"
        except (NotImplementedError, RuntimeError):
            pass
    signal.signal(sig, lambda *_: loop.call_soon_threadsafe(callback))
    return "signal"
