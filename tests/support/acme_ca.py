"""A real ACME CA on loopback for the custom-domain tests: Debian's ``pebble`` (Let's Encrypt's
test CA), and ``StubDNS``, a tiny UDP DNS server of the test's own (dnspython builds and parses
the messages) that answers A/AAAA for the names it is given and NXDOMAIN for the rest.

pebble validates HTTP-01 at ``<the name's address>:<httpPort>``: the tests point httpPort at
their nginx and give pebble a StubDNS (``-dnsserver``); the reconciler asks another StubDNS
(``custom_domain_resolver``), so a test can make the CA see what the server doesn't.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class StubDNS:
    """``names``: {name: [addresses]}; change it at any time."""

    def __init__(self, names: dict[str, list[str]] | None = None):
        self.names = dict(names or {})
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="stub-dns", daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):
                self.sock.sendto(self.answer(dns.message.from_wire(data)).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        if name not in self.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        kind = "AAAA" if question.rdtype == dns.rdatatype.AAAA else "A" if question.rdtype == dns.rdatatype.A else None
        matching = [a for a in self.names[name] if (":" in a) == (kind == "AAAA")] if kind else []
        if matching:
            response.answer.append(dns.rrset.from_text(question.name, 1, "IN", kind, *matching))
        return response

    def close(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pebble:
    """pebble on loopback: ACME at ``directory``; its HTTPS certificate in ``ca_bundle``; its
    issuing root from the management port (``root_pem``)."""

    def __init__(self, workdir: Path, http_port: int, dns_server: str, pebble: str = "pebble"):
        workdir.mkdir(parents=True, exist_ok=True)
        cert, key = workdir / "pebble-cert.pem", workdir / "pebble-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=pebble", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        self.ca_bundle = str(cert)
        self.port, self.management_port = _free_port(), _free_port()
        config = workdir / "pebble-config.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert), "privateKey": str(key), "httpPort": http_port, "tlsPort": _free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        self.log = open(workdir / "pebble.log", "wb")
        self.proc = subprocess.Popen([pebble, "-config", str(config), "-dnsserver", dns_server], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._context = ssl.create_default_context(cafile=self.ca_bundle)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.get(self.directory)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise AssertionError("pebble did not start: " + (workdir / "pebble.log").read_text())
                time.sleep(0.05)

    def get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._context, timeout=5) as r:
            return r.read()

    def root_pem(self) -> str:
        return self.get(f"https://127.0.0.1:{self.management_port}/roots/0").decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
