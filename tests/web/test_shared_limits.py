"""Rate limits and login throttles counted in the database (PostgreSQL): the same
arithmetic as the in-memory limiter, atomic across connections, pruned, and one
budget for two real `intunnel web` processes on one database."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

import pytest
import requests

from intunnel import accounts, apitokens
from intunnel.ratelimit import ManualClock, RateLimiter
from intunnel.sharedlimits import DatabaseRateLimiter, RateLimit, limiter_for
from support.backends import database_env
from support.tunnel import free_port, wait_for
from support.web_server import answers_200

PASSWORD = "correct horse battery"


# --- the limiter, on both backends (the table exists on both) ------------------------

def test_same_decisions_as_the_in_memory_limiter(db):
    clock = ManualClock(1000.0)
    for limit in (0, 1, 3):
        memory, shared = RateLimiter(limit, 60, clock), DatabaseRateLimiter(f"test{limit}", limit, 60, clock)
        for step in range(12):  # windows open, fill, refuse, end; 13 s steps cross their ends
            for key in ("a", "b"):
                assert shared.hit(key) == memory.hit(key), (limit, step, key)
                assert shared.peek(key) == memory.peek(key), (limit, step, key)
            clock.advance(13)
        memory.reset("a")
        shared.reset("a")
        assert shared.peek("a") == memory.peek("a") and shared.hit("a") == memory.hit("a")
    clock.advance(-500)  # a clock that went back opens a new window, as in memory
    assert shared.hit("b") == memory.hit("b")


def test_concurrent_hits_are_counted_once_each(db, settings):
    from intunnel.models import database
    limiter = DatabaseRateLimiter("race", 50, 60, ManualClock())
    allowed = []

    def worker():
        with database.connection_context():  # a connection of its own
            allowed.extend(limiter.hit("k").allowed for _ in range(20))
    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(allowed) == 120 and allowed.count(True) == 50


def test_keys_are_stored_hashed_and_ended_windows_pruned(db):
    import intunnel.sharedlimits as shared
    clock = ManualClock(5000.0)
    limiter = DatabaseRateLimiter("login_address", 5, 60, clock)
    limiter.hit("name:someone typed a secret here 127.0.0.1")
    (row,) = RateLimit.select()
    assert "secret" not in row.key_hash and len(row.key_hash) == 64
    clock.advance(60 + shared.PRUNE_INTERVAL)
    limiter.hit("other")
    assert [r.key_hash for r in RateLimit.select()] != [row.key_hash] and RateLimit.select().count() == 1


def test_the_backend_picks_the_store(settings):
    limiter = limiter_for(settings, "api_get", 100, 60, ManualClock())
    expected = DatabaseRateLimiter if settings.db_backend == "postgresql" else RateLimiter
    assert type(limiter) is expected


# --- two real web processes, one database ---------------------------------------------

@contextlib.contextmanager
def web_processes(settings, count: int = 2):
    ports = [free_port() for _ in range(count)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTUNNEL_")}
    env.update(INTUNNEL_CONFIG="", INTUNNEL_DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1",
               INTUNNEL_WEB_METRICS_LISTEN="", **database_env(settings))
    procs = [subprocess.Popen([sys.executable, "-m", "intunnel.cli", "web"],
                              env={**env, "INTUNNEL_WEB_LISTEN": f"127.0.0.1:{port}"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, proc in zip(urls, procs):
            wait_for(lambda: proc.poll() is not None or answers_200(url + "/healthz"), 30, message=f"{url} up")
            assert proc.poll() is None, proc.communicate()[0]
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            out = proc.communicate(timeout=15)[0]
            assert "Traceback" not in out, out


def _postgresql_only(settings):
    if settings.db_backend != "postgresql":
        pytest.skip("SQLite: one web process, counters in its memory (the documented default)")


def test_two_web_processes_share_one_api_budget(settings, db):
    _postgresql_only(settings)
    user = accounts.create_user("alice@example.com", "alice", PASSWORD)
    _, secret = apitokens.create(user, "script")
    auth = {"Authorization": f"Bearer {secret}"}
    with web_processes(settings) as urls:
        for i in range(100):  # the documented 100 GETs a minute, alternating processes
            r = requests.get(urls[i % 2] + "/api/tunnels", headers=auth, timeout=10)
            assert r.status_code == 200, (i, r.text)
            assert r.headers["X-RateLimit-Limit"] == "100"
            assert r.headers["X-RateLimit-Remaining"] == str(99 - i), i
        resets = set()
        for url in urls:  # the 101st is refused by either
            r = requests.get(url + "/api/tunnels", headers=auth, timeout=10)
            assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED", r.text
            assert r.headers["X-RateLimit-Remaining"] == "0" and 1 <= int(r.headers["Retry-After"]) <= 60
            resets.add(r.headers["X-RateLimit-Reset"])
        assert len(resets) == 1  # one window
        # writes have their own budget, shared the same way: 20 a minute
        for i in range(20):
            r = requests.post(urls[i % 2] + "/api/tokens", json={"name": f"t{i}"}, headers=auth, timeout=10)
            assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == str(19 - i), (i, r.text)
        assert requests.post(urls[1] + "/api/tokens", json={"name": "x"}, headers=auth,
                             timeout=10).status_code == 429


def test_two_web_processes_share_one_login_throttle(settings, db):
    _postgresql_only(settings)
    accounts.create_user("alice@example.com", "alice", PASSWORD)
    with web_processes(settings) as urls:
        for i in range(settings.login_max_failures):  # 5 wrong passwords, alternating processes
            r = requests.post(urls[i % 2] + "/login", json={"email": "alice@example.com", "password": "wrong"},
                              timeout=10)
            assert r.status_code == 401, (i, r.text)
        for url in urls:  # now throttled by both, even with the right password
            r = requests.post(url + "/login", json={"email": "alice@example.com", "password": PASSWORD},
                              timeout=10)
            assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED" and r.headers["Retry-After"]
        # one count per account, whichever name it is given as: the username is throttled too
        r = requests.post(urls[0] + "/login", json={"email": "alice", "password": PASSWORD}, timeout=10)
        assert r.status_code == 429
