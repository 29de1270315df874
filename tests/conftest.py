"""Shared fixtures: fresh settings and a fresh SQLite file per test.

Area-specific fixtures (servers, relay, browser) live next to their tests in
``tests/<area>/conftest.py`` or in ``tests/support/``.
"""

from __future__ import annotations

import os

import pytest

from intunnel.models import open_database
from intunnel.settings import load_settings, prepare_data_dir

# CI installs every tool; a test that would skip for a missing tool fails there.
IN_CI = os.environ.get("CI") == "true"


def require_tool(path_or_name: str) -> str:
    """Return the tool's path, skip (laptop) or fail (CI) when it is missing."""
    import shutil
    found = shutil.which(path_or_name)
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{path_or_name} is required in CI but not installed")
    pytest.skip(f"{path_or_name} not installed")


@pytest.fixture
def settings(tmp_path):
    """Settings on a fresh data dir, ignoring the machine's environment and /etc."""
    s = load_settings(env={"INTUNNEL_CONFIG": ""}, overrides={"data_dir": str(tmp_path / "data")})
    return prepare_data_dir(s)


@pytest.fixture
def db(settings):
    """A migrated, fresh SQLite database bound to the models."""
    database_ = open_database(settings.db_path)
    database_.connect(reuse_if_open=True)
    yield database_
    if not database_.is_closed():
        database_.close()
