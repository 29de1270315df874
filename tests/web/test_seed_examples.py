"""The seed's cURL and Python examples, run as written (only the base URL changed).

The seed's curl lines read a cookie jar ``cookies.txt`` made by logging in; we
make it with curl too (``-c cookies.txt``), then run the seed's commands verbatim.
"""

from __future__ import annotations

import json
import shlex
import subprocess

from conftest import create_user

SEED_BASE = "https://intunnel.cloud"

SEED_CURL = r'''
# List tunnels (with session cookie)
curl -b cookies.txt https://intunnel.cloud/api/tunnels

# Create tunnel
curl -X POST https://intunnel.cloud/api/tunnels \
  -b cookies.txt \
  -H "Content-Type: application/json" \
  -d '{"name": "Test", "subdomain": "test", "local_port": 3000}'
'''

SEED_PYTHON = '''
import requests

session = requests.Session()

# Login first
session.post("https://intunnel.cloud/login", data={
    "email": "user@example.com",
    "password": "yourpassword"
})

# Get tunnels
response = session.get("https://intunnel.cloud/api/tunnels")
tunnels = response.json()
'''


def curl_commands(text: str, base: str) -> list[list[str]]:
    """The shell commands of a seed snippet, base URL swapped."""
    joined = text.replace("\\\n", " ").replace(SEED_BASE, base)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_seed_curl_examples(web, tmp_path, curl_binary):
    curl = curl_binary
    create_user("user@example.com", "user", "yourpassword")
    run = lambda argv: subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)  # noqa: E731
    login = run([curl, "-s", "-c", "cookies.txt", "-d", "email=user@example.com", "-d", "password=yourpassword",
                 web.url + "/login"])
    assert json.loads(login.stdout)["success"] is True

    list_cmd, create_cmd = curl_commands(SEED_CURL, web.url)
    assert list_cmd[0] == create_cmd[0] == "curl"
    first = run([curl, *list_cmd[1:]])
    assert first.returncode == 0 and json.loads(first.stdout) == {"tunnels": []}

    created = run([curl, *create_cmd[1:]])
    body = json.loads(created.stdout)
    assert body["success"] is True
    assert (body["tunnel"]["name"], body["tunnel"]["subdomain"]) == ("Test", "test") and body["tunnel"]["token"]

    listed = json.loads(run([curl, *list_cmd[1:]]).stdout)
    assert [t["subdomain"] for t in listed["tunnels"]] == ["test"]


def test_seed_python_example(web):
    create_user("user@example.com", "user", "yourpassword")
    namespace: dict = {}
    exec(compile(SEED_PYTHON.replace(SEED_BASE, web.url), "seed-example", "exec"), namespace)
    assert namespace["response"].status_code == 200
    assert namespace["tunnels"] == {"tunnels": []}
    # and the same session can create one, the seed's JSON way
    r = namespace["session"].post(web.url + "/api/tunnels",
                                  json={"name": "Test", "subdomain": "test", "local_port": 3000})
    assert r.status_code == 200
    assert namespace["session"].get(web.url + "/api/tunnels").json()["tunnels"][0]["subdomain"] == "test"
