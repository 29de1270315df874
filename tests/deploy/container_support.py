"""A real Debian bookworm host for the playbook: debootstrap, cached, booted with systemd-nspawn.

The root file system is built once per package list and mirror and cached as a
tarball under ``/var/cache/intunnel-tests/``; every test run unpacks a fresh copy,
so the playbook always meets a pristine host.  The container shares the host's
network (``systemd-nspawn`` without ``--private-network``), so its sshd is moved
to a free loopback port before boot, and the playbook is given free ports too.
Several containers (``boot_containers``, in parallel) each take their own sshd
port and their own loopback address (127.0.0.x) for what they serve to the others.

Also here: running the playbook (``run_playbook``, ``recap``), reaching the
deployed front over HTTPS (``Site``), and the laptop's side of a tunnel
(``Upstream``, ``tunnel_client``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import pytest

from bench.procs import start, stop
from conftest import require_tool
from nginx_support import free_port

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "sudo")
CACHE_DIR = Path(os.environ.get("INTUNNEL_TEST_CACHE", "/var/cache/intunnel-tests"))
# Bump when the way the root is prepared changes, so old caches are not reused.
CACHE_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOMAIN = "intunnel.test"
ADMIN_EMAIL = "admin@intunnel.test"
PLAYBOOK_TIMEOUT = 900


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


def prepare_root(root: Path, ssh_port: int, public_key: str, hostname: str = "intunnel-test") -> None:
    """Unpack a fresh root and make it reachable: sshd on 127.0.0.1:ssh_port, root key login."""
    root.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-xf", str(rootfs_tarball())],
                   check=True, capture_output=True)
    (root / "etc/hostname").write_text(hostname + "\n")
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

    def __init__(self, root: Path, ssh_port: int, key_file: Path, log_file: Path, machine: str = "intunnel-test"):
        self.root, self.ssh_port, self.key_file = root, ssh_port, key_file
        self.log = open(log_file, "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "--boot", "--register=no", "--keep-unit",
             "--console=read-only", f"--machine={machine}"],
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


def boot_containers(work: Path, names: list[str], public_key_file: Path, key_file: Path) -> dict[str, Container]:
    """One booted container per name, unpacked and booted in parallel, each with its own sshd port
    (``container.ssh_port``); on failure, those already started are stopped again."""
    ports = {}
    for name in names:  # distinct even if the same free port were offered twice
        while (port := free_port()) in ports.values():
            pass
        ports[name] = port
    public_key = public_key_file.read_text()
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: prepare_root(work / f"root-{n}", ports[n], public_key, hostname=n), names))
    containers = {n: Container(work / f"root-{n}", ports[n], key_file, work / f"console-{n}.log", machine=n)
                  for n in names}
    try:
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(Container.wait_ready, containers.values()))
    except BaseException:
        stop_containers(containers.values())
        raise
    return containers


def stop_containers(containers) -> None:
    """Power every container off at once (each stop waits for its own), then remove their roots."""
    containers = list(containers)
    with ThreadPoolExecutor(max(1, len(containers))) as pool:
        list(pool.map(Container.stop, containers))
    for container in containers:
        shutil.rmtree(container.root, ignore_errors=True)


def freeze_checkout(work: Path) -> Path:
    """A copy of the checkout the playbook builds from (others may edit the working tree meanwhile)."""
    checkout = work / "checkout"
    checkout.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "intunnel", "systemd"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, checkout / name)
    return checkout


def ssh_host_vars(container: Container) -> str:
    """The inventory line's connection part for a container."""
    return (f"ansible_host=127.0.0.1 ansible_port={container.ssh_port} ansible_user=root "
            f"ansible_ssh_private_key_file={container.key_file} "
            "ansible_ssh_common_args='-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' "
            "ansible_python_interpreter=/usr/bin/python3")


def run_playbook(inventory: Path, log: Path, *extra_args: str) -> str:
    ansible_playbook = Path(sys.prefix) / "bin" / "ansible-playbook"
    if not ansible_playbook.exists():
        ansible_playbook = Path(require_tool("ansible-playbook"))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_RETRY_FILES_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("INTUNNEL_CONFIG", None)
    result = subprocess.run([str(ansible_playbook), "-i", str(inventory), *extra_args, str(REPO / "deploy" / "site.yml")],
                            capture_output=True, text=True, env=env, timeout=PLAYBOOK_TIMEOUT)
    with open(log, "a") as f:
        f.write(result.stdout + result.stderr)
    assert result.returncode == 0, f"ansible-playbook failed (log {log}):\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def recap(output: str) -> dict[str, int]:
    """The play recap's counts, summed over every host."""
    match = re.search(r"PLAY RECAP \*+\s*\n((?:\S+\s*:.*\n?)+)", output)
    assert match, output[-3000:]
    counts: dict[str, int] = {}
    for line in match.group(1).splitlines():
        for key, value in re.findall(r"(\w+)=(\d+)", line.split(":", 1)[1]):
            counts[key] = counts.get(key, 0) + int(value)
    return counts


def changed_tasks(output: str) -> list[str]:
    """``TASK [role : name] -> host`` for every task a host reported ``changed`` in a play's
    output (ansible's default callback), in play order: what an idempotence failure names."""
    found, task = [], None
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip(" *")
        elif task and (m := re.match(r"changed: \[([^\]]+)\]", line)):
            found.append(f"{task} -> {m.group(1)}")
    return found


def assert_nothing_changed(output: str) -> None:
    """A second run of the play: no host changed anything, nothing failed."""
    counts = recap(output)
    assert counts["failed"] == 0, output[-8000:]
    assert counts["changed"] == 0, f"changed on a second run: {changed_tasks(output)}\n{output[-4000:]}"


class Site:
    """What the tests need to reach the deployed host."""

    def __init__(self, container, https_port, ca_file, admin_password, inventory, log):
        self.container, self.https_port, self.ca_file = container, https_port, ca_file
        self.admin_password, self.inventory, self.log = admin_password, inventory, log
        self.cookie = None

    @property
    def server_url(self) -> str:
        return f"https://{DOMAIN}:{self.https_port}"

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def connection(self, host: str) -> http.client.HTTPSConnection:
        """HTTPS to the container's nginx, with SNI and Host = host (which no DNS knows)."""
        port, context = self.https_port, self.tls_context()

        class Connection(http.client.HTTPSConnection):
            def connect(self):
                sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
                self.sock = context.wrap_socket(sock, server_hostname=host)

        return Connection(host, port, timeout=15, context=context)

    def request(self, method, path, body=None, host=DOMAIN, headers=None):
        conn = self.connection(host)
        try:
            all_headers = {"Accept": "application/json", **(headers or {})}
            if self.cookie and host == DOMAIN:
                all_headers["Cookie"] = self.cookie
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                all_headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=all_headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def login(self):
        status, headers, body = self.request("POST", "/login", {"email": ADMIN_EMAIL, "password": self.admin_password})
        assert status == 200, (status, body)
        cookies = [v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie"]
        self.cookie = "; ".join(c for c in cookies if c.startswith("__Host-intunnel_session=")
                                and c != "__Host-intunnel_session=")
        assert self.cookie, headers


# Big enough for the deployed relay to hand it to splice(2) (in @system-service), under its unit's
# system call filter.
BIG_PAGE = "0123456789abcdef" * (1 << 18)  # 4 MiB


class Upstream:
    """The "local app" on this machine: a page at / and /big, a WebSocket echo at /ws, one port."""

    def __init__(self):
        from websockets.sync.server import serve

        def process_request(connection, request):
            if request.path == "/big":
                return connection.respond(HTTPStatus.OK, BIG_PAGE)
            if request.headers.get("Upgrade", "").lower() != "websocket":
                return connection.respond(HTTPStatus.OK, f"hello from the laptop, path {request.path}\n")
            return None

        def echo(ws):
            for message in ws:
                ws.send(message)

        self.server = serve(echo, "127.0.0.1", 0, process_request=process_request)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.thread.join(10)


def web_is_up(site) -> bool:
    try:
        return site.request("GET", "/healthz")[0] == 200
    except OSError:
        return False




def create_tunnel(site, name: str, subdomain: str, local_port: int) -> str:
    """A tunnel made through the API (logged in); its token."""
    status, _, body = site.request("POST", "/api/tunnels", {"name": name, "subdomain": subdomain,
                                                            "local_port": local_port})
    assert status in (200, 201), body
    tunnel = json.loads(body)
    token = tunnel.get("token") or tunnel.get("tunnel", {}).get("token")
    assert token, tunnel
    return token


@contextlib.contextmanager
def tunnel_client(site, upstream_port: int, token: str, log_file: Path, kind: str = "http", *extra: str):
    """The real `intunnel http` (or `intunnel tcp`) client on this machine, against the deployed
    front; stopped on exit."""
    env = {**os.environ, "INTUNNEL_TEST_HOSTS": f"{DOMAIN}=127.0.0.1", "PYTHONUNBUFFERED": "1"}
    env.pop("INTUNNEL_CONFIG", None)
    client = start([sys.executable, str(HERE / "resolving_client.py"), kind, str(upstream_port),
                    "--server", site.server_url, "--token", token, "--insecure", *extra], log_file, env=env)
    try:
        yield client
    finally:
        stop(client, timeout=10)


def deploy_workdir(tmp_path_factory, name: str) -> tuple[Path, Path]:
    """A work directory and an SSH key for a deploy test, or a skip when this machine can't boot containers."""
    for tool in ("debootstrap", "systemd-nspawn", "ssh", "ssh-keygen", "openssl"):
        require_tool(tool)
    if os.geteuid() != 0:
        pytest.skip("the deploy tests boot containers: run them as root")
    work = tmp_path_factory.mktemp(name)
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return work, key
