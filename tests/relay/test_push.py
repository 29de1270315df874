"""Revocation reaches a real relay process and cuts a real client process within 1 s.

PostgreSQL: by LISTEN/NOTIFY alone: the poll and the reconciliation are set to an
hour, so only a notification can be in time.  SQLite: by the poll, as before.
Also: the relay's LISTEN connection terminated by the server (it reconnects and
hears the next change), and changes made while it cannot reconnect (it catches
up with a full check once it can).
"""

from __future__ import annotations

import time

import pytest

from intunnel import accounts, tunnels
from intunnel.relay.revocations import APPLICATION_NAME
from tests.admin.conftest import Admin
from tests.support.backends import database_toml
from tests.support.tunnel import ClientProcess, HttpUpstream, RelayProcess, make_tunnel, wait_for

HOUR = "3600"
LISTENING = r"listening for database changes"
REASONS = {
    "regenerate": "the token was regenerated",
    "delete": "the tunnel was deleted",
    "disconnect": "disconnected by an administrator",
    "disable": "the owner's account was disabled",
}


def relay_env(backend: str) -> dict:
    env = {"INTUNNEL_RELAY_RECONCILE_INTERVAL": HOUR}
    if backend == "postgresql":
        env["INTUNNEL_RELAY_REVOCATION_POLL"] = HOUR  # nothing but a notification can be in time
    return env


def revoke(action: str, tunnel) -> None:
    """What the web app and the dashboard do (the same functions)."""
    if action == "regenerate":
        tunnels.regenerate_token(tunnel.owner, tunnel.id)
    elif action == "delete":
        tunnels.delete(tunnel.owner, tunnel.id)
    elif action == "disconnect":
        tunnels.request_disconnect(tunnel)
    else:
        accounts.set_disabled(tunnel.owner, True)


def cut_within(client: ClientProcess, reason: str, started: float, timeout: float = 1.0) -> float:
    """Seconds from ``started`` until the client said it was cut for ``reason``; fails past ``timeout``."""
    client.wait_line("Not retrying", timeout=timeout + 4)
    elapsed = time.monotonic() - started
    (final,) = [line for line in client.lines if "Not retrying" in line]
    assert reason in final, final
    assert elapsed < timeout, f"cut after {elapsed:.3f} s"
    assert client.proc.wait(10) == 1
    return elapsed


class Live:
    """A relay process, one tunnel, a client process connected through it."""

    def __init__(self, stack, settings, backend: str, subdomain: str = "myapp"):
        self.upstream = stack.enter_context(HttpUpstream())
        self.relay = stack.enter_context(RelayProcess(settings, env=relay_env(backend)))
        if backend == "postgresql":
            self.relay.wait_line(LISTENING)
        self.tunnel = make_tunnel(settings, subdomain, self.upstream.port)
        self.client = stack.enter_context(ClientProcess(self.relay.url, self.tunnel.token, self.upstream.port))
        self.client.wait_line(r"^connected: ")


@pytest.fixture
def live(settings, db, db_backend):
    import contextlib
    with contextlib.ExitStack() as stack:
        yield Live(stack, settings, db_backend)


@pytest.mark.parametrize("action", list(REASONS))
def test_revocation_cuts_a_real_agent_within_one_second(live, action):
    started = time.monotonic()
    revoke(action, live.tunnel)
    elapsed = cut_within(live.client, REASONS[action], started)
    print(f"{action}: cut after {elapsed * 1000:.0f} ms")


@pytest.mark.parametrize("action", ["disconnect", "disable"])
def test_revocation_by_intunnel_admin(live, settings, tmp_path, action):
    admin = Admin(tmp_path / "admin")
    admin.config.write_text(f'data_dir = "{settings.data_dir}"\ndomain = "{settings.domain}"\n'
                            f'relay_listen = "127.0.0.1:{live.relay.port}"\n' + database_toml(settings))
    if action == "disconnect":
        # the command itself waits for the relay to react: one second is enough
        r = admin.run("tunnel", "disconnect", "myapp", "--wait", "1")
        assert r.returncode == 0 and "tunnel 'myapp' disconnected" in r.stdout, r.stdout + r.stderr
    else:
        r = admin.run("user", "disable", live.tunnel.owner.username)
        assert r.returncode == 0, r.stdout + r.stderr
    # the change was committed before the command ended
    cut_within(live.client, REASONS[action], time.monotonic())


def _listen_backend(cluster, settings) -> int:
    dbname = settings.db_url.rsplit("/", 1)[-1].split("?", 1)[0]
    rows = cluster.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                           (APPLICATION_NAME, dbname))
    assert len(rows) == 1, rows
    return rows[0][0]


def test_the_relay_listens_again_after_its_connection_is_terminated(live, settings, db_backend, request):
    if db_backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY: PostgreSQL only")
    cluster = request.getfixturevalue("postgres_cluster")
    old = _listen_backend(cluster, settings)
    cluster.execute("SELECT pg_terminate_backend(%s)", (old,))
    live.relay.wait_line("lost the LISTEN connection")
    live.relay.wait_line(LISTENING + r".* again after", timeout=10)
    assert _listen_backend(cluster, settings) != old
    started = time.monotonic()
    revoke("regenerate", live.tunnel)
    cut_within(live.client, REASONS["regenerate"], started)


def test_changes_made_while_the_relay_cannot_listen_are_caught_up(live, settings, db_backend, request):
    if db_backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY: PostgreSQL only")
    cluster = request.getfixturevalue("postgres_cluster")
    dbname = settings.db_url.rsplit("/", 1)[-1].split("?", 1)[0]
    # New connections refused (the relay's store and this test keep theirs): it can't LISTEN again.
    cluster.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    try:
        cluster.execute("SELECT pg_terminate_backend(%s)", (_listen_backend(cluster, settings),))
        live.relay.wait_line("lost the LISTEN connection")
        live.relay.wait_line("cannot LISTEN")
        revoke("disconnect", live.tunnel)  # notified to nobody
        started = time.monotonic()
    finally:
        cluster.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    live.relay.wait_line(LISTENING + r".* again after", timeout=10)
    # the full check after reconnecting finds it: at most one backoff step (5 s) later
    cut_within(live.client, REASONS["disconnect"], started, timeout=6.0)
