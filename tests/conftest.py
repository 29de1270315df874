"""Shared fixtures: fresh settings and a fresh database per test, on each backend selected.

``--db=sqlite`` (default), ``--db=postgresql`` or ``--db=both`` picks the backends.
Every test that uses ``settings``, ``db``, ``database_url`` or ``db_backend`` runs
once per selected backend (ids ``[sqlite]``/``[postgresql]`` when there are two):

- ``db_backend``: ``"sqlite"`` or ``"postgresql"``;
- ``database_url``: ``""`` on SQLite (the default file in the data dir), else the
  URL (password included) of a fresh, migrated PostgreSQL database, dropped after;
- ``settings``: settings on a fresh data dir with that database;
- ``db``: the database, migrated, bound to the models and connected;
- ``postgres_cluster``: the session's throwaway cluster (``support.postgres``), for
  ``new_database(migrated=False)``, ``url(..., password=False)`` and the like.

``@pytest.mark.sqlite_only("why")``: the test needs SQLite files (skipped on PostgreSQL).
``@pytest.mark.postgresql_only("why")``: the test needs PostgreSQL (several relays, routes):
it runs on PostgreSQL whenever that is selected, in ``DB_INCIDENTAL_DIRS`` too, and is
skipped with the reason otherwise.
``@pytest.mark.db_incidental``: the database only holds fixtures' rows, what the test
checks does not touch it; it runs on the first selected backend only.  The tests
under ``DB_INCIDENTAL_DIRS`` count as marked.

Area-specific fixtures (servers, relay, browser) live next to their tests in
``tests/<area>/conftest.py`` or in ``tests/support/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from intunnel.models import open_database
from intunnel.settings import load_settings, prepare_data_dir

BACKENDS = ("sqlite", "postgresql")
TESTS = Path(__file__).resolve().parent
# Byte-moving tunnel tests: the relay looks one token up; tests/relay covers that on every backend.
DB_INCIDENTAL_DIRS = ("tunnel_heavy",)

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


def pytest_addoption(parser):
    parser.addoption("--db", choices=("sqlite", "postgresql", "both"), default="sqlite",
                     help="database backend(s) the database-touching tests run on (default: sqlite; "
                          "postgresql starts a throwaway cluster; CI runs both)")


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only(reason): needs SQLite files; skipped on PostgreSQL")
    config.addinivalue_line("markers", "db_incidental: runs on the first selected database backend only")
    config.addinivalue_line("markers", "postgresql_only(reason): needs PostgreSQL; runs on it whenever it is "
                            "selected, skipped otherwise")


def selected_backends(config) -> list[str]:
    choice = config.getoption("--db")
    return list(BACKENDS) if choice == "both" else [choice]


def _incidental(definition) -> bool:
    if definition.get_closest_marker("db_incidental"):
        return True
    rel = Path(str(definition.path)).resolve().relative_to(TESTS).parts
    return bool(rel) and rel[0] in DB_INCIDENTAL_DIRS


def pytest_generate_tests(metafunc):
    if "db_backend" not in metafunc.fixturenames:
        return
    backends = selected_backends(metafunc.config)
    if metafunc.definition.get_closest_marker("postgresql_only"):
        if "postgresql" in backends and len(backends) > 1:
            metafunc.parametrize("db_backend", ["postgresql"], indirect=True)
        return
    if len(backends) > 1 and not _incidental(metafunc.definition):
        metafunc.parametrize("db_backend", backends, indirect=True)


@pytest.fixture
def db_backend(request):
    """The backend of this test run: the parameter, or the one (first) selected."""
    backend = getattr(request, "param", None) or selected_backends(request.config)[0]
    needs = request.node.get_closest_marker("postgresql_only")
    if needs and backend != "postgresql":
        pytest.skip(f"PostgreSQL only (--db=postgresql or both): {needs.args[0] if needs.args else ''}")
    marker = request.node.get_closest_marker("sqlite_only")
    if marker and backend != "sqlite":
        reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "needs SQLite files")
        pytest.skip(f"SQLite only: {reason}")
    return backend


@pytest.fixture(scope="session")
def postgres_cluster():
    """The session's throwaway PostgreSQL cluster, started at first use, removed at the end."""
    from support.postgres import PostgresCluster, PostgresUnavailable
    try:
        cluster = PostgresCluster.start()
    except PostgresUnavailable as e:
        if IN_CI:
            pytest.fail(f"{e}: required in CI")
        pytest.skip(str(e))
    yield cluster
    cluster.stop()


@pytest.fixture
def database_url(request, db_backend):
    """"" for SQLite (the data dir's file), else a fresh migrated PostgreSQL database's URL."""
    if db_backend == "sqlite":
        yield ""
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.new_database()
    yield url
    _unbind_models()
    cluster.drop_database(url)


def _unbind_models():
    """Close this thread's connection of the bound database (the next test binds its own)."""
    from intunnel.models import database
    if database.obj is not None and not database.is_closed():
        database.close()


@pytest.fixture
def settings(tmp_path, database_url):
    """Settings on a fresh data dir and database, ignoring the machine's environment and /etc."""
    overrides = {"data_dir": str(tmp_path / "data")}
    if database_url:
        overrides["database_url"] = database_url
    s = load_settings(env={"INTUNNEL_CONFIG": ""}, overrides=overrides)
    return prepare_data_dir(s)


@pytest.fixture
def db(settings):
    """A migrated, fresh database bound to the models, connected."""
    database_ = open_database(settings)
    database_.connect(reuse_if_open=True)
    yield database_
    if not database_.is_closed():
        database_.close()
