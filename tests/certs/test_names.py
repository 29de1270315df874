"""Which hostnames may be added (intunnel.certs.names)."""

from __future__ import annotations

import pytest

from intunnel.certs.names import normalize
from intunnel.errors import ValidationError

DOMAIN = "example.com"


@pytest.mark.parametrize("value, expected", [
    ("app.customer.org", "app.customer.org"),
    ("App.Customer.ORG.", "app.customer.org"),              # case and the root's dot
    ("  www.shop.example.net ", "www.shop.example.net"),
    ("bücher.example.org", "xn--bcher-kva.example.org"),    # IDNA
    ("xn--bcher-kva.example.org", "xn--bcher-kva.example.org"),
    ("a-b.c-d.io", "a-b.c-d.io"),
    ("example.com.au", "example.com.au"),                   # not under example.com
    ("notexample.com", "notexample.com"),
    ("1.2.3.example.org", "1.2.3.example.org"),
])
def test_accepted(value, expected):
    assert normalize(value, DOMAIN) == expected


@pytest.mark.parametrize("value, words", [
    ("", "host name"), (None, "host name"), (42, "host name"),
    ("localhost", "host name"),                             # one label
    ("-app.example.org", "host name"), ("app-.example.org", "host name"),
    ("app..example.org", "host name"), ("app_1.example.org", "host name"),
    ("a b.example.org", "host name"), ("app.example.org/x", "host name"),
    ("*.example.org", "host name"),                         # no wildcards
    ("x" * 64 + ".example.org", "host name"),
    (("a" * 60 + ".") * 5 + "org", "host name"),            # longer than 253
    ("192.0.2.1", "IP address"), ("10.0.0.300", "IP address"),
    ("example.com", "can't be example.com"), ("myapp.example.com", "can't be example.com"),
    ("a.b.EXAMPLE.com", "can't be example.com"),
])
def test_refused(value, words):
    with pytest.raises(ValidationError) as e:
        normalize(value, DOMAIN)
    assert e.value.field == "hostname" and words in e.value.message
