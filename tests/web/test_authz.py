"""Authorization matrix: anonymous / cookie / bearer / other user / disabled user
over every API endpoint (the list comes from api.ROUTES, so a new route must be
added here), and the subdomain race."""

from __future__ import annotations

import itertools
import threading

import pytest
import requests

from intunnel import apitokens, domains, tunnels
from intunnel.models import User, database
from intunnel.web.api import ROUTES

from conftest import create_user, login_session

# What to send to each route; "{id}" is replaced by the resource the route needs.
REQUESTS = {
    ("GET", "/api/tunnels"): None,
    ("POST", "/api/tunnels"): {"name": "n", "subdomain": "new-{n}", "local_port": 3000},
    ("GET", "/api/tunnels/<id>"): None,
    ("PATCH", "/api/tunnels/<id>"): {"name": "changed"},
    ("PUT", "/api/tunnels/<id>"): {"local_port": 4000},
    ("DELETE", "/api/tunnels/<id>"): None,
    ("POST", "/api/tunnels/<id>/regenerate-token"): None,
    ("GET", "/api/tunnels/<id>/traffic"): None,
    ("GET", "/api/tunnels/<id>/domains"): None,
    ("POST", "/api/tunnels/<id>/domains"): {"hostname": "new-{n}.customer.test"},
    ("DELETE", "/api/tunnels/<id>/domains/<hostname>"): None,
    ("GET", "/api/user/profile"): None,
    ("GET", "/api/tokens"): None,
    ("POST", "/api/tokens"): {"name": "t"},
    ("DELETE", "/api/tokens/<id>"): None,
    ("GET", "/api/openapi.json"): None,
    ("POST", "/api/device/code"): {"client_name": "matrix"},
    ("POST", "/api/device/token"): {"device_code": "never-issued"},
}
PUBLIC = {("GET", "/api/openapi.json")}
# intunnel login's two calls need no credential and answer alike whoever asks (a credential sent
# along changes nothing): a new code, and EXPIRED_TOKEN for a device code never issued.
ANYONE = {("POST", "/api/device/code"): (200, None), ("POST", "/api/device/token"): (400, "EXPIRED_TOKEN")}


@pytest.fixture
def settings(settings):
    """Two matrix runs from one address (the disabled user's) make more writes than a minute's
    rate_limit_write allows; the limit itself is tested in test_ratelimit."""
    return settings.replace(rate_limit_write=100)


def expected_for(route, otherwise):
    return ANYONE.get(route) or ((200, None) if route in PUBLIC else otherwise)


def test_every_route_is_in_the_matrix():
    assert {(m, r) for m, r, _ in ROUTES} == set(REQUESTS)


@pytest.fixture
def world(web):
    """alice (the owner, logged in by cookie and by token) and bob (logged in)."""
    alice = create_user("alice@example.com", "alice")
    create_user("bob@example.com", "bob")
    with database.connection_context():
        _, secret = apitokens.create(alice, "matrix")
    return {"alice": alice, "alice_cookie": login_session(web, "alice@example.com"),
            "alice_token": secret, "bob_cookie": login_session(web, "bob@example.com")}


_serial = itertools.count()


def fresh_ids(web, user):
    """A tunnel and an API token of ``user`` for the route to act on."""
    with database.connection_context():
        tunnel = tunnels.create(web.settings, user, "t", f"sub-{next(_serial)}", 3000)
        domains.add(web.settings, tunnel, f"d{tunnel.id}.customer.test")
        token, _ = apitokens.create(user, "victim")
    return tunnel.id, token.id


def call(web, method, rule, n, ids, session=None, headers=None):
    tunnel_id, token_id = ids
    path = rule.replace("<id>", str(token_id if rule.startswith("/api/tokens") else tunnel_id))
    path = path.replace("<hostname>", f"d{tunnel_id}.customer.test")
    body = REQUESTS[(method, rule)]
    if body is not None:
        body = {k: (v.format(n=n) if isinstance(v, str) else v) for k, v in body.items()}
    client = session or requests
    return client.request(method, web.url + path, json=body, headers=headers)


def run_matrix(web, world, principal):
    results = {}
    for method, rule, _ in ROUTES:
        n = next(_serial)
        ids = fresh_ids(web, world["alice"])
        if principal == "anonymous":
            r = call(web, method, rule, n, ids)
        elif principal == "cookie":
            r = call(web, method, rule, n, ids, session=world["alice_cookie"])
        elif principal == "bearer":
            r = call(web, method, rule, n, ids, headers={"Authorization": f"Bearer {world['alice_token']}"})
        elif principal == "other user":
            r = call(web, method, rule, n, ids, session=world["bob_cookie"])
        results[(method, rule)] = (r.status_code, r.json().get("code"))
    return results


@pytest.mark.parametrize("principal", ["cookie", "bearer"])
def test_owner_may_do_everything(web, world, principal):
    for route, (status, code) in run_matrix(web, world, principal).items():
        assert (status, code) == expected_for(route, (200, None)), (route, status, code)


def test_anonymous_gets_401_everywhere_but_the_document(web, world):
    for route, (status, code) in run_matrix(web, world, "anonymous").items():
        assert (status, code) == expected_for(route, (401, "UNAUTHORIZED")), route


def test_other_user_sees_404_for_owned_ids(web, world):
    for (method, rule), (status, code) in run_matrix(web, world, "other user").items():
        if (method, rule) in ANYONE:
            assert (status, code) == ANYONE[(method, rule)], (method, rule)
        elif "<id>" in rule:
            assert (status, code) == (404, "NOT_FOUND"), (method, rule)
        else:
            assert status == 200, (method, rule)  # their own (empty) collections
    # and alice's things are untouched
    r = world["alice_cookie"].get(web.url + "/api/tunnels").json()["tunnels"]
    assert all(t["name"] == "t" and t["local_port"] == 3000 for t in r)


def test_disabled_user_cut_off(web, world):
    with database.connection_context():
        User.update(disabled=True).where(User.id == world["alice"].id).execute()
    for principal in ("cookie", "bearer"):
        for route, (status, code) in run_matrix(web, world, principal).items():
            assert (status, code) == expected_for(route, (401, "UNAUTHORIZED")), (principal, route, status, code)


def test_subdomain_race_one_winner(web):
    """Two users (two threads, released together) ask for the same subdomain."""
    users = [create_user(f"racer{i}@example.com", f"racer{i}") for i in range(2)]
    sessions = [login_session(web, u.email) for u in users]
    for round_ in range(5):
        barrier = threading.Barrier(2)
        results = [None, None]

        def go(i):
            barrier.wait()
            results[i] = sessions[i].post(web.url + "/api/tunnels", json={
                "name": "race", "subdomain": f"contested{round_}", "local_port": 3000})

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        statuses = sorted((r.status_code, r.json().get("code")) for r in results)
        assert statuses == [(200, None), (400, "SUBDOMAIN_TAKEN")], statuses
