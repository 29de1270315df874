"""Custom domains through the REST API (/api/tunnels/<id>/domains): recorded as pending-dns with
the DNS records to create, validated, unique across users, bounded per tunnel, owner only."""

from __future__ import annotations

import pytest

from intunnel import domains as domains_module
from intunnel.models import CustomDomain, database

from conftest import create_user, login_session


@pytest.fixture
def domains_url(web, alice_session):
    r = alice_session.post(web.url + "/api/tunnels", json={"name": "App", "subdomain": "myapp", "local_port": 3000})
    assert r.status_code == 200, r.text
    return f"{web.url}/api/tunnels/{r.json()['tunnel']['id']}/domains"


def test_add_list_remove(web, alice_session, domains_url):
    r = alice_session.post(domains_url, json={"hostname": "App.Customer.ORG."})
    assert r.status_code == 200, r.text
    domain = r.json()["domain"]
    assert (domain["hostname"], domain["status"], domain["state"], domain["reason"]) == \
        ("app.customer.org", "pending-dns", "pending-dns", "")
    assert domain["dns"] == [{"type": "CNAME", "name": "app.customer.org", "value": "myapp.localhost"}]
    assert domain["url"] == "https://app.customer.org" and domain["certificate_expires_at"] is None
    assert alice_session.get(domains_url).json()["domains"] == [domain]

    with database.connection_context():   # what the reconciler would write
        CustomDomain.update(state="failed", reason="the CA could not connect").execute()
    listed = alice_session.get(domains_url).json()["domains"][0]
    assert listed["status"] == "failed: the CA could not connect"

    r = alice_session.delete(domains_url + "/app.customer.org")
    assert r.json() == {"success": True, "message": "Custom domain removed"}
    assert alice_session.get(domains_url).json()["domains"] == []
    r = alice_session.delete(domains_url + "/app.customer.org")
    assert (r.status_code, r.json()["code"]) == (404, "NOT_FOUND")


@pytest.mark.parametrize("hostname, words", [
    ("localhost", "host name"), ("bad_name.example.org", "host name"), ("192.0.2.1", "IP address"),
    ("myapp.localhost", "can't be localhost"), (7, "host name"),
])
def test_invalid_hostnames(alice_session, domains_url, hostname, words):
    r = alice_session.post(domains_url, json={"hostname": hostname})
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", r.text
    assert words in r.json()["message"] and set(r.json()) == {"error", "message", "code"}


def test_unique_across_users_without_saying_whose(web, alice_session, domains_url):
    assert alice_session.post(domains_url, json={"hostname": "shop.example.org"}).status_code == 200
    create_user("bob@example.com", "bob")
    bob = login_session(web, "bob@example.com")
    t = bob.post(web.url + "/api/tunnels", json={"name": "B", "subdomain": "bobapp", "local_port": 3000}).json()
    r = bob.post(f"{web.url}/api/tunnels/{t['tunnel']['id']}/domains", json={"hostname": "SHOP.example.org"})
    assert r.status_code == 409 and r.json() == {"error": True, "code": "CONFLICT",
                                                 "message": "shop.example.org is already in use"}
    # and bob can neither see nor remove alice's
    assert bob.get(domains_url).status_code == 404
    assert bob.delete(domains_url + "/shop.example.org").status_code == 404
    assert len(alice_session.get(domains_url).json()["domains"]) == 1


def test_bounded_per_tunnel(web, alice_session, domains_url):
    limit = web.settings.custom_domains_per_tunnel
    for i in range(limit):
        assert alice_session.post(domains_url, json={"hostname": f"n{i}.example.org"}).status_code == 200
    r = alice_session.post(domains_url, json={"hostname": "one-more.example.org"})
    assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN") and "custom_domains_per_tunnel" in r.json()["message"]


def test_deleting_the_tunnel_deletes_its_domains(web, alice_session, domains_url):
    alice_session.post(domains_url, json={"hostname": "gone.example.org"})
    assert alice_session.delete(domains_url.rsplit("/", 1)[0]).status_code == 200
    with database.connection_context():
        assert CustomDomain.select().count() == 0


def test_dns_records_name_the_server_addresses_when_set(settings):
    class Tunnel:
        subdomain = "myapp"
    records = domains_module.dns_records(settings.replace(custom_domain_addresses=["203.0.113.5", "2001:db8::5"]),
                                         Tunnel(), "customer.org")
    assert records == [{"type": "CNAME", "name": "customer.org", "value": "myapp.localhost"},
                       {"type": "A", "name": "customer.org", "value": "203.0.113.5"},
                       {"type": "AAAA", "name": "customer.org", "value": "2001:db8::5"}]
