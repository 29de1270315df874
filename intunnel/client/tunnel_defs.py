"""``[tunnels.NAME]`` sections of the client config file: tunnel definitions for ``intunnel start``.

One section per tunnel, with the ``intunnel http`` options as keys::

    [tunnels.web]
    port = 3000                      # or upstream = "192.168.1.5:8080"
    host_header = "rewrite"          # preserve (default) | rewrite | a value
    name = "myapp"                   # the tunnel on the server (default: the section's name)
    create = true                    # with a login: create it when missing
    basic_auth = ["ann:secret-pass"] # this session's own access rules, as --basic-auth
    allow_ip = ["10.0.0.0/8"]        # --allow-ip; deny_ip = [...] is --deny-ip

    [tunnels.api]
    port = 8000
    server = "https://tunnels.example.com"   # default: the config's server
    token = "..."                             # default: a saved token, or the login's lookup

Pure: ``define`` turns one section (the table as written) into the ``argparse.Namespace``
the http command's resolution and checks take, or raises ``SectionError`` naming the
section and the key.
"""

from __future__ import annotations

import argparse

# key: (the type it must have, what to say when it hasn't)
KEYS = {
    "port": (int, "an integer from 1 to 65535"),
    "upstream": (str, "a string HOST:PORT"),
    "host_header": (str, 'a string: "preserve", "rewrite" or a Host value'),
    "server": (str, "a string URL such as https://example.com"),
    "token": (str, "a string (the tunnel's token)"),
    "name": (str, "a string (the tunnel's name on the server)"),
    "create": (bool, "true or false"),
    "insecure": (bool, "true or false"),
    "verbose": (bool, "true or false"),
    "basic_auth": (list, 'a list of "USER:PASS" strings'),
    "allow_ip": (list, "a list of addresses or CIDRs"),
    "deny_ip": (list, "a list of addresses or CIDRs"),
}


class SectionError(ValueError):
    """One line naming the section and the key: ``[tunnels.web] port: ...``."""

    def __init__(self, section: str, key: str, problem: str):
        where = f"[tunnels.{section}]" + (f" {key}" if key else "")
        super().__init__(f"{where}: {problem}")
        self.section, self.key = section, key


def define(section: str, table: dict) -> argparse.Namespace:
    """The section as the http command's options (``port``, ``server``, ``token``, ``name``...)."""
    for key, value in table.items():
        if key not in KEYS:
            raise SectionError(section, key, f"unknown key (known: {', '.join(sorted(KEYS))})")
        kind, what = KEYS[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if ok and kind is list:
            ok = all(isinstance(item, str) for item in value)
        if ok and key == "port":
            ok = 1 <= value <= 65535
        if not ok:
            raise SectionError(section, key, f"must be {what}, not {value!r}")
    return argparse.Namespace(
        port=table.get("port"), upstream=table.get("upstream"), host_header=table.get("host_header", "preserve"),
        server=table.get("server"), token=table.get("token"), name=table.get("name", section),
        create=table.get("create", False), insecure=table.get("insecure", False),
        verbose=table.get("verbose", False), basic_auth=list(table.get("basic_auth", [])),
        basic_auth_stdin=False, allow_ip=list(table.get("allow_ip", [])), deny_ip=list(table.get("deny_ip", [])))


def option_key(message: str) -> str:
    """The section key an ``intunnel http`` check's message is about (its option's spelling)."""
    for option, key in (("--basic-auth", "basic_auth"), ("access rules", "basic_auth"), ("--allow-ip", "allow_ip"),
                        ("--deny-ip", "deny_ip"), ("--upstream", "upstream"), ("PORT", "port")):
        if option in message:
            return key
    return ""
