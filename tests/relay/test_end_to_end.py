"""Real relay + real client + real upstream on loopback: plain HTTP through the tunnel."""

from __future__ import annotations

import json

from tests.support.tunnel import tunnel_setup


def test_plain_get_reaches_the_local_app_with_forwarded_headers(settings, db):
    with tunnel_setup(settings) as t:
        assert t.public_url == f"http://myapp.localhost:{t.relay.port}"
        status, headers, body = t.get("/hello?x=1")
        assert status == 200
        echo = json.loads(body)
        assert echo["method"] == "GET" and echo["path"] == "/hello?x=1"
        assert echo["headers"]["Host"] == t.host
        assert echo["headers"]["X-Forwarded-For"] == "127.0.0.1"
        assert echo["headers"]["X-Forwarded-Proto"] == "http"
        assert echo["headers"]["X-Forwarded-Host"] == t.host


def test_post_body_arrives_byte_for_byte(settings, db):
    with tunnel_setup(settings) as t:
        body = bytes(range(256)) * 4000
        status, _, data = t.get("/upload", method="POST", body=body)
        import hashlib
        assert status == 200
        assert json.loads(data)["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_verbose_client_prints_one_line_per_request(settings, db):
    with tunnel_setup(settings, client_kwargs={"verbose": True}) as t:
        t.get("/first")
        t.get("/download?size=1000")
        t.get("/missing", method="HEAD")
        from tests.support.tunnel import wait_for
        lines = wait_for(lambda: [l for l in t.client.lines if " -> " in l and " B " in l][:3]
                         if sum(" B " in l for l in t.client.lines) >= 3 else None, 5, message="3 request lines")
        assert lines[0].startswith("GET /first -> 200 ")
        assert lines[1].startswith("GET /download?size=1000 -> 200 1000 B ")
        assert lines[2].startswith("HEAD /missing -> 200 0 B ") and lines[2].endswith(" ms")
