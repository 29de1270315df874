"""`intunnel-admin tunnel create` (issue 16): HTTP and TCP tunnels for any user, by the API's rules."""

from __future__ import annotations


def test_tunnel_create_http_and_tcp(admin):
    admin.create_user("alice@example.test", "alice")
    env = {"INTUNNEL_RELAY_TCP_PORTS": "23000-23001", "INTUNNEL_TCP_MAX_PER_USER": "5"}
    made = admin.json("tunnel", "create", "--user", "alice", "--name", "SSH", "--local-port", "22",
                      "--protocol", "tcp", env=env)["tunnel"]
    assert made["protocol"] == "tcp" and made["remote_port"] == 23000 and made["url"] == "tcp://example.test:23000"
    assert made["command"].startswith("intunnel tcp 22 --server ") and made["token"] in made["command"]
    out = admin.ok("tunnel", "create", "--user", "alice", "--name", "DB", "--local-port", "5432",
                   "--protocol", "tcp", "--remote-port", "23001", env=env).stdout
    assert "tcp://example.test:23001" in out and "intunnel tcp 5432" in out
    admin.fails("tunnel", "create", "--user", "alice", "--name", "more", "--local-port", "1", "--protocol", "tcp",
                env=env, match="every port of this server's TCP range")
    admin.fails("tunnel", "create", "--user", "alice", "--name", "off", "--local-port", "1", "--protocol", "tcp",
                env={"INTUNNEL_RELAY_TCP_PORTS": ""}, match="TCP tunnels are disabled")
    web = admin.json("tunnel", "create", "--user", "alice", "--name", "Web", "--local-port", "3000",
                     "--subdomain", "myweb")["tunnel"]
    assert web["protocol"] == "http" and web["url"].startswith("http://myweb.example.test")
    admin.fails("tunnel", "create", "--user", "alice", "--name", "Web", "--local-port", "3000",
                match="subdomain is required")
    shown = admin.json("tunnel", "show", "1")["tunnel"]
    assert shown["url"] == "tcp://example.test:23000" and "token" not in shown
