"""scrub_set_cookies: no tunnel response may carry a cookie for the web app's domain (or a parent).

Pure function, no sockets: a table of heads, then properties over random heads.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from intunnel.relay.cookies import scrub_set_cookies

WEB = "example.com"


def head(*headers: str) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 200 OK", *(h.encode("latin-1") for h in headers)])


DROPPED = [
    "Set-Cookie: intunnel_session=x; Domain=example.com; Path=/",
    "Set-Cookie: intunnel_session=x; Domain=.example.com",
    "Set-Cookie: intunnel_session=x; Domain=.EXAMPLE.com",
    "set-cookie: a=b; domain=Example.Com",
    "SET-COOKIE: a=b;Domain=example.com",
    "Set-Cookie: a=b; Domain = example.com ",
    "Set-Cookie: a=b; Domain=example.com.",
    "Set-Cookie: a=b; Domain=com",                          # a parent of the web domain
    "Set-Cookie: a=b; Domain=.com",
    "Set-Cookie: a=b; Path=/; Domain=sub.example.com; Domain=example.com",  # browsers take the last
    "Set-Cookie: a=b; Domain=example.com; Domain=sub.example.com",          # any covering one drops it
    'Set-Cookie: a=b; Domain="example.com"',
    "Set-Cookie: a=b; Domain=%65xample.com",                # a browser may unescape the host
    "Set-Cookie: a=b; Domain=ex\xe4mple.com",                # not plain LDH: fail closed
    "Set-Cookie: a=b; Domain=\uff45xample.com".encode("utf-8").decode("latin-1"),  # fullwidth 'e' (UTF-8)
    "Set-Cookie: __Host-intunnel_session=x; Secure; Path=/; Domain=example.com",
    "Set-Cookie:a=b;Domain=example.com",
    "Set-Cookie: a=b; Max-Age=10;\tDomain=example.com",
]

KEPT = [
    "Set-Cookie: app=1",                                     # host-only: the tunnel's own host
    "Set-Cookie: app=1; Path=/; HttpOnly",
    "Set-Cookie: app=1; Domain=myapp.example.com",           # the tunnel's host itself
    "Set-Cookie: app=1; Domain=.deep.myapp.example.com",
    "Set-Cookie: app=1; Domain=notexample.com",              # a suffix, but not a parent
    "Set-Cookie: app=1; Domain=example.co",
    "Set-Cookie: app=1; Domain=other.org",
    "Set-Cookie: app=1; Domain=",                            # empty: browsers ignore it (host-only)
    "Set-Cookie: domain=example.com",                       # a cookie *named* domain
    "Set-Cookie: app=Domain=example.com",                    # ... or with that value
    "Set-Cookie: app=1; Path=/Domain=example.com",
    "X-Set-Cookie: a=b; Domain=example.com",                 # not a Set-Cookie header
    "Content-Type: text/html",
]


@pytest.mark.parametrize("line", DROPPED)
def test_cookie_for_the_web_domain_is_dropped(line):
    original = head("Content-Type: text/plain", line, "Content-Length: 5")
    assert scrub_set_cookies(original, WEB) == head("Content-Type: text/plain", "Content-Length: 5")


@pytest.mark.parametrize("line", KEPT)
def test_other_cookies_pass_untouched(line):
    assert scrub_set_cookies(head("Content-Length: 5", line), WEB) is None


def test_fast_path_without_set_cookie():
    assert scrub_set_cookies(head("Content-Type: text/html", "Content-Length: 0"), WEB) is None
    assert scrub_set_cookies(b"HTTP/1.1 204 No Content", WEB) is None


def test_only_the_covering_ones_go_and_order_stays():
    original = head("Set-Cookie: a=1", "Set-Cookie: s=evil; Domain=.example.com", "Vary: Cookie",
                    "Set-Cookie: b=2; Domain=app.example.com", "Set-Cookie: f=evil; domain=EXAMPLE.COM")
    assert scrub_set_cookies(original, WEB) == head("Set-Cookie: a=1", "Vary: Cookie",
                                                     "Set-Cookie: b=2; Domain=app.example.com")


def test_folded_continuation_goes_with_its_header():
    """obs-fold: a line starting with whitespace continues the header before it."""
    original = head("Set-Cookie: s=evil;", " Domain=example.com", "Content-Length: 0")
    assert scrub_set_cookies(original, WEB) == head("Content-Length: 0")
    kept = head("Set-Cookie: a=1;", "\tPath=/", "Content-Length: 0")
    assert scrub_set_cookies(kept, WEB) is None


def test_web_domain_given_in_any_case_and_embedded_localhost():
    assert scrub_set_cookies(head("Set-Cookie: s=1; Domain=example.com"), "EXAMPLE.com.") == head()
    assert scrub_set_cookies(head("Set-Cookie: s=1; Domain=localhost"), "localhost") == head()
    assert scrub_set_cookies(head("Set-Cookie: s=1; Domain=.LocalHost"), "localhost") == head()
    assert scrub_set_cookies(head("Set-Cookie: s=1; Domain=myapp.localhost"), "localhost") is None
    assert scrub_set_cookies(head("Set-Cookie: s=1; Domain=intunnel.example.com"), "intunnel.example.com") == head()
    assert scrub_set_cookies(head("Set-Cookie: s=1; Domain=example.com"), "intunnel.example.com") == head()


# --- properties -----------------------------------------------------------------

LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
WEB_DOMAINS = st.sampled_from(["example.com", "intunnel.example.com", "localhost", "a.b.c.d"])


def spellings(domain: str):
    """Ways a browser would read as ``domain``."""
    return st.tuples(st.sampled_from(["", "."]), st.sampled_from(["", "."]), st.booleans()).map(
        lambda t: t[0] + (domain.upper() if t[2] else domain) + t[1])


@st.composite
def cookie_lines(draw, web: str):
    """(Set-Cookie line, whether it covers the web app's domain)."""
    labels = web.split(".")
    kind = draw(st.sampled_from(["host-only", "web", "parent", "below", "other"]))
    if kind == "web":
        domain, covers = draw(spellings(web)), True
    elif kind == "parent" and len(labels) > 1:
        domain, covers = draw(spellings(".".join(labels[draw(st.integers(1, len(labels) - 1)):]))), True
    elif kind == "below":
        domain, covers = draw(spellings(draw(LABEL) + "." + web)), False
    elif kind == "other":
        domain = draw(LABEL) + web  # e.g. "xexample.com": shares a suffix, is no parent
        covers = False
    else:
        domain, covers = None, False
    name = draw(st.sampled_from(["intunnel_session", "__Host-intunnel_session", "app", "Domain"]))
    attrs = draw(st.lists(st.sampled_from(["Path=/", "HttpOnly", "Secure", "SameSite=Lax", "Max-Age=60"]),
                          max_size=3))
    if domain is not None:
        attrs.insert(draw(st.integers(0, len(attrs))), f"{draw(st.sampled_from(['Domain', 'domain', 'DOMAIN']))}"
                                                        f"{draw(st.sampled_from(['=', ' = ']))}{domain}")
    header = draw(st.sampled_from(["Set-Cookie", "set-cookie", "SET-COOKIE"]))
    return f"{header}: {name}={draw(LABEL)}" + "".join(f"; {a}" for a in attrs), covers


@st.composite
def heads(draw):
    web = draw(WEB_DOMAINS)
    lines = draw(st.lists(st.one_of(
        cookie_lines(web),
        st.sampled_from(["Content-Type: text/html", "Content-Length: 12", "Vary: Cookie",
                         f"X-Note: Domain={web}"]).map(lambda h: (h, False))), max_size=8))
    return web, lines


@settings(max_examples=400, deadline=None)
@given(heads())
def test_property_exactly_the_covering_cookies_go(case):
    web, lines = case
    original = head(*(line for line, _ in lines))
    kept = head(*(line for line, covers in lines if not covers))
    result = scrub_set_cookies(original, web)
    if any(covers for _, covers in lines):
        assert result == kept
    else:
        assert result is None
    # idempotent: what comes out needs no second pass
    assert scrub_set_cookies(kept, web) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), WEB_DOMAINS)
def test_property_any_bytes_never_crash_and_never_add(raw, web):
    original = b"HTTP/1.1 200 OK\r\nSet-Cookie: " + raw
    result = scrub_set_cookies(original, web)
    if result is not None:
        assert len(result) < len(original) and result.startswith(b"HTTP/1.1 200 OK")
        assert set(result.split(b"\r\n")) <= set(original.split(b"\r\n"))
