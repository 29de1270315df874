"""Fixtures of the heavy tunnel tests: a relay and clients as real subprocesses, a bulk local app.

The relay and client run as processes (``bench.stack.Stack``) so their peak
memory (VmHWM) is their own and can be bounded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is a top-level package of the repo, not installed
    sys.path.insert(0, str(ROOT))

from bench.stack import Stack  # noqa: E402

from .upstream import running_upstream  # noqa: E402


@pytest.fixture
def upstream():
    with running_upstream() as app:
        yield app


@pytest.fixture
def make_stack(tmp_path):
    """``make_stack(**settings)`` -> a Stack (database + relay config) cleaned up after the test."""
    stacks: list[Stack] = []

    def make(**settings) -> Stack:
        st = Stack(tmp_path / f"stack{len(stacks)}", settings=settings)
        stacks.append(st)
        return st

    yield make
    for st in stacks:
        st.close()
