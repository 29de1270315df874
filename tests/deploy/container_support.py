"""A real Debian bookworm host for the playbook: debootstrap, cached, booted with systemd-nspawn.

The root file system is built once per package list and mirror and cached as a
tarball under ``/var/cache/intunnel-tests/``; every test run unpacks a fresh copy,
so the playbook always meets a pristine host.  The container shares the host's
network (``systemd-nspawn`` without ``--private-network``), so its sshd is moved
to a free loopback port before boot, and the playbook is given free ports too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "sudo")
CACHE_DIR = Path(os.environ.get("INTUNNEL_TEST_CACHE", "/var/cache/intunnel-tests"))
# Bump when the way the root is prepared changes, so old caches are not reused.
CACHE_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (the container must reach it over plain HTTP)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        with contextlib.suppress(OSError):
            text = path.read_text()
            for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(http://\S+)", text, re.M):
                url = match.group(1).rstrip("/")
                if "security" not in url:
                    return url
    return DEFAULT_MIRROR


def rootfs_tarball(timeout: float = 900) -> Path:
    """The cached root tarball, built with debootstrap on first use (a lock keeps builds single)."""
    mirror = apt_mirror()
    key = hashlib.sha256(repr((CACHE_FORMAT, SUITE, VARIANT, PACKAGES, mirror)).encode()).hexdigest()[:16]
    tarball = CACHE_DIR / f"rootfs-{SUITE}-{key}.tar"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        build = CACHE_DIR / f"build-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        try:
            subprocess.run(["debootstrap", f"--variant={VARIANT}", "--include=" + ",".join(PACKAGES),
                            SUITE, str(build), mirror], check=True, capture_output=True, timeout=timeout)
            # Downloaded .debs are not needed in the image.
            shutil.rmtree(build / "var/cache/apt/archives", ignore_errors=True)
            (build / "var/cache/apt/archives/partial").mkdir(parents=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "--numeric-owner", "-C", str(build), "-cf", str(partial), "."],
                           check=True, capture_output=True)
            partial.rename(tarball)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return tarball


def prepare_root(root: Path, ssh_port: int, public_key: str) -> None:
    """Unpack a fresh root and make it reachable: sshd on 127.0.0.1:ssh_port, root key login."""
    root.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-xf", str(rootfs_tarball())],
                   check=True, capture_output=True)
    (root / "etc/hostname").write_text("intunnel-test\n")
    (root / "etc/ssh/sshd_config.d/intunnel-test.conf").write_text(
        f"Port {ssh_port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    # The container shares the host's network: packages must not start services
    # while they are installed (a freshly installed nginx would grab port 80 of
    # the host).  The playbook starts every service it needs explicitly.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# deploy test: no service starts during package installation\nexit 101\n")
    os.chmod(policy, 0o755)


class Container:
    """A booted container reachable over SSH; ``stop()`` powers it off and reaps everything."""

    def __init__(self, root: Path, ssh_port: int, key_file: Path, log_file: Path):
        self.root, self.ssh_port, self.key_file = root, ssh_port, key_file
        self.log = open(log_file, "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "--boot", "--register=no", "--keep-unit",
             "--console=read-only", "--machine=intunnel-test"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", str(self.key_file), "-p", str(self.ssh_port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                "root@127.0.0.1", command]

    def ssh(self, command: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"in the container, {command!r} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def wait_ready(self, timeout: float = 90) -> None:
        """Until sshd answers and systemd finished booting (running or degraded)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}; see {self.log.name}")
            result = subprocess.run(self.ssh_argv("systemctl is-system-running --wait"),
                                    capture_output=True, text=True, timeout=timeout)
            if result.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the container did not come up: {result.stdout} {result.stderr}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> None:
        """Power off (SIGTERM makes nspawn shut the container down cleanly), then reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        leftover = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                    if line.split()[1].startswith(str(self.root))]
        for mount in sorted(leftover, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
