"""The client's local inspector (issue 15), end to end: a real relay, the real client in a
subprocess (inspector on), a real local app; what came through is asserted with the JSON API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import re
import socket

import pytest

from intunnel.client.inspect.capture import Store
from intunnel.client.inspect.server import Inspector
from bench import procs
from tests.support.tunnel import (HttpUpstream, RelayThread, WebSocketUpstream, _Process, _python_env, make_tunnel,
                                  pattern_sha256, visit, wait_for)

HOST = "myapp.localhost"


def client(relay, tunnel, app, *argv):
    return _Process(["http", str(app.port), "--server", relay.url, "--token", tunnel.token, *argv], _python_env({}))


class Api:
    """Talks to the inspector at the URL the client printed."""

    def __init__(self, proc):
        m = proc.wait_line(r"^inspect: http://127\.0\.0\.1:(\d+)/\?secret=([\w-]+)$")
        self.port, self.secret = int(m.group(1)), m.group(2)

    def call(self, method, path, body=None, headers=None, auth=True):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Host": f"127.0.0.1:{self.port}"}
        if auth:
            h["Authorization"] = f"Bearer {self.secret}"
        if body is not None and not isinstance(body, bytes):
            body, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        h.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), (json.loads(data) if data and
                                                    r.getheader("content-type") == "application/json" else data)
        finally:
            conn.close()

    def listed(self, query=""):
        status, _, data = self.call("GET", "/api/requests/http" + query)
        assert status == 200, data
        return data["requests"]

    def wait_done(self, uri, count=1, query=""):
        def found():
            got = [x for x in self.listed(query) if x["request"]["uri"] == uri and x["state"] == "done"]
            return got if len(got) >= count else None
        return wait_for(found, message=f"{uri} in the inspector")

    def detail(self, rid):
        status, _, data = self.call("GET", f"/api/requests/http/{rid}")
        assert status == 200, data
        return data


@pytest.fixture
def tunnel(settings, db):
    with HttpUpstream() as app, RelayThread(settings) as relay:
        yield relay, make_tunnel(settings, "myapp", local_port=app.port), app


def body_of(part) -> bytes:
    return base64.b64decode(part["body"]["data"])


def test_requests_through_the_public_url_appear_with_their_fields(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        proc.wait_line(r"^connected: ")
        assert visit(relay.port, HOST, "/search?q=tunnel&page=2")[0] == 200
        payload = json.dumps({"event": "push", "n": 1}).encode()
        assert visit(relay.port, HOST, "/hook", "POST", payload, {"Content-Type": "application/json"})[0] == 200
        assert visit(relay.port, HOST, "/form", "POST", b"a=1&b=two",
                     {"Content-Type": "application/x-www-form-urlencoded"})[0] == 200
        assert visit(relay.port, HOST, "/status?code=304")[0] == 304
        assert visit(relay.port, HOST, "/chunked?parts=3")[0] == 200
        assert visit(relay.port, HOST, "/head-me", "HEAD")[0] == 200
        upload = bytes(range(256)) * (10 * 1024 * 1024 // 256)
        assert visit(relay.port, HOST, "/upload-10m", "POST", upload)[0] == 200
        (up,) = api.wait_done("/upload-10m")
        assert (up["request"]["body"]["size"], up["request"]["body"]["kept"]) == (len(upload), 64 * 1024)
        (head,) = api.wait_done("/head-me")
        assert head["response"]["status_code"] == 200 and head["response"]["body"]["size"] == 0
        (get,) = api.wait_done("/search?q=tunnel&page=2")
        assert get["request"]["method"] == "GET" and get["response"]["status_code"] == 200
        assert get["remote_addr"] == "127.0.0.1" and get["replay"] is False
        assert get["duration_ms"] >= 0 and get["request"]["host"].startswith(HOST)
        (hook,) = api.wait_done("/hook")
        d = api.detail(hook["id"])
        assert body_of(d["request"]) == payload and d["request"]["body"]["size"] == len(payload)
        assert d["request"]["body"]["content_type"] == "application/json"
        assert ["Content-Type", "application/json"] in d["request"]["headers"]
        assert json.loads(body_of(d["response"]))["body_length"] == len(payload)
        assert d["response"]["head"].startswith("HTTP/1.1 200 ")
        (s304,) = api.wait_done("/status?code=304")
        assert s304["response"]["status_code"] == 304
        (ch,) = api.wait_done("/chunked?parts=3")
        assert body_of(api.detail(ch["id"])["response"]) == b"part 0\npart 1\npart 2\n"
        assert ch["response"]["body"]["size"] == len(b"part 0\npart 1\npart 2\n")
        # filters and limit
        assert [x["request"]["uri"] for x in api.listed("?method=post")] == ["/upload-10m", "/form", "/hook"]
        assert [x["request"]["uri"] for x in api.listed("?status=3xx")] == ["/status?code=304"]
        assert [x["request"]["uri"] for x in api.listed("?path=search")] == ["/search?q=tunnel&page=2"]
        assert len(api.listed("?limit=2")) == 2
        assert not any("hook" in line or "push" in line for line in proc.lines), proc.lines   # nothing logged


def test_body_limit_keeps_the_first_bytes_and_counts_the_rest(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "--inspect", "127.0.0.1:0", "--inspect-body-limit", "1000") as proc:
        api = Api(proc)
        body = bytes(range(256)) * 20
        assert visit(relay.port, HOST, "/upload", "PUT", body, {"Content-Type": "application/octet-stream"})[0] == 200
        (x,) = api.wait_done("/upload")
        d = api.detail(x["id"])
        assert body_of(d["request"]) == body[:1000]
        assert d["request"]["body"] == {**d["request"]["body"], "size": 5120, "kept": 1000, "truncated": True}


def test_a_64_mib_download_is_byte_exact_and_the_store_stays_bounded(tunnel):
    relay, t, app = tunnel
    size = 64 << 20
    with client(relay, t, app, "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        assert visit(relay.port, HOST, "/warm-up")[0] == 200
        before = procs.status_kib(proc.pid, "VmHWM")
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=60)
        conn.request("GET", f"/download?size={size}", headers={"Host": HOST})
        r = conn.getresponse()
        h = hashlib.sha256()
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
        conn.close()
        assert h.hexdigest() == pattern_sha256(size)
        (x,) = api.wait_done(f"/download?size={size}")
        body = api.detail(x["id"])["response"]["body"]
        assert (body["size"], body["kept"], body["truncated"]) == (size, 64 * 1024, True)
        # nothing held the body: the client's peak memory grew by far less than it
        assert procs.status_kib(proc.pid, "VmHWM") - before < 24 * 1024


def test_600_exchanges_leave_the_last_500(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
        for i in range(600):
            conn.request("GET", f"/n/{i}", headers={"Host": HOST})
            assert conn.getresponse().read()
        conn.close()
        api.wait_done("/n/599")
        listed = api.listed("?limit=1000")
        assert len(listed) == 500
        assert listed[0]["request"]["uri"] == "/n/599" and listed[-1]["request"]["uri"] == "/n/100"


def test_sse_events_show_as_they_arrive(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        sock.sendall(f"GET /sse?n=2&interval=4 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())

        def first_event():
            found = [x for x in api.listed() if x["request"]["uri"] == "/sse?n=2&interval=4"]
            if not found or found[0]["state"] != "open":
                return None
            data = body_of(api.detail(found[0]["id"])["response"]) if found[0]["response"] else b""
            return data if b"id: 0" in data else None
        data = wait_for(first_event, message="the first event while the stream is open")
        assert b"id: 1" not in data
        got = b""
        while b"id: 1" not in got:
            chunk = sock.recv(65536)
            assert chunk
            got += chunk
        sock.close()
        (x,) = api.wait_done("/sse?n=2&interval=4")
        assert b"id: 1" in body_of(api.detail(x["id"])["response"])


def test_a_websocket_shows_its_upgrade_and_byte_counts(settings, db):
    from websockets.sync.client import connect
    with WebSocketUpstream() as ws_app, RelayThread(settings) as relay:
        t = make_tunnel(settings, "myapp", local_port=ws_app.port)
        with client(relay, t, ws_app, "--inspect", "127.0.0.1:0") as proc:
            api = Api(proc)
            proc.wait_line(r"^connected: ")
            sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
            with connect(f"ws://{HOST}:{relay.port}/chat", sock=sock, ping_interval=None) as ws:
                noise = os.urandom(1000)   # (permessage-deflate would shrink a repeated text)
                ws.send(noise)
                assert ws.recv(timeout=5) == noise

                def upgraded():
                    found = [x for x in api.listed() if x["request"]["uri"] == "/chat"]
                    return found and found[0]["state"] == "upgraded" and found[0]
                x = wait_for(upgraded, message="the upgrade listed")
                assert x["response"]["status_code"] == 101 and x["upgrade"]["protocol"].lower() == "websocket"
                assert x["upgrade"]["open"] is True
            x = wait_for(lambda: [y for y in api.listed() if y["request"]["uri"] == "/chat" and y["state"] == "done"],
                         message="the upgrade closed")[0]
            assert x["upgrade"]["bytes_in"] > 1000 and x["upgrade"]["bytes_out"] > 1000
            assert x["duration_ms"] is not None


def test_replay_and_edited_replay_reach_the_local_app_and_are_listed(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        assert visit(relay.port, HOST, "/hook?x=1", "POST", b'{"a":1}', {"Content-Type": "application/json",
                                                                         "X-Sig": "abc"})[0] == 200
        (orig,) = api.wait_done("/hook?x=1")
        seen = len(app.seen)
        status, _, rep = api.call("POST", "/api/requests/http", {"id": orig["id"]})
        assert status == 201, rep
        assert rep["replay"] is True and rep["replay_of"] == orig["id"] and rep["response"]["status_code"] == 200
        wait_for(lambda: len(app.seen) > seen)
        method, path, headers = app.seen[-1]
        assert (method, path, headers.get("X-Sig")) == ("POST", "/hook?x=1", "abc")
        assert json.loads(body_of(rep["response"]))["body_sha256"] == hashlib.sha256(b'{"a":1}').hexdigest()
        status, _, ed = api.call("POST", "/api/requests/http", {"id": orig["id"], "method": "PUT", "path": "/edited",
                                                               "headers": [["Host", HOST], ["X-Sig", "changed"]],
                                                               "body": "new body"})
        assert status == 201, ed
        method, path, headers = app.seen[-1]
        assert (method, path, headers.get("X-Sig")) == ("PUT", "/edited", "changed")
        assert json.loads(body_of(ed["response"]))["body_length"] == len(b"new body")
        listed = api.listed()
        assert [x["replay"] for x in listed[:3]] == [True, True, False]
        assert api.call("POST", "/api/requests/http", {"id": "ex_nope"})[0] == 404
        assert api.call("POST", "/api/requests/http", {"id": orig["id"], "path": "no slash"})[2]["code"] == \
            "INVALID_PATH"
        # clear
        assert api.call("DELETE", "/api/requests/http")[0] == 204
        assert api.listed() == []
        assert api.call("GET", f"/api/requests/http/{orig['id']}")[0] == 404


def test_the_inspector_refuses_foreign_hosts_missing_secrets_and_cross_origin_writes(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        assert api.call("GET", "/api/requests/http", headers={"Host": "evil.example:80"})[0] == 403
        assert api.call("GET", "/api/requests/http", headers={"Host": "127.0.0.1"})[0] == 403
        status, _, err = api.call("GET", "/api/requests/http", auth=False)
        assert status == 401 and err["error"] is True and err["code"] == "SECRET_REQUIRED"
        assert api.call("GET", "/", auth=False)[0] == 401
        assert api.call("GET", "/api/requests/http", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert api.call("GET", "/?secret=wrong", auth=False)[0] == 403
        # the printed URL: sets the cookie, then the page and the API work with it alone
        status, headers, _ = api.call("GET", f"/?secret={api.secret}", auth=False)
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        status, headers, page = api.call("GET", "/", auth=False, headers={"Cookie": cookie})
        assert status == 200 and b"<title>intunnel inspector</title>" in page
        assert api.call("GET", "/api/requests/http", auth=False, headers={"Cookie": cookie})[0] == 200
        # writes from another origin or site
        for foreign in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "null"}):
            assert api.call("DELETE", "/api/requests/http", headers=foreign)[2]["code"] == "CROSS_ORIGIN"
            assert api.call("POST", "/api/requests/http", {"id": "x"}, headers=foreign)[0] == 403
        assert api.call("DELETE", "/api/requests/http",
                        headers={"Origin": f"http://127.0.0.1:{api.port}", "Sec-Fetch-Site": "same-origin"})[0] == 204
        # a form post (no JSON content type) can't replay
        status, _, err = api.call("POST", "/api/requests/http", b"id=x",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 415
        # bounded
        assert api.call("GET", "/api/requests/http", headers={"X-Big": "a" * 20000})[0] == 431


def listening_ports(pid: int) -> set:
    """TCP ports ``pid`` listens on (its sockets' inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_no_inspect_serves_no_port(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "--no-inspect") as proc:
        proc.wait_line(r"^connected: ")
        assert visit(relay.port, HOST, "/x")[0] == 200
        assert listening_ports(proc.pid) == set()
        assert not any(line.startswith("inspect:") for line in proc.lines)
    with client(relay, t, app, "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        proc.wait_line(r"^connected: ")
        assert listening_ports(proc.pid) == {api.port}


@pytest.mark.parametrize("where", ["0.0.0.0:4040", "192.0.2.1:4040", "example.com:4040", "127.0.0.1:x"])
def test_a_non_loopback_inspect_address_is_refused_in_one_line(tunnel, where):
    relay, t, app = tunnel
    with client(relay, t, app, "--inspect", where) as proc:
        assert proc.proc.wait(15) == 2
        wait_for(lambda: proc.lines)
        assert len(proc.lines) == 1 and proc.lines[0].startswith("intunnel: --inspect "), proc.lines


def test_a_taken_port_given_exits_2_and_the_default_moves_to_the_next(tunnel):
    relay, t, app = tunnel
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with client(relay, t, app, "--inspect", f"127.0.0.1:{port}") as proc:
            assert proc.proc.wait(15) == 2
            wait_for(lambda: proc.lines)
            assert proc.lines[0].startswith(f"intunnel: the inspector can't listen on 127.0.0.1:{port}"), proc.lines

        async def default_start():
            inspector = Inspector(Store(), lambda: ("127.0.0.1", 1), lambda: None)
            await inspector.start("127.0.0.1", port, next_free=True)
            inspector.close()
            return inspector.port
        assert asyncio.run(default_start()) not in (port, 0)
    finally:
        taken.close()


def test_past_the_limit_a_big_body_goes_through_the_kernel_byte_exact(settings, db, monkeypatch):
    """With the inspector on, the client moves the rest of a big body by splice(2) (as with
    --no-inspect), after the capture kept its first bytes; in process, to see the client's pumps."""
    from intunnel.client import data
    from intunnel.wire import zerocopy
    from tests.support.tunnel import read_response, tunnel_setup
    if not zerocopy.AVAILABLE:
        pytest.skip("no splice(2) here (INTUNNEL_PORTABLE or not Linux)")
    started, real = [], data.pump_through_kernel

    def spy(src, dst, on_eof, on_error, limit=None, on_moved=None, on_limit=None, on_refused=None):
        ok = real(src, dst, on_eof, on_error, limit, on_moved, lambda: (finished.append(limit), on_limit()),
                  on_refused)
        if ok:
            started.append(limit)
        return ok
    finished = []
    monkeypatch.setattr(data, "pump_through_kernel", spy)
    inspector = Inspector(Store(), lambda: ("127.0.0.1", 1), lambda: None)
    size = 16 * 1024 * 1024 + 7
    with tunnel_setup(settings, client_kwargs={"inspector": inspector}) as t:
        for _ in range(2):   # the second on the same data connection: HTTP is followed again after it
            with socket.create_connection(("127.0.0.1", t.relay.port), timeout=30) as sock:
                sock.sendall(f"GET /download?size={size} HTTP/1.1\r\nHost: {t.host}\r\n\r\n".encode())
                with sock.makefile("rb") as f:
                    status, _, body = read_response(f)
            assert status == 200 and hashlib.sha256(body).hexdigest() == pattern_sha256(size)
        done = wait_for(lambda: [r for r in inspector.store.records() if r.state == "done"][1:] and
                        inspector.store.records(), message="both done")
        for record in done:
            assert (record.target, record.response.size, len(record.response.kept)) == \
                (f"/download?size={size}", size, 64 * 1024)
        assert len(started) == 2 and started == finished and all(n > size - 64 * 1024 - (1 << 20) for n in started)
        upload = bytes(range(256)) * (size // 256)
        status, _, answer = visit(t.relay.port, t.host, "/upload-big", "POST", upload, timeout=60)
        assert status == 200 and json.loads(answer)["body_sha256"] == hashlib.sha256(upload).hexdigest()
        (up,) = wait_for(lambda: [r for r in inspector.store.records() if r.target == "/upload-big" and
                                  r.state == "done"], message="the upload done")
        assert (up.request.size, len(up.request.kept)) == (len(upload), 64 * 1024)
        assert len(started) == 3 and started == finished and started[2] > len(upload) - 64 * 1024 - (1 << 20)


def test_after_a_101_both_directions_go_through_the_kernel_and_are_counted(settings, db, monkeypatch):
    """With the inspector on, an upgraded connection (a WebSocket) is no longer carried by the
    event loop: after the 101 both directions are spliced by the kernel until it closes, as with
    --no-inspect, and the record still counts their bytes; in process, to see the client's pumps."""
    from websockets.sync.client import connect
    from intunnel.client import data
    from intunnel.wire import zerocopy
    from tests.support.tunnel import tunnel_setup
    if not zerocopy.AVAILABLE:
        pytest.skip("no splice(2) here (INTUNNEL_PORTABLE or not Linux)")
    started, real = [], data.pump_through_kernel

    def spy(src, dst, on_eof, on_error, limit=None, on_moved=None, on_limit=None, on_refused=None):
        ok = real(src, dst, on_eof, on_error, limit, on_moved, on_limit, on_refused)
        if ok:
            started.append(limit)
        return ok
    monkeypatch.setattr(data, "pump_through_kernel", spy)
    inspector = Inspector(Store(), lambda: ("127.0.0.1", 1), lambda: None)
    with WebSocketUpstream() as ws_app, \
            tunnel_setup(settings, client_kwargs={"inspector": inspector}, upstream=ws_app) as t:
        sock = socket.create_connection(("127.0.0.1", t.relay.port), timeout=30)
        sent = 0
        with connect(f"ws://{t.host}:{t.relay.port}/chat", sock=sock, ping_interval=None,
                     max_size=None) as ws:
            for size in (1000, 3 * 1024 * 1024, 10):
                message = os.urandom(size)
                ws.send(message)
                assert ws.recv(timeout=30) == message
                sent += size
            wait_for(lambda: len(started) == 2, message="both directions handed to the kernel")
        assert started == [None, None]
        (record,) = wait_for(lambda: [r for r in inspector.store.records() if r.state == "done"],
                             message="the upgrade closed")
        assert record.upgraded and record.status == 101
        assert record.raw_up > sent and record.raw_down > sent   # the frames, their headers and the close


def test_intunnel_start_has_one_inspector_for_its_tunnels_and_replays_to_each_ones_app(settings, db, tmp_path):
    with HttpUpstream() as web_app, HttpUpstream() as shop_app, RelayThread(settings) as relay:
        web = make_tunnel(settings, "web", local_port=web_app.port)
        shop = make_tunnel(settings, "shop", local_port=shop_app.port)
        path = tmp_path / "intunnel" / "config.toml"
        path.parent.mkdir(parents=True)
        path.write_text(f'[tunnels.web]\nserver = "{relay.url}"\ntoken = "{web.token}"\nport = {web_app.port}\n\n'
                        f'[tunnels.shop]\nserver = "{relay.url}"\ntoken = "{shop.token}"\nport = {shop_app.port}\n')
        env = _python_env({"XDG_CONFIG_HOME": str(tmp_path)})
        with _Process(["start", "--all", "--inspect", "127.0.0.1:0"], env) as proc:
            m = proc.wait_line(r"^web +\| inspect: http://127\.0\.0\.1:(\d+)/\?secret=([\w-]+)$")
            proc.wait_line(r"^shop +\| inspect: " + re.escape(f"http://127.0.0.1:{m.group(1)}/?secret={m.group(2)}"))
            proc.wait_line(r"^web +\| connected: ")
            proc.wait_line(r"^shop +\| connected: ")
            api = Api.__new__(Api)
            api.port, api.secret = int(m.group(1)), m.group(2)
            assert visit(relay.port, "web.localhost", "/to-web")[0] == 200
            assert visit(relay.port, "shop.localhost", "/to-shop")[0] == 200
            (to_web,) = api.wait_done("/to-web")
            (to_shop,) = api.wait_done("/to-shop")
            assert to_web["public_url"].startswith("http://web.localhost:")
            assert to_shop["public_url"].startswith("http://shop.localhost:")
            for x, app in ((to_web, web_app), (to_shop, shop_app)):
                seen = len(app.seen)
                assert api.call("POST", "/api/requests/http", {"id": x["id"]})[0] == 201
                assert len(app.seen) == seen + 1 and app.seen[-1][1] == x["request"]["uri"]


def test_verbose_and_the_inspector_watch_the_same_connection(tunnel):
    relay, t, app = tunnel
    with client(relay, t, app, "-v", "--inspect", "127.0.0.1:0") as proc:
        api = Api(proc)
        big = 3 * 1024 * 1024
        assert visit(relay.port, HOST, f"/download?size={big}")[0] == 200
        assert visit(relay.port, HOST, "/after")[0] == 200
        proc.wait_line(rf"^GET /download\?size={big} -> 200 {big} B ")
        proc.wait_line(r"^GET /after -> 200 \d+ B ")
        (x,) = api.wait_done(f"/download?size={big}")
        assert x["response"]["body"]["size"] == big
        api.wait_done("/after")
