"""The playbook against a real systemd host, exactly as against a VPS (issue 6, item 5).

A Debian bookworm root (debootstrap, cached) boots with systemd-nspawn; the
playbook runs over SSH with TLS mode `selfsigned` and domain `intunnel.test` on
free ports; then, from outside: log in over HTTPS, create a tunnel through the
API, run the client on this machine against the container's nginx, fetch a page
and a WebSocket echo through https://<sub>.intunnel.test, give the tunnel a custom domain
that the host's own intunnel-certs unit gets a certificate for from Debian's pebble (on this
machine, validating HTTP-01 against the container's nginx), check the units, run the backup job as cron would, restore it, and run the playbook again: changed=0.  Last, the same booted host
is switched to `intunnel_database: postgresql` (a server installed by the playbook on a free
port): two more runs, the second changed=0, then the web app, the relay and `doctor` on it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import socket
import ssl
import time
from urllib.parse import quote

import pytest

from bench.procs import wait_until
from conftest import require_tool
from container_support import (ADMIN_EMAIL, BIG_PAGE, DOMAIN, Container, Site, Upstream, assert_nothing_changed,
                               create_tunnel, deploy_workdir, freeze_checkout, prepare_root, recap, run_playbook,
                               ssh_host_vars, tunnel_client, web_is_up)
from nginx_support import free_port
from tests.support.acme_ca import Pebble, StubDNS

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

UNITS = ("intunnel-web.service", "intunnel-relay.service")
# Where the container finds pebble's HTTPS certificate (acme_ca_bundle).
PEBBLE_CA_IN_ROOT = "/usr/local/share/intunnel-test/pebble-ca.pem"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work, key = deploy_workdir(tmp_path_factory, "deploy")
    timings = {}
    started = time.monotonic()
    ssh_port, http_port, https_port, tcp_port = free_port(), free_port(), free_port(), free_port()
    root = work / "root"
    prepare_root(root, ssh_port, (work / "id_ed25519.pub").read_text())
    timings["root"] = time.monotonic() - started
    container = Container(root, ssh_port, key, work / "console.log")
    acme = contextlib.ExitStack()
    try:
        # The ACME side of custom domains, on this machine (the container shares its network):
        # pebble validates HTTP-01 at the container's nginx, asking its own stub DNS; the
        # appliance's reconciler asks another ("does the name point here?").
        for tool in ("pebble", "openssl"):
            require_tool(tool)
        ca_dns = acme.enter_context(StubDNS({}))
        server_dns = acme.enter_context(StubDNS({}))
        pebble = acme.enter_context(Pebble(work / "pebble", http_port, ca_dns.address))
        bundle = root / PEBBLE_CA_IN_ROOT.lstrip("/")
        bundle.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pebble.ca_bundle, bundle)
        bundle.chmod(0o644)
        container.wait_ready()
        timings["boot"] = time.monotonic() - started - timings["root"]
        # Both runs install the same checkout, frozen now (others may edit the working tree meanwhile).
        checkout = freeze_checkout(work)
        inventory = work / "inventory.ini"
        inventory.write_text(f"""[intunnel]
testhost {ssh_host_vars(container)}

[intunnel:vars]
intunnel_source_dir={checkout}
intunnel_domain={DOMAIN}
intunnel_admin_email={ADMIN_EMAIL}
intunnel_tls_mode=selfsigned
# INI values are strings: the roles must read "false"/"true" as booleans.
intunnel_firewall_enabled=false
intunnel_nginx_remove_default_site=true
intunnel_nginx_http_port={http_port}
intunnel_nginx_https_port={https_port}
intunnel_web_listen=127.0.0.1:{free_port()}
intunnel_relay_listen=127.0.0.1:{free_port()}
intunnel_tcp_ports={tcp_port}
""")
        # Beside the inventory, where Ansible reads group variables (INI would make the dict a string).
        (work / "group_vars").mkdir(exist_ok=True)
        (work / "group_vars" / "intunnel.yml").write_text(json.dumps({"intunnel_extra_settings": {
            "acme_directory": pebble.directory, "acme_ca_bundle": PEBBLE_CA_IN_ROOT,
            "custom_domain_resolver": server_dns.address, "custom_domain_addresses": ["127.0.0.1"],
            "acme_email": ADMIN_EMAIL}}))
        log = work / "ansible.log"
        t0 = time.monotonic()
        first = run_playbook(inventory, log)
        timings["first_playbook"] = time.monotonic() - t0
        assert recap(first)["failed"] == 0
        ca_file = work / "ca.pem"
        ca_file.write_text(container.ssh("cat /etc/intunnel/tls/fullchain.pem").stdout)
        password = container.ssh("cat /etc/intunnel/admin-password").stdout.strip()
        assert password and password in first, "the generated admin password is shown at the end of the run"
        s = Site(container, https_port, ca_file, password, inventory, log)
        s.checkout = checkout
        s.timings = timings
        s.pebble, s.ca_dns, s.server_dns = pebble, ca_dns, server_dns
        yield s
    finally:
        container.stop()
        acme.close()
        shutil.rmtree(root, ignore_errors=True)
        print(f"deploy test timings (s): { {k: round(v, 1) for k, v in timings.items()} }")


def test_units_are_active_and_hardened(site):
    for unit in UNITS:
        assert site.container.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", \
            site.container.ssh(f"journalctl -u {unit} --no-pager -n 50", check=False).stdout
        assert site.container.ssh(f"systemctl show -P User {unit}").stdout.strip() == "intunnel"
        verify = site.container.ssh(f"systemd-analyze verify /etc/systemd/system/{unit}", check=False)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
        security = site.container.ssh(f"systemd-analyze security --no-pager {unit}", check=False).stdout
        exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security)
        assert exposure and float(exposure.group(1)) < 4.0, security
    assert site.container.ssh("systemctl is-active nginx").stdout.strip() == "active"
    assert site.container.ssh("systemctl is-active intunnel-relay.socket", check=False).stdout.strip() == "active"
    listen = site.container.ssh("systemctl show -P Listen intunnel-relay.socket").stdout.strip()
    relay_listen = re.search(r'^relay_listen = "(.*)"$', site.container.ssh("cat /etc/intunnel/intunnel.toml").stdout,
                             re.M).group(1)
    assert listen == f"{relay_listen} (Stream)", listen   # from the playbook's drop-in
    config = site.container.ssh("stat -c '%a %U %G' /etc/intunnel/intunnel.toml").stdout.split()
    assert config == ["640", "root", "intunnel"]


def test_the_host_serves_its_own_client_zipapp(site):
    """Built by the playbook (intunnel-admin client build) into the data dir, served through nginx."""
    import zipfile
    from io import BytesIO

    from intunnel import __version__
    status, headers, body = site.request("GET", "/download/intunnel.pyz", headers={"Accept": "*/*"})
    assert status == 200 and dict((k.lower(), v) for k, v in headers)["x-intunnel-version"] == __version__
    assert "intunnel/client/cli.py" in zipfile.ZipFile(BytesIO(body)).namelist()
    built = site.container.ssh(f"stat -c '%U %a' /var/lib/intunnel/download/intunnel-{__version__}.pyz").stdout
    assert built.split() == ["intunnel", "644"]


def test_tunnel_through_the_deployed_host(site):
    from websockets.sync.client import connect

    site.login()
    token = create_tunnel(site, "My Web App", "myapp", 3000)
    upstream = Upstream()
    client_log = site.log.with_name("client.log")
    try:
        with tunnel_client(site, upstream.port, token, client_log):
            host = f"myapp.{DOMAIN}"

            def page_served():
                status, _, body = site.request("GET", "/hello?x=1", host=host)
                return status == 200 and body == b"hello from the laptop, path /hello?x=1\n"
            wait_until(page_served, 30, f"the page through the tunnel (client log: {client_log})")
            status, _, body = site.request("GET", "/big", host=host)
            assert status == 200 and body == BIG_PAGE.encode()

            sock = socket.create_connection(("127.0.0.1", site.https_port), timeout=10)
            with connect(f"wss://{host}:{site.https_port}/ws", sock=sock, ssl=site.tls_context(),
                         server_hostname=host, open_timeout=10, proxy=None) as ws:
                ws.send("ping through the appliance")
                assert ws.recv(timeout=10) == "ping through the appliance"
                ws.send(b"\x00\x01binary")
                assert ws.recv(timeout=10) == b"\x00\x01binary"

            status, _, body = site.request("GET", "/api/tunnels")
            assert status == 200 and b"active" in body
    finally:
        upstream.close()


def test_a_relay_restart_keeps_its_port_and_the_agent_is_never_refused(site):
    """`systemctl restart intunnel-relay` (an upgrade, a config change): intunnel-relay.socket keeps
    the port, so the agent's first reconnect attempt through nginx waits for the new relay instead
    of nginx answering 502 and the agent backing off; the tunnel serves again."""
    c = site.container
    site.login()
    token = create_tunnel(site, "Steady", "steady", 3000)
    upstream = Upstream()
    client_log = site.log.with_name("restart-client.log")
    host = f"steady.{DOMAIN}"

    def page_served():
        status, _, body = site.request("GET", "/again", host=host)
        return status == 200 and body == b"hello from the laptop, path /again\n"
    try:
        with tunnel_client(site, upstream.port, token, client_log, "http", "-v"):
            wait_until(page_served, 30, f"the page through the tunnel (client log: {client_log})")
            socket_unit = c.ssh("systemctl show -P InvocationID intunnel-relay.socket").stdout.strip()
            relay_unit = c.ssh("systemctl show -P InvocationID intunnel-relay.service").stdout.strip()
            c.ssh("systemctl restart intunnel-relay.service")
            wait_until(lambda: "reconnected: " in client_log.read_text(), 30, f"the agent back ({client_log})")
            wait_until(page_served, 30, "the page after the restart")
            assert c.ssh("systemctl show -P InvocationID intunnel-relay.service").stdout.strip() != relay_unit
            assert c.ssh("systemctl show -P InvocationID intunnel-relay.socket").stdout.strip() == socket_unit
            log = client_log.read_text()
            after = log[log.index("disconnected: "):]
            # -v prints every failed attempt; waiting out the client's step timeout is not a refusal
            refused = [line for line in after.splitlines()
                       if line.startswith("cannot connect") and "did not answer in time" not in line]
            assert not refused, log
    finally:
        upstream.close()
        status, _, body = site.request("GET", "/api/tunnels")
        for made in json.loads(body)["tunnels"] if status == 200 else ():
            if made["subdomain"] == "steady":   # the later tests expect their own tunnels only
                site.request("DELETE", f"/api/tunnels/{made['id']}")


def test_tcp_tunnel_through_the_deployed_relay_on_ipv4_and_ipv6(site):
    """Issue 16: a TCP tunnel made through the API gets the host's one reserved port; the hardened
    relay listens there on every address (intunnel_tcp_listen_host "*"), and `intunnel tcp` on
    this machine serves it: raw bytes to the local service from 127.0.0.1 and from ::1."""
    site.login()
    status, _, body = site.request("POST", "/api/tunnels", {"name": "Raw", "subdomain": "raw", "local_port": 3000,
                                                            "protocol": "tcp"})
    assert status in (200, 201), body
    made = json.loads(body)
    tunnel = made.get("tunnel", made)
    token, port = tunnel["token"], tunnel["remote_port"]
    assert tunnel["url"] == f"tcp://{DOMAIN}:{port}", tunnel

    def fetch(host: str) -> bytes:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"GET /raw HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            return reply

    def served(host: str) -> bool:
        try:
            return fetch(host).endswith(b"hello from the laptop, path /raw\n")
        except OSError:
            return False

    upstream = Upstream()
    try:
        with tunnel_client(site, upstream.port, token, site.log.with_name("tcp-client.log"), kind="tcp"):
            wait_until(lambda: served("127.0.0.1"), 30, "the TCP tunnel on IPv4")
            assert served("::1"), "the TCP tunnel on IPv6"
    finally:
        upstream.close()
        site.request("DELETE", f"/api/tunnels/{tunnel['id']}")


def test_custom_domain_gets_a_certificate_from_the_acme_ca(site):
    """Issue 16: the deployed intunnel-certs unit (as its timer starts it) checks the name's DNS,
    gets a certificate by HTTP-01 through the host's nginx, writes and loads the vhost; the name
    is served over TLS with the CA's chain, to the tunnel's app; removed, it is no longer served."""
    site.login()
    token = create_tunnel(site, "Shop", "shop", 3000)
    status, _, body = site.request("GET", "/api/tunnels")
    tunnel_id = next(t["id"] for t in json.loads(body)["tunnels"] if t["subdomain"] == "shop")
    name = "shop.customer.test"
    site.server_dns.names[name] = ["127.0.0.1"]
    site.ca_dns.names[name] = ["127.0.0.1"]
    status, _, body = site.request("POST", f"/api/tunnels/{tunnel_id}/domains", {"hostname": name})
    assert status in (200, 201) and json.loads(body)["domain"]["status"] == "pending-dns", body
    root = site.pebble.root_pem()

    def visit():
        context = ssl.create_default_context(cadata=root)
        with socket.create_connection(("127.0.0.1", site.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(f"GET /shop HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
                return reply

    def certs_run():
        done = site.container.ssh("systemctl start intunnel-certs.service", check=False)
        journal = site.container.ssh("journalctl -u intunnel-certs.service --no-pager -n 40", check=False).stdout
        assert done.returncode == 0, journal
        return journal

    def domain():
        _, _, body = site.request("GET", f"/api/tunnels/{tunnel_id}/domains")
        return next(d for d in json.loads(body)["domains"] if d["hostname"] == name)

    upstream = Upstream()
    try:
        with tunnel_client(site, upstream.port, token, site.log.with_name("shop-client.log")):
            journal = certs_run()
            assert domain()["status"] == "active", (domain(), journal)
            assert domain()["certificate_expires_at"]

            def served():
                try:
                    return visit().endswith(b"hello from the laptop, path /shop\n")
                except (ssl.SSLError, OSError):
                    return False   # the relay routes the name within relay_custom_domain_refresh
            wait_until(served, 30, "the custom domain over TLS with pebble's chain")

            status, _, body = site.request("DELETE", f"/api/tunnels/{tunnel_id}/domains/{quote(name)}")
            assert status == 200, body
            certs_run()
            vhosts = site.container.ssh("ls /etc/nginx/intunnel-domains").stdout.split()
            assert not [v for v in vhosts if name in v], vhosts
            assert site.container.ssh("nginx -t", check=False).returncode == 0
            with pytest.raises(ssl.SSLError):
                visit()
    finally:
        upstream.close()
        site.request("DELETE", f"/api/tunnels/{tunnel_id}")


def run_backup_as_cron(container) -> list[str]:
    """The nightly job as cron runs it (the user's uid, /bin/sh -c, only the environment cron
    sets); the backups there are afterwards."""
    line = next(l for l in container.ssh("cat /etc/cron.d/intunnel-backup").stdout.splitlines()
                if l.strip() and not l.startswith("#"))
    fields = line.split(None, 6)
    user, command = fields[5], fields[6]
    assert user == "intunnel" and (fields[0], fields[1]) == ("17", "3")
    container.ssh(f"cd / && env -i PATH=/usr/bin:/bin SHELL=/bin/sh /usr/sbin/runuser -u {user} -- "
                  f"/bin/sh -c {shlex.quote(command)}")
    return container.ssh("ls /var/lib/intunnel/backups/").stdout.split()


def test_backup_as_cron_runs_it_and_restore(site):
    c = site.container
    backups = run_backup_as_cron(c)
    backup = next(b for b in backups if b.endswith(".db.gz"))

    site.login()
    status, _, body = site.request("POST", "/api/tunnels", {"name": "After backup", "subdomain": "later",
                                                            "local_port": 4000})
    assert status in (200, 201), body
    c.ssh("systemctl stop intunnel-web intunnel-relay.socket intunnel-relay")
    for unit in UNITS:  # a stop drains and exits by itself, before systemd would kill it
        assert c.ssh(f"systemctl show -P Result {unit}").stdout.strip() == "success", unit
    c.ssh(f"/usr/sbin/runuser -u intunnel -- /opt/intunnel/venv/bin/intunnel-admin restore "
          f"--config /etc/intunnel/intunnel.toml /var/lib/intunnel/backups/{backup}")
    c.ssh("systemctl start intunnel-web intunnel-relay")

    wait_until(lambda: web_is_up(site), 30, "the web app after the restore")
    site.login()
    status, _, body = site.request("GET", "/api/tunnels")
    names = [t["subdomain"] for t in json.loads(body)["tunnels"]] if status == 200 else body
    assert names == ["myapp"], names


def test_second_run_changes_nothing(site):
    t0 = time.monotonic()
    second = run_playbook(site.inventory, site.log)
    site.timings["second_playbook"] = time.monotonic() - t0
    assert_nothing_changed(second)
    for unit in UNITS:
        assert site.container.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active"


UPGRADE_MIGRATION = """

def _deploy_test_upgrade_step(db):
    \"\"\"deploy test: the migration of a newer release\"\"\"
    db.execute_sql("CREATE TABLE deploy_upgrade_probe (id INTEGER PRIMARY KEY)")


MIGRATIONS.append((LATEST + 1, _deploy_test_upgrade_step))
LATEST = MIGRATIONS[-1][0]
"""


def schema_version(container) -> int:
    out = container.ssh("/usr/sbin/runuser -u intunnel -- /opt/intunnel/venv/bin/intunnel-admin db check --json "
                        "--config /etc/intunnel/intunnel.toml").stdout
    return json.loads(out)["schema_version"]


def test_newer_checkout_upgrades_in_place(site):
    """A newer release (new version, one more migration): installed, migrated, restarted, data kept."""
    c = site.container
    before = schema_version(c)
    invocations = {u: c.ssh(f"systemctl show -P InvocationID {u}").stdout.strip() for u in UNITS}
    init = site.checkout / "intunnel" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "99.') )
    with open(site.checkout / "intunnel" / "migrations.py", "a") as f:
        f.write(UPGRADE_MIGRATION)
    output = run_playbook(site.inventory, site.log)
    assert recap(output)["failed"] == 0
    for task in ("Install InTunnel and its dependencies from the wheelhouse", "Apply database migrations"):
        assert re.search(rf"TASK \[intunnel : {re.escape(task)}\] \**\nchanged:", output), task
    assert schema_version(c) == before + 1
    assert "99." in c.ssh("/opt/intunnel/venv/bin/pip show intunnel").stdout
    wheels = c.ssh("ls /opt/intunnel/wheelhouse").stdout.split()
    ours = [w for w in wheels if w.startswith("intunnel-")]
    assert len(ours) == 1 and ours[0].startswith("intunnel-99."), wheels  # the old build's wheel is gone
    for unit in UNITS:
        assert c.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active"
        assert c.ssh(f"systemctl show -P InvocationID {unit}").stdout.strip() != invocations[unit], unit

    wait_until(lambda: web_is_up(site), 30, "the web app after the upgrade")
    site.login()
    status, _, body = site.request("GET", "/api/tunnels")
    assert status == 200 and [t["subdomain"] for t in json.loads(body)["tunnels"]] == ["myapp"]


def test_postgresql_on_the_same_host(site):
    """`intunnel_database: postgresql` on the host deployed above: Debian's server installed and
    set up by the playbook, InTunnel moved onto it (a fresh database: `db copy` moves data), the
    units ordered after it, the password generated on the host and never in the play's output."""
    c = site.container
    t0 = time.monotonic()
    pg_port = free_port()  # the container shares this machine's network
    with open(site.inventory, "a") as f:
        f.write(f"intunnel_database=postgresql\nintunnel_postgresql_port={pg_port}\n")
    log_start = site.log.stat().st_size
    first = run_playbook(site.inventory, site.log)
    site.timings["postgresql_first_playbook"] = time.monotonic() - t0
    assert recap(first)["failed"] == 0
    for task in ("Create InTunnel's role and database when missing", "Apply database migrations",
                 "Create the first admin account"):
        assert re.search(rf"TASK \[intunnel : {re.escape(task)}\] \**\nchanged:", first), task
    t1 = time.monotonic()
    second = run_playbook(site.inventory, site.log)
    site.timings["postgresql_second_playbook"] = time.monotonic() - t1
    assert_nothing_changed(second)

    password = c.ssh("cat /etc/intunnel/database-password").stdout.strip()
    assert len(password) >= 32
    assert password not in site.log.read_text()[log_start:], "the database password is in the play's output"
    assert c.ssh("stat -c '%a %U %G' /etc/intunnel/database-password").stdout.split() == ["640", "root", "intunnel"]
    config = c.ssh("cat /etc/intunnel/intunnel.toml").stdout
    assert f'database_url = "postgresql://intunnel@127.0.0.1:{pg_port}/intunnel"' in config
    assert 'database_password_file = "/etc/intunnel/database-password"' in config and password not in config
    hba = c.ssh("grep -v '^#' /etc/postgresql/15/main/pg_hba.conf | grep .").stdout.splitlines()
    assert hba[0].split() == ["host", "intunnel", "intunnel", "127.0.0.1/32", "scram-sha-256"], hba
    assert c.ssh("systemctl is-enabled postgresql").stdout.strip() == "enabled"
    for unit in UNITS:
        assert c.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", \
            c.ssh(f"journalctl -u {unit} --no-pager -n 50", check=False).stdout
        for dependency in ("After", "Wants"):
            assert "postgresql.service" in c.ssh(f"systemctl show -P {dependency} {unit}").stdout.split(), dependency
        verify = c.ssh(f"systemd-analyze verify /etc/systemd/system/{unit}", check=False)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # doctor as the service user: it reads the password file and finds the schema on PostgreSQL.
    doctor = c.ssh("/usr/sbin/runuser -u intunnel -- /opt/intunnel/venv/bin/intunnel-admin doctor --json "
                   "--config /etc/intunnel/intunnel.toml", check=False)
    report = json.loads(doctor.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    failed = [check for check in report["checks"] if check["level"] == "fail" and check["name"] != "nginx"]
    assert not failed, report  # nginx -t needs root to read the TLS key; the rest must pass
    assert checks["database"]["level"] == "ok" and "PostgreSQL 15" in checks["database"]["message"], checks
    assert password not in doctor.stdout + doctor.stderr

    # The web app on PostgreSQL: the first admin was created there, a tunnel is stored there...
    wait_until(lambda: web_is_up(site), 30, "the web app on PostgreSQL")
    site.login()
    status, _, body = site.request("GET", "/api/tunnels")
    assert status == 200 and json.loads(body)["tunnels"] == [], body  # a new, empty database
    status, _, body = site.request("POST", "/api/tunnels", {"name": "On PostgreSQL", "subdomain": "pgapp",
                                                            "local_port": 5000})
    assert status in (200, 201), body
    rows = c.ssh(f"runuser -u postgres -- psql -X -tA -p {pg_port} -d intunnel "
                 "-c \"SELECT subdomain FROM tunnel\"").stdout.split()
    assert rows == ["pgapp"], rows
    # ...and the relay reads it: a known tunnel with no agent is "offline" (503), an unknown one 404.
    assert site.request("GET", "/", host=f"pgapp.{DOMAIN}")[0] == 503
    assert site.request("GET", "/", host=f"nosuch.{DOMAIN}")[0] == 404

    # The same nightly job, now a pg_dump (client tools, password file and pg_hba line all serve it).
    dumps = [b for b in run_backup_as_cron(c) if b.endswith(".pgdump")]
    assert len(dumps) == 1, dumps
    listing = c.ssh(f"pg_restore --list /var/lib/intunnel/backups/{dumps[0]}").stdout
    assert "TABLE public tunnel" in listing, listing
    site.timings["postgresql_total"] = time.monotonic() - t0
