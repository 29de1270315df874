"""The reconciler: custom hostnames wished in the database -> certificates and nginx vhosts.

One ``run`` (``intunnel-admin certs reconcile``, from its systemd timer) takes the reconciler's
lock in cert_dir, then:

1. removes the vhost and certificate of every name no longer in the database;
2. for each row, keeps its vhost as its state wants it (a challenge-only vhost until it has a
   certificate, the full one once ``active``), then takes the step ``plan.decide`` says:
   CHECK (DNS points here? then ask the CA), RENEW, or WAIT; and writes the row's new state.

Every vhost change is one file of nginx_domain_dir, checked by ``nginx -t`` with the whole
configuration before nginx is reloaded; when the check fails the file is put back as it was
(or removed), so nginx keeps serving every other name, and the hostname is ``failed`` with
nginx's words.  Nothing here listens on a socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import logging
import os
import secrets
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .. import nginxvhost
from ..models import CustomDomain, Tunnel
from ..timeutil import utcnow
from . import acme, dnscheck, plan

log = logging.getLogger("intunnel.certs")


@dataclass
class Report:
    issued: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def timing(settings) -> plan.Timing:
    return plan.Timing(renew_before=timedelta(seconds=settings.cert_renew_before),
                       retry_min=timedelta(seconds=settings.cert_retry_min),
                       retry_max=timedelta(seconds=settings.cert_retry_max))


class Nginx:
    """``nginx -t`` and ``nginx -s reload`` with the configured command."""

    def __init__(self, settings):
        self.command = list(settings.nginx_command)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=60)

    def check(self) -> str | None:
        """None when the whole configuration is valid, else nginx's last words."""
        done = self._run("-t")
        if done.returncode == 0:
            return None
        lines = [line for line in done.stderr.splitlines() if "[emerg]" in line or "[crit]" in line]
        if lines:
            return lines[-1].split("]", 1)[-1].strip()
        return (done.stderr.strip().splitlines() or ["nginx -t failed"])[-1]

    def reload(self) -> str | None:
        done = self._run("-s", "reload")
        return None if done.returncode == 0 else (done.stderr.strip() or "nginx -s reload failed")


def install(nginx: Nginx, path: Path, text: str | None, reload: bool = False) -> tuple[bool, str | None]:
    """Make ``path`` hold ``text`` (None: no file); (changed, error).  nginx -t first; on failure
    the old file comes back and nginx is not reloaded.  ``reload``: check and reload even when the
    file is unchanged (a renewed certificate behind the same paths)."""
    old = path.read_text() if path.exists() else None
    if old == text and not reload:
        return False, None
    if text is None:
        path.unlink()
    else:
        tmp = path.with_name(path.name + ".new")   # not *.conf: nginx never includes a half-written file
        tmp.write_text(text)
        os.replace(tmp, path)
    error = nginx.check()
    if error is not None:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(old)
        return False, f"nginx rejected the vhost: {error}"
    return True, nginx.reload()


# nginx's master lets the old workers go on accepting for 100 ms after the new ones have started
# (ngx_master_process_cycle sleeps before telling them to shut down), and the kernel hands them
# most new connections meanwhile: one answer from the new vhost proves nothing yet.  The name is
# live once every fresh connection has been answered by it for this long.
RELOAD_SETTLE = 0.5


def wait_live(settings, hostname: str) -> bool:
    """After a reload: does every new connection to the name's port-80 vhost get the challenge
    web root (``RELOAD_SETTLE`` seconds of answers, within ``nginx_reload_wait``)?"""
    token = "intunnel-probe-" + secrets.token_hex(8)
    # Readable by nginx's workers (another user) whatever the umask (the unit's is 0077), as
    # certbot makes its own challenge files.
    probe = Path(settings.nginx_acme_root) / ".well-known" / "acme-challenge" / token
    for directory in (probe.parent.parent, probe.parent):
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
    probe.write_text(token)
    probe.chmod(0o644)
    deadline = time.monotonic() + settings.nginx_reload_wait
    answered_since = None
    try:
        while True:
            now = time.monotonic()
            if _serves(settings, hostname, token):
                answered_since = now if answered_since is None else answered_since
                if now - answered_since >= RELOAD_SETTLE:
                    return True
            else:
                answered_since = None
            if now > deadline:
                return False
            time.sleep(0.01)
    finally:
        probe.unlink(missing_ok=True)


def _serves(settings, hostname: str, token: str) -> bool:
    """One fresh connection: is the probe ``token`` served for ``hostname``?"""
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection("127.0.0.1", settings.nginx_http_port, timeout=2)
        try:
            conn.request("GET", f"/.well-known/acme-challenge/{token}", headers={"Host": hostname})
            response = conn.getresponse()
            return response.status == 200 and response.read() == token.encode()
        finally:
            conn.close()
    return False


class Reconciler:
    def __init__(self, settings, now=utcnow):
        self.settings = settings
        self.now = now
        self.nginx = Nginx(settings)
        self.vhosts = Path(settings.nginx_domain_dir)
        self.timing = timing(settings)

    def run(self) -> Report:
        Path(self.settings.cert_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.vhosts.mkdir(parents=True, exist_ok=True)
        with open(Path(self.settings.cert_dir) / "reconcile.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            report = Report()
            rows = list(CustomDomain.select(CustomDomain, Tunnel.subdomain).join(Tunnel).order_by(CustomDomain.id))
            self._remove_unwanted({r.hostname for r in rows}, report)
            broken = self._heal()
            for row in rows:
                if row.hostname in broken:
                    self._save(row, plan.after_install_failed(self._state(row), self.now(), self.timing,
                                                              broken[row.hostname]))
                    report.failed.append(row.hostname)
                    continue
                try:
                    self._one(row, report)
                except Exception as e:   # one name's trouble is never the others'
                    log.exception("custom domain %s: reconciling failed", row.hostname)
                    self._save(row, plan.after_issue_failed(self._state(row), self.now(), self.timing,
                                                            f"internal error: {type(e).__name__}"))
                    report.failed.append(row.hostname)
            return report

    # --- steps ---
    def _heal(self) -> dict[str, str]:
        """A configuration that fails ``nginx -t`` because of a custom domain's vhost (its
        certificate broken on disk, say) loses that vhost, so every other change can be
        checked and reloaded again: {hostname: nginx's words} of those taken out."""
        broken: dict[str, str] = {}
        for _ in range(len(list(self.vhosts.glob("*.conf"))) + 1):
            error = self.nginx.check()
            if error is None:
                break
            culprit = next((path for path in self.vhosts.glob("*.conf")
                            if f"/{path.name}" in error or f"/live/{path.name[:-5]}/" in error), None)
            if culprit is None:
                log.error("nginx -t fails, and not because of a custom domain: %s", error)
                break
            culprit.unlink()
            broken[culprit.name[:-5]] = f"nginx rejected the vhost: {error}"
            log.error("custom domain %s: its vhost broke nginx -t, taken out: %s", culprit.name[:-5], error)
        if broken:
            self.nginx.reload()
        return broken

    def _remove_unwanted(self, wanted: set[str], report: Report) -> None:
        for path in sorted(self.vhosts.glob("*.conf")):
            hostname = path.name[:-len(".conf")]
            if hostname in wanted:
                continue
            changed, error = install(self.nginx, path, None)
            if error:
                log.error("custom domain %s: could not remove its vhost: %s", hostname, error)
                continue
            outcome = acme.delete(self.settings, hostname)
            if not outcome.ok:
                log.error("custom domain %s: could not delete its certificate: %s", hostname, outcome.reason)
            log.info("custom domain %s: removed (vhost and certificate)", hostname)
            report.removed.append(hostname)

    def _one(self, row: CustomDomain, report: Report) -> None:
        state, now = self._state(row), self.now()
        step = plan.decide(state, now, self.timing)
        if step == plan.WAIT:
            error = self._vhost(row, served=state.state == plan.ACTIVE)
            if error and state.state == plan.ACTIVE:
                self._save(row, plan.after_install_failed(state, now, self.timing, error))
                report.failed.append(row.hostname)
            else:
                report.waiting.append(row.hostname)
            return
        renewing = step == plan.RENEW
        if not renewing:
            ready, why = dnscheck.check(self.settings, row.hostname)
            if not ready:
                self._save(row, plan.after_dns_mismatch(state, now, self.timing, why))
                report.waiting.append(row.hostname)
                return
        # The challenge vhost must be live before the CA looks (the full one keeps it too).
        error = self._vhost(row, served=renewing and acme.have_cert(self.settings, row.hostname))
        if error is None and not wait_live(self.settings, row.hostname):
            error = f"nginx did not serve the challenge for {row.hostname} within {self.settings.nginx_reload_wait} s"
        if error is not None:
            self._save(row, plan.after_issue_failed(state, now, self.timing, error))
            report.failed.append(row.hostname)
            return
        state = self._save(row, plan.before_issue(state))
        outcome = acme.obtain(self.settings, row.hostname, renew=renewing)
        now = self.now()
        if not outcome.ok:
            log.warning("custom domain %s: %s failed: %s", row.hostname, step, outcome.reason)
            self._save(row, plan.after_issue_failed(state, now, self.timing, outcome.reason))
            report.failed.append(row.hostname)
            return
        error = self._vhost(row, served=True, reload=True)
        if error is not None:   # a certificate nginx won't load: the old vhost stays, the name is not served
            log.warning("custom domain %s: %s", row.hostname, error)
            self._save(row, plan.after_install_failed(state, now, self.timing, error))
            report.failed.append(row.hostname)
            return
        self._save(row, plan.after_issued(state, acme.not_after(self.settings, row.hostname), self.timing))
        log.info("custom domain %s: certificate %s", row.hostname, "renewed" if renewing else "issued")
        (report.renewed if renewing else report.issued).append(row.hostname)

    def _vhost(self, row: CustomDomain, served: bool, reload: bool = False) -> str | None:
        cert = acme.cert_paths(self.settings, row.hostname) if served else None
        text = nginxvhost.render(self.settings, row.hostname, row.tunnel.subdomain, cert)
        _, error = install(self.nginx, self.vhosts / nginxvhost.filename(row.hostname), text, reload)
        return error

    # --- the row ---
    @staticmethod
    def _state(row: CustomDomain) -> plan.Row:
        return plan.Row(state=row.state, reason=row.reason, attempts=row.attempts,
                        next_attempt_at=row.next_attempt_at, not_after=row.not_after)

    def _save(self, row: CustomDomain, state: plan.Row) -> plan.Row:
        values = asdict(state)
        values["checked_at"] = self.now()
        # The row may have been removed meanwhile: then this updates nothing.
        CustomDomain.update(**values).where(CustomDomain.id == row.id).execute()
        return state
