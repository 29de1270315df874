"""Prompts on a real terminal (a pty): passwords asked twice without echo, confirmations."""

import os
import pty
import select
import time

from intunnel.models import User

from .conftest import admin_command


class Terminal:
    """`intunnel-admin` with a pseudo-terminal as its controlling terminal."""

    def __init__(self, admin, *args: str):
        cmd = admin_command() + ["--config", str(admin.config), *args]
        env = {**admin.env, "TERM": "dumb"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            try:
                os.execve(cmd[0], cmd, env)
            finally:
                os._exit(127)
        self.seen = b""

    def expect(self, text: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"waited for {text!r}, got {self.seen!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {text!r}; got {self.seen!r}")
                self.seen += chunk

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def finish(self, timeout: float = 30.0) -> int:
        """Read to the end; the exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                self.seen += chunk
        else:
            os.kill(self.pid, 9)
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_password_asked_twice_without_echo(installed):
    t = Terminal(installed, "user", "create", "--email", "tty@example.test", "--username", "tty")
    t.expect(b"New password: ")
    t.send("typed at a terminal")
    t.expect(b"New password (again): ")
    t.send("typed at a terminal")
    assert t.finish() == 0
    assert b"created user 'tty'" in t.seen
    assert b"typed at a terminal" not in t.seen  # not echoed
    installed.open_models()
    from intunnel.accounts import authenticate
    assert authenticate("tty", "typed at a terminal") is not None


def test_different_passwords_change_nothing(installed):
    t = Terminal(installed, "user", "set-password", "root")
    t.expect(b"New password: ")
    t.send("first attempt!")
    t.expect(b"(again): ")
    t.send("second attempt")
    assert t.finish() == 1
    assert b"the two passwords differ; nothing changed" in t.seen


def test_delete_asks_for_confirmation(installed):
    installed.create_user("bob@example.test", "bob")
    t = Terminal(installed, "user", "delete", "bob")
    t.expect(b"Delete user 'bob' <bob@example.test> and their 0 tunnel(s)? [y/N] ")
    t.send("n")
    assert t.finish() == 1 and b"aborted; nothing changed" in t.seen
    installed.open_models()
    assert User.get_or_none(User.username == "bob") is not None
    t = Terminal(installed, "user", "delete", "bob")
    t.expect(b"[y/N] ")
    t.send("y")
    assert t.finish() == 0 and b"deleted user 'bob'" in t.seen
    assert User.get_or_none(User.username == "bob") is None
