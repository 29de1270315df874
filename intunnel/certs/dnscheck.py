"""Does a custom hostname resolve to this server?  (glue: the system's resolver, or dnspython
asking the DNS server named by custom_domain_resolver.)

A name is ready when it has addresses and every one of them is the server's (the CA may pick
any of them): custom_domain_addresses, or else whatever <domain> resolves to.  A CNAME is
followed by the resolver, so ``app.customer.com CNAME myapp.<domain>`` passes.
"""

from __future__ import annotations

import socket

from ..settings import parse_listen


def resolve(settings, name: str) -> set[str]:
    """The A and AAAA addresses of ``name`` (empty: none, or it does not exist)."""
    if not settings.custom_domain_resolver:
        try:
            return {info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
        except (socket.gaierror, UnicodeError):
            return set()
    import dns.exception
    import dns.resolver
    host, port = parse_listen(settings.custom_domain_resolver, "custom_domain_resolver")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [host], port
    resolver.lifetime = settings.custom_domain_dns_timeout
    found = set()
    for kind in ("A", "AAAA"):
        try:
            found |= {r.to_text() for r in resolver.resolve(name, kind)}
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers, dns.exception.Timeout):
            pass
    return found


def server_addresses(settings) -> set[str]:
    return set(settings.custom_domain_addresses) or resolve(settings, settings.domain)


def check(settings, hostname: str) -> tuple[bool, str]:
    """(ready, why not) for ``hostname``."""
    got = resolve(settings, hostname)
    if not got:
        return False, f"{hostname} has no A/AAAA record yet: create the CNAME or A/AAAA record shown"
    ours = server_addresses(settings)
    if got <= ours:
        return True, ""
    return False, (f"{hostname} resolves to {', '.join(sorted(got))}, not only to this server "
                   f"({', '.join(sorted(ours)) or 'no address known for ' + settings.domain})")
