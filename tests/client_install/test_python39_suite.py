"""The client's pure tests (wire protocol, HTTP/1.1 framing with its differential fuzz against h11
and llhttp, the -v log, config, pool and dial logic) run again on Python 3.9, the oldest the client
supports: the framing patterns' fallback for Pythons without possessive quantifiers, tomli for
tomllib, and everything else 3.10+ would have are exercised there, not only imported.
Their tools for 3.9 come from the offline wheelhouse (scripts/test.sh downloads them)."""

from __future__ import annotations

import subprocess

import pytest

from tests.client_install.conftest import CLIENT_WHEELHOUSE, HERMETIC, missing, run
from tests.support.tunnel import REPO

pytestmark = pytest.mark.slow

TOOLS = ("pytest", "hypothesis", "h11", "httptools", "tomli", "exceptiongroup")
# Pure tests of client-side modules only: no conftest (it opens the appliance's database).
FILES = ("tests/relay/test_protocol.py", "tests/relay/test_http1.py", "tests/relay/test_http1_old_python.py",
         "tests/relay/test_framing.py", "tests/relay/test_framing_differential.py",
         "tests/relay/test_exchanges.py", "tests/relay/test_client_config.py", "tests/relay/test_client_pool.py",
         "tests/relay/test_client_dial.py", "tests/relay/test_inspect_capture.py")


def test_the_clients_pure_tests_pass_on_python39(python39, tmp_path):
    absent = [t for t in TOOLS if not list(CLIENT_WHEELHOUSE.glob(f"{t}-*.whl"))]
    if absent:
        missing(f"no wheels of {', '.join(absent)} for Python 3.9 in {CLIENT_WHEELHOUSE} (scripts/test.sh)")
    venv = tmp_path / "venv"
    run([python39, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--disable-pip-version-check",
         "--find-links", str(CLIENT_WHEELHOUSE), *TOOLS])
    # From the checkout (the code under test), writing nothing into it.
    env = {**HERMETIC, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--noconftest", *FILES], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.splitlines()[-1] and "failed" not in result.stdout.splitlines()[-1]
