"""The client as people install it, away from this checkout: the wheel without extras in a fresh
Python 3.9 virtualenv (no network: ``--no-index`` from a wheelhouse), and the zipapp the web app
serves, run by a plain ``python3.9 -I``.

The wheel is built once per session from a copy of the sources (setuptools writes build/ and
*.egg-info into the tree it builds), with this venv's pip and setuptools (no build isolation,
so no index).  The client's one dependency on 3.9, tomli, comes from ``CLIENT_WHEELHOUSE``
(``scripts/test.sh`` downloads it there, outside the checkout).  Without Python 3.9 or that
wheel the tests skip on a laptop and fail in CI.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.support.tunnel import REPO

CLIENT_WHEELHOUSE = Path(os.environ.get("INTUNNEL_CLIENT_WHEELHOUSE") or REPO / ".venv" / "client-wheelhouse")
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "intunnel")
# pip's own settings from the environment (an index, extra find-links) must not reach these installs.
HERMETIC = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}


def missing(what: str):
    if IN_CI:
        pytest.fail(f"{what}: required in CI")
    pytest.skip(what)


def find_python39() -> str | None:
    """A Python 3.9 interpreter: $INTUNNEL_TEST_PYTHON39, pyenv's, or python3.9 on the PATH."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [os.environ.get("INTUNNEL_TEST_PYTHON39"),
                  *sorted(glob.glob(os.path.join(root, "versions", "3.9*", "bin", "python3.9")), reverse=True),
                  shutil.which("python3.9"), "/usr/bin/python3.9"]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture(scope="session")
def python39() -> str:
    found = find_python39()
    if found is None:
        missing("no Python 3.9 on this machine (set INTUNNEL_TEST_PYTHON39)")
    return found


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", HERMETIC)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """This checkout's wheel, and tomli for Python 3.9."""
    tomli = sorted(CLIENT_WHEELHOUSE.glob("tomli-*.whl"))
    if not tomli:
        missing(f"no tomli wheel in {CLIENT_WHEELHOUSE} (scripts/test.sh downloads it)")
    base = tmp_path_factory.mktemp("wheel")
    src, wheels = base / "src", base / "wheels"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--wheel-dir", str(wheels), str(src)])
    shutil.copy2(tomli[-1], wheels)
    return wheels


def make_venv(python: str, where: Path, wheelhouse: Path) -> Path:
    """A fresh venv with ``pip install intunnel`` (no extras) from ``wheelhouse`` alone."""
    run([python, "-m", "venv", str(where)])
    run([str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--disable-pip-version-check",
         "--find-links", str(wheelhouse), "intunnel"])
    return where / "bin"
