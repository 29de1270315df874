"""`intunnel-admin certs list|reconcile` (custom domains): what the timer runs, on a name whose
DNS does not point here yet (the real ACME path: tests/certs/test_pebble.py)."""

from __future__ import annotations

from intunnel import domains
from intunnel.models import Tunnel
from tests.support.acme_ca import StubDNS


def test_list_and_reconcile_a_name_not_pointing_here(admin, tmp_path):
    admin.create_user("alice@example.test", "alice")
    admin.ok("tunnel", "create", "--user", "alice", "--name", "Shop", "--local-port", "3000", "--subdomain", "shop")
    with StubDNS({"example.test": ["203.0.113.5"], "shop.customer.test": ["192.0.2.9"]}) as dns:
        env = {"INTUNNEL_CUSTOM_DOMAIN_RESOLVER": dns.address, "INTUNNEL_CERT_DIR": str(tmp_path / "certs"),
               "INTUNNEL_NGINX_DOMAIN_DIR": str(tmp_path / "domains"), "INTUNNEL_NGINX_COMMAND": "true"}
        db = admin.open_models()
        try:
            domains.add(admin.settings, Tunnel.get(Tunnel.subdomain == "shop"), "Shop.Customer.test")
        finally:
            db.close()
        listed = admin.json("certs", "list")["domains"]
        assert [(d["hostname"], d["tunnel"], d["status"]) for d in listed] == \
            [("shop.customer.test", "shop", "pending-dns")]
        report = admin.json("certs", "reconcile", env=env)
        assert report["waiting"] == ["shop.customer.test"] and report["issued"] == [] and report["failed"] == []
        listed = admin.json("certs", "list")["domains"][0]
        assert listed["status"] == "pending-dns" and listed["next_attempt_at"]
        db = admin.open_models()
        try:
            from intunnel.models import CustomDomain
            reason = CustomDomain.get().reason
        finally:
            db.close()
        assert reason == ("shop.customer.test resolves to 192.0.2.9, not only to this server (203.0.113.5)")
        # a second run within the backoff leaves it alone
        assert admin.json("certs", "reconcile", env=env)["waiting"] == ["shop.customer.test"]


def test_reconcile_leaves_an_unmigrated_database_to_db_migrate(admin):
    """The timer runs reconcile every minute, also in the seconds between the playbook writing a
    new database_url and its `db migrate`: it must not make the schema (the playbook's migrate
    task would then report no change and not restart the services)."""
    if not admin.database_url:   # SQLite: a database file with no schema yet
        admin.db_path.parent.mkdir(parents=True, exist_ok=True)
        admin.db_path.touch()
    report = admin.json("certs", "reconcile")
    assert report["schema_version"] == 0 and report["issued"] == [] and "db migrate" in report["message"]
    migrated = admin.json("db", "migrate")
    assert migrated["from_version"] == 0 and migrated["applied"]
