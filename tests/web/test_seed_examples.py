"""The seed's cURL and Python examples, run as written (only the base URL changed).

The seed's curl lines read a cookie jar ``cookies.txt`` made by logging in; we
make it with curl too (``-c cookies.txt``), then run the seed's commands verbatim.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

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


def test_readme_rest_api_curl_examples(web, tmp_path, curl_binary):
    """The README's curl block runs as written (lines needing a real API token aside)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## REST API", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [c for c in curl_commands(block.replace("https://example.com", SEED_BASE), web.url)
                if not any("itk_..." in part for part in c)]
    assert len(commands) >= 4
    create_user("user@example.com", "user", "yourpassword")
    outputs = []
    for argv in commands:
        assert argv[0] == "curl"
        r = subprocess.run([curl_binary, "-s", *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, argv
        outputs.append(json.loads(r.stdout))
    assert all(o.get("error") is not True for o in outputs), outputs
    assert any(str(o.get("token", "")).startswith("itk_") for o in outputs)
