"""What an idle relay and an idle client have imported (issue 17's idle-memory targets).

Resident memory is mostly import weight: every library a process imports stays mapped.  These
run the real commands (``intunnel relay``, ``intunnel http``) as processes, serve a tunnel
through them, then ask each process for its ``sys.modules`` and check what must not be there.
Deterministic checks on names, not timed or byte-counted ones (``bench/idle.py`` measures the
memory itself).
"""

from __future__ import annotations

import sys

from support.tunnel import ClientProcess, HttpUpstream, RelayProcess, make_tunnel, visit, wait_for

# Runs ``intunnel.cli.main`` and, once the test creates the file named by $IMPORTS_TRIGGER,
# writes the names of the process's imported modules beside it (trigger + ".modules").
DUMPING = (sys.executable, "-c", """
import os, sys, threading, time
def dump():
    trigger = os.environ["IMPORTS_TRIGGER"]
    deadline = time.monotonic() + 60
    while not os.path.exists(trigger) and time.monotonic() < deadline:
        time.sleep(0.01)
    names = sorted(name for name, module in list(sys.modules.items()) if module is not None)
    with open(trigger + ".tmp", "w") as f:
        f.write("\\n".join(names))
    os.replace(trigger + ".tmp", trigger + ".modules")
threading.Thread(target=dump, daemon=True).start()
from intunnel.cli import main
sys.exit(main(sys.argv[1:]))
""")

# Never at an idle relay: the web app, the admin tool, the client, password hashing (loaded by
# the first tunnel password checked), schema migration (only when the schema is behind).
RELAY_NEVER = ("intunnel.web", "intunnel.admin", "intunnel.client", "bottle", "waitress", "cheroot", "jinja2",
               "passlib", "argon2", "playhouse.migrate", "hypothesis", "pytest")
# Never at the client: the appliance's libraries and modules, and what a client given its token
# has no use for (urllib.request and the email package come with the first API call).
CLIENT_NEVER = ("intunnel.relay", "intunnel.web", "intunnel.models", "intunnel.admin", "peewee", "bottle",
                "jinja2", "passlib", "prometheus_client", "urllib.request", "email", "http.client", "http.server")
CLIENT_MAY = ("intunnel", "uvloop")   # beyond the standard library (uvloop: the optional [fast] extra)
# ... and what this test's interpreter brings: the script, site-packages' .pth hooks (setuptools,
# this checkout's editable install), uvloop's Cython runtime.
INTERPRETER = ("__main__", "_distutils_hack", "cython_runtime")
INTERPRETER_PREFIXES = ("__editable__", "_cython_")


def modules_of(process, trigger) -> set[str]:
    trigger.write_text("")
    out = trigger.with_name(trigger.name + ".modules")
    wait_for(out.exists, 30, message="the process to list its modules")
    return set(out.read_text().split("\n"))


def loaded(modules: set[str], names) -> list[str]:
    return sorted(m for m in modules for name in names if m == name or m.startswith(name + "."))


def test_an_idle_relay_and_client_import_no_more_than_they_use(settings, db, tmp_path):
    tunnel = make_tunnel(settings, "idle", 3000)
    relay_trigger, client_trigger = tmp_path / "relay-trigger", tmp_path / "client-trigger"
    with HttpUpstream() as app, \
            RelayProcess(settings, env={"IMPORTS_TRIGGER": str(relay_trigger)}, command=DUMPING) as relay, \
            ClientProcess(relay.url, tunnel.token, app.port, env={"IMPORTS_TRIGGER": str(client_trigger)},
                          command=DUMPING) as client:
        client.wait_line(r"^connected: ")
        wait_for(lambda: visit(relay.port, f"idle.{settings.domain}", "/hello")[0] == 200, 15,
                 message="the tunnel to serve")
        relay_modules = modules_of(relay, relay_trigger)
        client_modules = modules_of(client, client_trigger)
    assert "intunnel.relay.server" in relay_modules and "intunnel.client.agent" in client_modules
    assert loaded(relay_modules, RELAY_NEVER) == []
    if settings.db_backend == "sqlite":
        # peewee imports every driver it finds; an SQLite relay is spared libpq and its OpenSSL
        assert loaded(relay_modules, ("psycopg2", "psycopg", "pymysql", "MySQLdb")) == []
    else:
        assert "psycopg2" in relay_modules
    assert loaded(client_modules, CLIENT_NEVER) == []
    others = sorted(m for m in {m.split(".")[0] for m in client_modules} - set(sys.stdlib_module_names)
                    - set(CLIENT_MAY) - set(INTERPRETER) if not m.startswith(INTERPRETER_PREFIXES))
    assert others == [], "the client needs the standard library only"
