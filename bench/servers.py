"""The fixed parts of the bench: the local app, the nginx front and a private sshd.

* app nginx: serves ``/1k`` (1 KiB) and ``/64m`` (64 MiB, sendfile) from tmpfs
  and accepts ``PUT /dav/up.bin`` (WebDAV, body streamed to tmpfs, answers
  after the whole body).  C all the way, so the app is never the bottleneck.
* front nginx: a separate instance; one plain reverse proxy to the app
  (``nginx-hop``) and one TLS server in front of the relay (``intunnel-nginx``)
  configured like production (Upgrade passed, no buffering, Host kept).
* sshd: a private OpenSSH server on a loopback port, throwaway host and user
  keys, for the ``ssh -R`` baselines.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import procs

# Both private nginx instances: foreground, own prefix, quiet, long keep-alive.
PREAMBLE = """\
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  tcp_nodelay on;
  keepalive_requests 100000000; keepalive_timeout 120s;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
"""

APP_CONF = PREAMBLE + """\
  default_type application/octet-stream;
  sendfile on; tcp_nopush on;
  server {{
    listen 127.0.0.1:{port} backlog=4096 reuseport;
    root {dir}/www;
    location /dav/ {{
      dav_methods PUT;
      client_max_body_size 0;
      client_body_buffer_size 1m;
    }}
  }}
}}
"""

FRONT_CONF = PREAMBLE + """\
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 128; }}
  upstream relay {{ server 127.0.0.1:{relay_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{hop_port} backlog=4096;
    client_max_body_size 0;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
  server {{
    listen 127.0.0.1:{tls_port} ssl backlog=4096;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    ssl_session_cache shared:bench:1m;
    client_max_body_size 0;
    location / {{
      proxy_pass http://relay;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }}
  }}
}}
"""

SMALL_BODY = 1024
BULK_BODY = 64 << 20


def _nginx_dirs(d: Path) -> None:
    # nginx's workers drop root (to nobody): they must traverse, read and,
    # for the PUT sink and its temp files, write.
    os.chmod(d.parent, 0o755)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "www", "www/dav"):
        (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / sub, 0o777 if sub in ("body", "proxy", "www/dav") else 0o755)


def _start_nginx(d: Path, conf: str, ports: list[int]) -> subprocess.Popen:
    (d / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([nginx, "-t", "-p", str(d), "-c", str(d / "nginx.conf")],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError("nginx -t failed:\n" + check.stderr)
    proc = procs.start([nginx, "-p", str(d), "-c", str(d / "nginx.conf")], d / "stdout.log")
    procs.wait_until(lambda: all(procs.port_open(p) for p in ports) or proc.poll() is not None,
                     10, "nginx to listen")
    if proc.poll() is not None:
        raise RuntimeError("nginx exited: " + (d / "error.log").read_text())
    return proc


def self_signed_cert(d: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A throwaway self-signed certificate for ``name`` and ``*.name``."""
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},DNS:*.{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@dataclass
class App:
    port: int
    proc: subprocess.Popen


def start_app(d: Path, workers: int = 1) -> App:
    """The local app: nginx with the 1 KiB and 64 MiB files and a PUT sink."""
    _nginx_dirs(d)
    (d / "www" / "1k").write_bytes(b"x" * SMALL_BODY)
    block = os.urandom(1 << 20)  # real pages, not a sparse file's holes
    with open(d / "www" / "64m", "wb") as f:
        for _ in range(BULK_BODY >> 20):
            f.write(block)
    port = procs.free_port()
    proc = _start_nginx(d, APP_CONF.format(dir=d, port=port, workers=workers), [port])
    return App(port, proc)


@dataclass
class Front:
    hop_port: int
    tls_port: int
    proc: subprocess.Popen


def start_front(d: Path, app_port: int, relay_port: int, workers: int = 1) -> Front:
    """The second nginx: plain hop to the app, TLS front for the relay."""
    _nginx_dirs(d)
    self_signed_cert(d)
    hop, tls = procs.free_port(), procs.free_port()
    conf = FRONT_CONF.format(dir=d, workers=workers, app_port=app_port, relay_port=relay_port,
                             hop_port=hop, tls_port=tls)
    return Front(hop, tls, _start_nginx(d, conf, [hop, tls]))


SSHD_CONF = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
"""


@dataclass
class Sshd:
    port: int
    key: Path
    user: str
    proc: subprocess.Popen


def start_sshd(d: Path) -> Sshd:
    """A private sshd on a loopback port with throwaway host and user keys."""
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    port = procs.free_port()
    (d / "sshd_config").write_text(SSHD_CONF.format(port=port, dir=d))
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    proc = procs.start([sshd, "-D", "-e", "-f", str(d / "sshd_config")], d / "sshd.log")
    procs.wait_until(lambda: procs.port_open(port) or proc.poll() is not None, 10, "sshd to listen")
    if proc.poll() is not None:
        raise RuntimeError("sshd exited: " + (d / "sshd.log").read_text())
    return Sshd(port, d / "user_key", getpass.getuser(), proc)


def ssh_forward(sshd: Sshd, remote_port: int, local_port: int, interactive: bool, log: Path) -> subprocess.Popen:
    """``ssh -R remote:127.0.0.1:local`` as ``-N`` or as an interactive ``-tt`` session.

    OpenSSH turns Nagle off (TCP_NODELAY) only for interactive sessions, so the
    two modes differ a lot for small requests.
    """
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    argv = [ssh, "-F", "/dev/null", "-i", str(sshd.key), "-p", str(sshd.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            "-R", f"127.0.0.1:{remote_port}:127.0.0.1:{local_port}"]
    if interactive:
        argv += ["-tt", f"{sshd.user}@127.0.0.1", "sleep 86400"]
        return procs.start(argv, log, stdin=subprocess.PIPE)
    argv += ["-N", f"{sshd.user}@127.0.0.1"]
    return procs.start(argv, log)
