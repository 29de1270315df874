"""Rate limits: the pure arithmetic, then the seed's table through a real server
with an injected clock (no sleeping)."""

from __future__ import annotations

import requests

from intunnel.ratelimit import ManualClock, RateLimiter

from conftest import create_user, login_session


# --- pure arithmetic --------------------------------------------------------------

def test_limiter_window_boundaries():
    clock = ManualClock(1000.0)
    limiter = RateLimiter(3, 60, clock)
    assert [limiter.hit("k").remaining for _ in range(3)] == [2, 1, 0]
    refused = limiter.hit("k")
    assert not refused.allowed and refused.reset_at == 1060.0 and refused.retry_after(clock()) == 60
    clock.advance(59.5)
    assert not limiter.hit("k").allowed and limiter.peek("k").retry_after(clock()) == 1
    clock.advance(0.5)
    ok = limiter.hit("k")
    assert ok.allowed and ok.remaining == 2 and ok.reset_at == 1120.0


def test_limiter_keys_are_independent_and_reset():
    clock = ManualClock()
    limiter = RateLimiter(1, 10, clock)
    assert limiter.hit("a").allowed and limiter.hit("b").allowed
    assert not limiter.hit("a").allowed
    limiter.reset("a")
    assert limiter.hit("a").allowed


def test_limiter_memory_is_swept():
    clock = ManualClock()
    limiter = RateLimiter(1, 10, clock)
    for i in range(5000):
        limiter.hit(f"k{i}")
    clock.advance(10)
    limiter.hit("fresh")
    for i in range(5000):  # crossing the threshold sweeps the expired windows
        limiter.hit(f"n{i}")
    assert len(limiter._windows) <= 5001 + 1


def test_peek_does_not_count():
    limiter = RateLimiter(1, 10, ManualClock())
    assert limiter.peek("k").allowed and limiter.peek("k").allowed
    assert limiter.hit("k").allowed and not limiter.peek("k").allowed


# --- through the server ------------------------------------------------------------

def test_101st_get_refused_102nd_after_window_allowed(web, alice_session, clock):
    url = web.url + "/api/tunnels"
    for i in range(100):
        r = alice_session.get(url)
        assert r.status_code == 200, i
        assert r.headers["X-RateLimit-Limit"] == "100"
        assert r.headers["X-RateLimit-Remaining"] == str(99 - i)
        assert int(r.headers["X-RateLimit-Reset"]) == int(clock() + 60)
    r = alice_session.get(url)
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED"
    assert r.headers["Retry-After"] == "60" and r.headers["X-RateLimit-Remaining"] == "0"
    clock.advance(59)
    r = alice_session.get(url)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    clock.advance(1)
    r = alice_session.get(url)
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "99"


def test_limits_are_per_user(web, alice_session, clock):
    create_user("bob@example.com", "bob")
    bob = login_session(web, "bob@example.com")
    for _ in range(100):
        alice_session.get(web.url + "/api/user/profile")
    assert alice_session.get(web.url + "/api/user/profile").status_code == 429
    assert bob.get(web.url + "/api/user/profile").status_code == 200


def test_per_address_before_login(web):
    for _ in range(100):
        assert requests.get(web.url + "/api/tunnels").status_code == 401
    r = requests.get(web.url + "/api/tunnels")
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED" and r.headers["Retry-After"]


def test_writes_20_per_minute(web, alice_session, clock):
    for i in range(20):
        r = alice_session.post(web.url + "/api/tokens", json={"name": f"t{i}"})
        assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "20"
    r = alice_session.delete(web.url + "/api/tokens/1")
    assert r.status_code == 429
    # reads have their own budget
    assert alice_session.get(web.url + "/api/tokens").status_code == 200
    clock.advance(60)
    assert alice_session.delete(web.url + "/api/tokens/1").status_code == 200


def test_regeneration_5_per_hour(web, alice_session, clock):
    r = alice_session.post(web.url + "/api/tunnels", json={"name": "a", "subdomain": "regen", "local_port": 1})
    tid = r.json()["tunnel"]["id"]
    url = web.url + f"/api/tunnels/{tid}/regenerate-token"
    for i in range(5):
        r = alice_session.post(url)
        assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["X-RateLimit-Remaining"] == str(4 - i)
    r = alice_session.post(url)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 3600
    clock.advance(120)  # the per-minute write window is over, the hourly one is not
    r = alice_session.post(url)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 3600 - 120
    assert alice_session.patch(web.url + f"/api/tunnels/{tid}", json={"name": "b"}).status_code == 200
    clock.advance(3600 - 120)
    assert alice_session.post(url).status_code == 200


def test_limits_are_configurable(settings, clock):
    from support.web_server import running_web_app
    with running_web_app(settings, clock=clock, rate_limit_get=2) as web:
        assert [requests.get(web.url + "/api/openapi.json").status_code for _ in range(3)] == [200, 200, 429]


def test_forwarded_for_only_from_a_trusted_proxy(settings, clock):
    from support.web_server import running_web_app

    def exhaust(web, spoof):
        for _ in range(2):
            requests.get(web.url + "/api/tunnels", headers={"X-Forwarded-For": spoof})

    with running_web_app(settings, clock=clock, rate_limit_get=2) as web:
        exhaust(web, "203.0.113.1")
        # untrusted: the header is ignored, so a new "address" does not get a new budget
        assert requests.get(web.url + "/api/tunnels", headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 429
    with running_web_app(settings, clock=clock, rate_limit_get=2, web_trust_proxy=True) as web:
        exhaust(web, "203.0.113.1")
        assert requests.get(web.url + "/api/tunnels", headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 429
        assert requests.get(web.url + "/api/tunnels", headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 401
