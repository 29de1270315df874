"""The nginx vhost of one custom domain (intunnel.certs), rendered beside ``nginxconf``.

``render(settings, hostname, subdomain, cert)`` is pure: one self-contained file for the
directory ``nginx_domain_dir``, which the generated ``intunnel-tunnels.conf`` includes (it
defines the ``intunnel_relay`` upstream and the Upgrade map this file uses).  Without a
certificate yet, the file only answers ACME HTTP-01 challenges for the name on
``nginx_http_port`` (the same web root as the main names) and redirects the rest to HTTPS; with
one, it also serves the name on ``nginx_https_port`` with the TLS profile of the main names
(``_tls.conf.tpl``), proxied to the relay exactly like ``*.<domain>``.
"""

from __future__ import annotations

import re

from . import nginxconf
from .errors import ConfigError

TEMPLATE = "intunnel-custom-domain.conf.tpl"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def filename(hostname: str) -> str:
    """The vhost file's name in nginx_domain_dir (the hostname is checked: no path tricks)."""
    return _hostname(hostname) + ".conf"


def render(settings, hostname: str, subdomain: str, cert: tuple[str, str] | None) -> str:
    values = nginxconf.template_values(settings)
    if not _LABEL.match(subdomain or ""):
        raise ConfigError(f"custom domain {hostname!r}: {subdomain!r} is not a tunnel subdomain")
    values.update(hostname=_hostname(hostname), subdomain=subdomain,
                  tls_cert=nginxconf._path(cert[0], "certificate") if cert else "",
                  tls_key=nginxconf._path(cert[1], "certificate key") if cert else "")
    return nginxconf._render_file(TEMPLATE, values)


def _hostname(value: str) -> str:
    if not nginxconf._HOSTNAME.match(value or "") or value != value.lower():
        raise ConfigError(f"custom domain {value!r} is not a lower-case host name")
    return value
