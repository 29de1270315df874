"""Certificates from an ACME CA, through certbot's webroot plugin (no ACME client of our own).

certbot (the same tool the playbook uses for the main names' certificate) keeps everything
under ``cert_dir``: its account, keys and certificates (``config/live/<hostname>/``), work and
log directories.  It answers HTTP-01 by writing the challenge into ``nginx_acme_root``, which
the hostname's vhost serves on port 80 (``intunnel.nginxvhost``).  ``reason_from`` turns
certbot's output into the one line a failed status shows (pure).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    reason: str = ""          # why not (one line), when not ok


def directory(settings) -> str:
    if settings.acme_staging and settings.acme_directory == LETSENCRYPT:
        return LETSENCRYPT_STAGING
    return settings.acme_directory


def cert_paths(settings, hostname: str) -> tuple[str, str]:
    """(full chain, private key) certbot keeps for ``hostname``."""
    live = Path(settings.cert_dir) / "config" / "live" / hostname
    return str(live / "fullchain.pem"), str(live / "privkey.pem")


def have_cert(settings, hostname: str) -> bool:
    return all(os.path.exists(p) for p in cert_paths(settings, hostname))


def _dirs(settings) -> list[str]:
    base = Path(settings.cert_dir)
    return ["--config-dir", str(base / "config"), "--work-dir", str(base / "work"), "--logs-dir", str(base / "logs")]


def _env(settings) -> dict[str, str]:
    env = dict(os.environ)
    if settings.acme_ca_bundle:
        env["REQUESTS_CA_BUNDLE"] = settings.acme_ca_bundle
    return env


def obtain(settings, hostname: str, renew: bool) -> Outcome:
    """Ask the CA for ``hostname``'s certificate (``renew``: a new one even though one is kept)."""
    command = [settings.certbot_command, "certonly", "--non-interactive", "--agree-tos", "--webroot",
               "-w", settings.nginx_acme_root, "--preferred-challenges", "http", "-d", hostname,
               "--cert-name", hostname, "--server", directory(settings), "--key-type", "ecdsa",
               "--force-renewal" if renew else "--keep-until-expiring", *_dirs(settings)]
    command += ["-m", settings.acme_email] if settings.acme_email else ["--register-unsafely-without-email"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=_env(settings),
                              timeout=settings.certbot_timeout)
    except subprocess.TimeoutExpired:
        return Outcome(False, f"certbot did not finish within {settings.certbot_timeout} s (certbot_timeout)")
    except OSError as e:
        return Outcome(False, f"could not run certbot ({settings.certbot_command}): {e.strerror or e}")
    if done.returncode == 0 and have_cert(settings, hostname):
        return Outcome(True)
    return Outcome(False, reason_from(done.stderr + "\n" + done.stdout))


def delete(settings, hostname: str) -> Outcome:
    if not have_cert(settings, hostname) and not (Path(settings.cert_dir) / "config" / "renewal"
                                                  / f"{hostname}.conf").exists():
        return Outcome(True)
    try:
        done = subprocess.run([settings.certbot_command, "delete", "--non-interactive", "--cert-name", hostname,
                               *_dirs(settings)], capture_output=True, text=True, env=_env(settings),
                              timeout=settings.certbot_timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Outcome(False, f"certbot delete failed: {e}")
    return Outcome(done.returncode == 0, "" if done.returncode == 0 else reason_from(done.stderr))


def not_after(settings, hostname: str) -> datetime:
    """The installed certificate's expiry (naive UTC), read by openssl."""
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", cert_paths(settings, hostname)[0]],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    text = " ".join(out.strip().partition("=")[2].split())      # "Mar 2 18:00:00 2031 GMT"
    return datetime.strptime(text, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=timezone.utc).replace(tzinfo=None)


_NOISE = ("Ask for help", "See the logfile", "Hint:", "Saving debug log", "Some challenges have failed",
          "IMPORTANT NOTES", "- ")


def reason_from(output: str) -> str:
    """One line from certbot's output: the CA's problem (``Type``/``Detail``), else its last word."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    kind = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Type:")), "")
    detail = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Detail:")), "")
    if detail:
        return f"the CA could not validate the name ({kind}): {detail}" if kind else detail
    for i, line in enumerate(lines):
        if line.startswith("An unexpected error occurred:") and i + 1 < len(lines):
            return lines[i + 1]
    useful = [line for line in lines if not line.startswith(_NOISE)]
    return useful[-1] if useful else "certbot failed without saying why"
