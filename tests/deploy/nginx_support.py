"""Run a real nginx on loopback around the rendered InTunnel files (no root paths touched)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_self_signed_cert(directory: Path, domain: str) -> tuple[Path, Path]:
    """A certificate for <domain> and *.<domain>, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={domain}", "-addext", f"subjectAltName=DNS:{domain},DNS:*.{domain}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


def write_main_config(workdir: Path, files: dict[str, str]) -> Path:
    """Write the rendered files plus a minimal nginx.conf including them in ``http {}``."""
    conf_d = workdir / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (conf_d / name).write_text(text)
    temp = workdir / "temp"
    temp.mkdir(exist_ok=True)
    main = workdir / "nginx.conf"
    main.write_text(f"""
user root;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {conf_d}/*.conf;
}}
""")
    return main


def nginx_test(nginx: str, main: Path) -> subprocess.CompletedProcess:
    return subprocess.run([nginx, "-t", "-p", str(main.parent), "-e", str(main.parent / "error.log"),
                           "-c", str(main)], capture_output=True, text=True)


def wait_for_port(port: int, deadline: float) -> None:
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.02)


@contextlib.contextmanager
def running_nginx(nginx: str, main: Path, port: int):
    """nginx in the foreground on the given config; stopped and reaped on exit."""
    proc = subprocess.Popen([nginx, "-p", str(main.parent), "-e", str(main.parent / "error.log"),
                             "-c", str(main), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            wait_for_port(port, time.monotonic() + 10)
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"nginx did not start: {proc.communicate()[1].decode()}") from None
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(main.parent / "nginx.pid")


def tls_front(relay_settings, tmp_path: Path, nginx: str, domain: str) -> tuple[Path, int]:
    """The generated nginx config for ``relay_settings`` with a self-signed certificate, on free
    loopback ports, checked by ``nginx -t``: (main config, HTTPS port) for ``running_nginx``."""
    from intunnel import nginxconf
    cert, key = make_self_signed_cert(tmp_path / "tls", domain)
    http_port, https_port = free_port(), free_port()
    acme = tmp_path / "acme"
    acme.mkdir()
    rendered = nginxconf.render(relay_settings.replace(
        tls_cert=str(cert), tls_key=str(key), nginx_http_port=http_port, nginx_https_port=https_port,
        nginx_ipv6=False, nginx_acme_root=str(acme), web_listen=f"127.0.0.1:{free_port()}"))
    main = write_main_config(tmp_path / "nginx", rendered)
    checked = nginx_test(nginx, main)
    assert checked.returncode == 0, checked.stderr
    return main, https_port
