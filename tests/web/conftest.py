"""Fixtures for the web app tests: a real server (web_server: cheroot by default) on port 0, a fresh
SQLite file per test, a manual clock for the rate limits, users to log in as."""

from __future__ import annotations

import os
import shutil

import pytest
import requests

from intunnel import accounts
from intunnel.models import User, database
from intunnel.ratelimit import ManualClock
from support.web_server import running_web_app

PASSWORD = "correct horse battery"


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def web(settings, clock):
    with running_web_app(settings, clock=clock) as running:
        yield running


def create_user(email: str, username: str, password: str = PASSWORD, disabled: bool = False) -> User:
    with database.connection_context():
        user = accounts.create_user(email, username, password)
        if disabled:
            User.update(disabled=True).where(User.id == user.id).execute()
    return user


def login_session(web, email: str, password: str = PASSWORD) -> requests.Session:
    session = requests.Session()
    r = session.post(web.url + "/login", data={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return session


@pytest.fixture
def alice(web):
    return create_user("alice@example.com", "alice")


@pytest.fixture
def alice_session(web, alice):
    with login_session(web, "alice@example.com") as s:
        yield s


@pytest.fixture
def curl_binary():
    """The real curl (scripts/test.sh installs it); skip on a laptop without it, fail in CI."""
    found = shutil.which("curl")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("curl is required in CI but not installed")
    pytest.skip("curl not installed")
