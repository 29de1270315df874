"""Input rules: each failure names its field."""

from __future__ import annotations

import pytest

from intunnel import validation
from intunnel.errors import ValidationError
from intunnel.settings import load_settings


@pytest.mark.parametrize("value, expected", [("myapp", "myapp"), ("MyApp", "myapp"), (" a-b ", "a-b"),
                                             ("a", "a"), ("0", "0"), ("a" * 63, "a" * 63), ("x1-2-3", "x1-2-3")])
def test_subdomain_ok(value, expected):
    assert validation.subdomain(value) == expected


@pytest.mark.parametrize("value", ["", "-a", "a-", "a_b", "a.b", "a" * 64, "ü", "a b", 5, None, ["a"]])
def test_subdomain_bad(value):
    with pytest.raises(ValidationError) as e:
        validation.subdomain(value)
    assert e.value.field == "subdomain" and "subdomain" in e.value.message


def test_reserved_subdomains_include_web_host_label():
    settings = load_settings(env={}, overrides={"domain": "tunnels.example.com"})
    reserved = validation.reserved_subdomains(settings)
    assert {"www", "api", "admin", "app", "mail", "static", "tunnels"} <= reserved
    with pytest.raises(ValidationError, match="reserved"):
        validation.subdomain("Admin", reserved)


@pytest.mark.parametrize("value", [1, 80, 65535])
def test_port_ok(value):
    assert validation.local_port(value) == value


@pytest.mark.parametrize("value", [0, -1, 65536, "80", 80.0, True, None])
def test_port_bad(value):
    with pytest.raises(ValidationError) as e:
        validation.local_port(value)
    assert e.value.field == "local_port"


def test_name_trimmed_and_bounded():
    assert validation.name("  My Web App  ") == "My Web App"
    assert validation.name("x" * 100) == "x" * 100
    for bad in ("", "   ", "x" * 101, "a\nb", 3, None):
        with pytest.raises(ValidationError) as e:
            validation.name(bad)
        assert e.value.field == "name"


def test_email_username_password():
    assert validation.email(" John@Example.COM ") == "john@example.com"
    with pytest.raises(ValidationError):
        validation.email("not-an-email")
    assert validation.username("johndoe") == "johndoe"
    with pytest.raises(ValidationError):
        validation.username("x")
    with pytest.raises(ValidationError):
        validation.password("short")
