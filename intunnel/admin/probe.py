"""Are the services up?  Their health endpoints, and systemd when it runs the host."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
from dataclasses import dataclass

UNITS = ("intunnel-web", "intunnel-relay")
# What stops InTunnel for good: the relay's socket too, or the next connection to its port (a
# probe's included) starts the relay again (socket activation: systemd/intunnel-relay.socket).
STOP_UNITS = ("intunnel-web", "intunnel-relay.socket", "intunnel-relay")
TIMEOUT = 2.0


@dataclass(frozen=True)
class Probe:
    name: str            # "web" or "relay"
    url: str
    listening: bool      # something answered on that address
    healthy: bool        # ...with 200 and {"status": "ok"}
    detail: str          # what happened, one line


def _connect_host(host: str) -> str:
    """Where to knock for a listen address: a wildcard means this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def probe(name: str, address: tuple[str, int], path: str, host_header: str | None = None) -> Probe:
    host, port = _connect_host(address[0]), address[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}{path}"
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        headers = {"Host": host_header} if host_header else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read(64 * 1024)
    except (ConnectionRefusedError, FileNotFoundError):
        return Probe(name, url, False, False, "connection refused (not running?)")
    except OSError as e:
        return Probe(name, url, False, False, f"unreachable ({e.strerror or e})")
    except http.client.HTTPException as e:
        return Probe(name, url, True, False, f"not an HTTP answer ({type(e).__name__})")
    finally:
        conn.close()
    try:
        status_ok = json.loads(body).get("status") == "ok"
    except (ValueError, AttributeError):
        status_ok = False
    if response.status == 200 and status_ok:
        return Probe(name, url, True, True, "ok")
    return Probe(name, url, True, False, f"answered {response.status} without {{\"status\": \"ok\"}}")


def probe_services(settings) -> list[Probe]:
    return [
        probe("web", settings.web_address, "/healthz"),
        probe("relay", settings.relay_address, "/_intunnel/healthz", host_header=settings.domain),
    ]


def systemd_active_units(units=UNITS) -> list[str]:
    """Units among ``units`` systemd reports active; [] when systemd does not run this host."""
    systemctl = shutil.which("systemctl")
    if not systemctl or not os.path.isdir("/run/systemd/system"):
        return []
    active = []
    for unit in units:
        try:
            r = subprocess.run([systemctl, "is-active", "--quiet", unit], timeout=10,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            active.append(unit)
    return active
