"""/api/openapi.json documents exactly the API the app serves."""

from __future__ import annotations

import re

import requests

METHODS = {"get", "post", "put", "patch", "delete"}


# Routes for scripts outside /api that the document covers too.
SCRIPT_ROUTES = {("post", "/login"), ("post", "/logout"), ("get", "/healthz")}


def served_routes(app) -> set[tuple[str, str]]:
    routes = {(r.method.lower(), re.sub(r"<(\w+)>", r"{\1}", r.rule)) for r in app.routes}
    return {r for r in routes if r[1].startswith("/api/") or r in SCRIPT_ROUTES}


def documented_routes(doc) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in doc["paths"].items() for method in ops if method in METHODS}


def test_every_route_documented_and_every_documented_route_exists(web):
    r = requests.get(web.url + "/api/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert served_routes(web.app) == documented_routes(doc)


def test_documented_routes_answer(web, alice_session):
    """Each documented (method, path) reaches a handler: no 404-for-route or 405."""
    doc = requests.get(web.url + "/api/openapi.json").json()
    for method, path in documented_routes(doc):
        if path == "/logout":
            continue  # would end the session the other calls use
        r = alice_session.request(method, web.url + path.replace("{id}", "999999"))
        assert r.status_code != 405, (method, path)
        if r.status_code == 404:
            assert r.json()["message"] != "No such endpoint", (method, path)


def test_refs_resolve_and_operations_are_complete(web):
    doc = requests.get(web.url + "/api/openapi.json").json()
    text = str(doc)
    for ref in re.findall(r"#/components/schemas/(\w+)", text):
        assert ref in doc["components"]["schemas"], ref
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and "200" in op["responses"], (method, path)
            if "{id}" in path:
                assert any(p["name"] == "id" for p in op["parameters"]), (method, path)


def test_document_is_valid_openapi(web):
    from openapi_spec_validator import validate
    validate(requests.get(web.url + "/api/openapi.json").json())


def test_session_scheme_names_the_cookie_in_use(settings):
    from support.web_server import running_web_app
    for scheme, cookie in (("https", "__Host-intunnel_session"), ("http", "intunnel_session")):
        with running_web_app(settings, public_scheme=scheme) as web:
            doc = requests.get(web.url + "/api/openapi.json").json()
            assert doc["components"]["securitySchemes"]["session"]["name"] == cookie
