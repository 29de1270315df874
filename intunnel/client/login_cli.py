"""`intunnel login` and `intunnel logout`: a personal API token per machine, by device authorization.

login (RFC 8628, as ``gh auth login``): ask the web app for a code pair, print the page and
the short code for a person to approve on the dashboard, poll at the interval the server
gives (5 s longer after each slow_down) until it is approved, denied or expired, then save
the API token in the client config (0600) under the relay's URL (what ``intunnel http
--server`` takes), with the web app's URL beside it for API calls.

``--server`` may be the dashboard's URL (the natural thing to paste) or the relay's: the
relay answers the API's paths with where the web app is (NOT_THE_WEB_APP), which is followed
once.  logout revokes the token with itself (DELETE /api/tokens/<id>) and forgets it; when
the server can't be reached it is forgotten all the same, and the user is told it stays
valid until revoked on the dashboard.  The token is never printed.
"""

from __future__ import annotations

import socket
import sys
import time
import webbrowser
from types import SimpleNamespace
from typing import Callable, Optional

from .. import device_auth
from . import config
from .agent import complete_server, parse_server
from .api import Api, ApiError

NOT_THE_WEB_APP = "NOT_THE_WEB_APP"  # the relay's answer on the API's paths (its web_url says where)
MAX_MACHINE_NAME = 64  # the server's default device_max_client_name; longer host names are cut


class LoginFailed(Exception):
    """One line for the user, and the exit status (2: what was typed is wrong; 1: anything else)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


# --- intunnel login ---------------------------------------------------------------------

LOGIN_HELP = "Log this machine in to an InTunnel server (approve a code on its dashboard)."


def add_login_arguments(parser) -> None:
    parser.add_argument("--server", help="the dashboard's URL (or the relay's), e.g. https://example.com "
                                         "(default: the saved default server)")
    parser.add_argument("--insecure", action="store_true", help="don't verify the server's TLS certificate")
    parser.add_argument("--machine-name", metavar="NAME",
                        help="how the dashboard names this machine (default: its hostname)")
    parser.add_argument("--open", action="store_true", help="also open the approval page in a web browser")


def run_login(args, sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> int:
    try:
        return _login(args, sleep, clock)
    except LoginFailed as e:
        print(f"intunnel login: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("\nintunnel login: stopped; nothing was saved (the code expires on its own)", file=sys.stderr)
        return 130


def _login(args, sleep, clock) -> int:
    server = _server_url(args.server or config.load().server, "login", args.server is not None)
    machine = machine_name(args.machine_name)
    api, start = _start(server, machine, args.insecure)
    user_code, device_code = start["user_code"], start["device_code"]
    page = start["verification_uri_complete"]
    minutes = max(1, round(start["expires_in"] / 60))
    print(f"Open {page} and approve the code {user_code}")
    print(f"(this machine shows there as “{machine}”; the code expires in {minutes} min; Ctrl-C to stop)",
          flush=True)
    if args.open:
        webbrowser.open(page)
    got = _poll(api, device_code, start["interval"], start["expires_in"], sleep, clock)
    return _save(got, api.base_url, args.insecure)


def _server_url(server: Optional[str], command: str, typed: bool) -> str:
    if not server:
        raise LoginFailed(f"give --server URL: the dashboard's address, e.g. `intunnel {command} "
                          "--server https://example.com`", 2)
    completed, note = complete_server(server.strip())
    try:
        parse_server(completed)
    except ValueError as e:
        raise LoginFailed(str(e), 2) from None
    if note and typed:
        print(f"intunnel: {note}", file=sys.stderr)
    return completed.rstrip("/")


def machine_name(given: Optional[str] = None) -> str:
    name = given if given is not None else (socket.gethostname() or "unknown machine")
    name = " ".join(name.split())[:MAX_MACHINE_NAME]
    if not name:
        raise LoginFailed("--machine-name must not be empty", 2)
    return name


def _start(server: str, machine: str, insecure: bool) -> tuple:
    """(the Api of the web app, its answer to POST /api/device/code); follows the relay's
    NOT_THE_WEB_APP to the web app once."""
    base = server
    for attempt in (1, 2):
        api = Api(base, insecure=insecure)
        try:
            answer = api.post("/api/device/code", {"client_name": machine})
        except ApiError as e:
            web = e.answer.get("web_url")
            if (e.code == NOT_THE_WEB_APP and attempt == 1 and isinstance(web, str)
                    and web.startswith(("http://", "https://"))):
                base = web.rstrip("/")
                continue
            if e.status == 404 or "did not answer JSON" in str(e):
                raise LoginFailed(f"{base} is not an InTunnel web app that offers `intunnel login` ({e}); "
                                  "give the dashboard's URL with --server", 2) from None
            raise LoginFailed(str(e), 2 if e.code == "VALIDATION_ERROR" else 1) from None
        if not _is_start_answer(answer):
            raise LoginFailed(f"{base} answered POST /api/device/code with something unexpected")
        return api, answer
    raise AssertionError("unreachable")


def _is_start_answer(answer: dict) -> bool:
    texts = ("device_code", "user_code", "verification_uri_complete")
    return (all(isinstance(answer.get(k), str) and answer[k] for k in texts)
            and all(isinstance(answer.get(k), int) and answer[k] > 0 for k in ("interval", "expires_in")))


def _poll(api: Api, device_code: str, interval: float, expires_in: float, sleep, clock) -> dict:
    """Wait for the approval: the answer of POST /api/device/token once approved."""
    deadline = clock() + expires_in
    unreachable_said = False
    while True:
        sleep(interval)  # first wait, then ask (RFC 8628 3.5)
        if clock() >= deadline:
            raise LoginFailed("the code expired before it was approved; run `intunnel login` again")
        try:
            return api.post("/api/device/token", {"device_code": device_code})
        except ApiError as e:
            if e.code in (device_auth.PENDING, device_auth.SLOW_DOWN):
                interval = device_auth.client_next_interval(interval, e.code)
            elif e.status == 429:  # the address's write budget (several logins behind one NAT)
                interval = device_auth.client_next_interval(interval, device_auth.SLOW_DOWN)
            elif e.code == device_auth.EXPIRED:
                raise LoginFailed("the code expired before it was approved; run `intunnel login` again") from None
            elif e.code == device_auth.DENIED:
                raise LoginFailed(f"the login was denied on the dashboard ({e})") from None
            elif e.status == 0 or e.status >= 500:
                if not unreachable_said:  # a restarting web app: keep trying until the code expires
                    print(f"intunnel login: {e}; still trying", file=sys.stderr, flush=True)
                    unreachable_said = True
            else:
                raise LoginFailed(str(e)) from None


def _save(got: dict, base: str, insecure: bool) -> int:
    token, relay, web = got.get("token"), got.get("relay_url"), got.get("web_url") or base
    api_token, user = got.get("api_token"), got.get("user")
    if not (isinstance(token, str) and token and isinstance(relay, str) and relay and isinstance(web, str)
            and isinstance(api_token, dict) and isinstance(user, dict)):
        raise LoginFailed(f"{base} answered the approval with something unexpected")
    token_id = api_token.get("id") if isinstance(api_token.get("id"), int) else None
    who = str(user.get("email") or user.get("username") or "")
    cfg = config.load()  # again: minutes went by, another command may have saved something
    entry = cfg.entry(relay)
    previous = entry.login
    entry.login = config.Login(token, token_id, who, web.rstrip("/"))
    key = config.server_key(relay)
    if not cfg.server:
        cfg.server = key
    path = config.save(cfg)
    if previous is not None and previous.token != token:
        _revoke_quietly(previous, insecure)  # the login it replaces: its token would linger unused
    print(f"logged in as {who} on {key}; next: `intunnel http 3000` "
          f"(API token “{api_token.get('name', '')}” saved in {path})")
    if config.server_key(cfg.server) != key:
        print(f"(your default server stays {cfg.server}: add --server {key} to use this one)")
    return 0


def _revoke_quietly(login: config.Login, insecure: bool) -> None:
    if login.token_id is None or not login.web:
        return
    try:
        Api(login.web, token=login.token, insecure=insecure).delete(f"/api/tokens/{login.token_id}")
    except ApiError:
        pass  # already revoked, or unreachable: it is forgotten here either way


# --- intunnel logout --------------------------------------------------------------------

LOGOUT_HELP = "Revoke this machine's login (its API token) and forget it."


def add_logout_arguments(parser) -> None:
    parser.add_argument("--server", help="the server logged in to (default: the saved default server)")
    parser.add_argument("--insecure", action="store_true", help="don't verify the server's TLS certificate")


def run_logout(args) -> int:
    try:
        return _logout(args)
    except LoginFailed as e:
        print(f"intunnel logout: {e}", file=sys.stderr)
        return e.status


def _logout(args) -> int:
    cfg = config.load()
    server = _server_url(args.server or cfg.server, "logout", args.server is not None)
    key = _logged_in_key(cfg, config.server_key(server))
    entry = cfg.servers[key]
    login = entry.login
    web = login.web or key
    status, said = 0, "its API token is revoked"
    if login.token_id is None:
        status, said = 1, f"the saved login names no token id: revoke its token on {web}/tokens"
    else:
        try:
            Api(web, token=login.token, insecure=args.insecure).delete(f"/api/tokens/{login.token_id}")
        except ApiError as e:
            if e.status in (401, 404):
                said = "its API token was revoked already"
            else:
                status = 1
                said = (f"could not revoke its API token ({e}): it stays valid until you revoke it on "
                        f"{web}/tokens")
    entry.login = None
    if not entry.tokens:
        del cfg.servers[key]  # the default server is kept: `intunnel login` alone logs in again
    path = config.save(cfg)
    print(f"logged out of {key}; {said}; wrote {path}")
    return status


def _logged_in_key(cfg: config.ClientConfig, key: str) -> str:
    """The saved server with a login for ``key``: the relay's URL, or the web app's it was reached by."""
    entry = cfg.find(key)
    if entry is not None and entry.login is not None:
        return key
    by_web = [k for k, e in cfg.servers.items() if e.login and config.server_key(e.login.web or "") == key]
    if len(by_web) == 1:
        return by_web[0]
    raise LoginFailed(f"not logged in to {key} (see `intunnel config show`)")


# Two commands of this module (see intunnel/cli.py's COMMANDS).
login = SimpleNamespace(HELP=LOGIN_HELP, add_arguments=add_login_arguments, run=run_login)
logout = SimpleNamespace(HELP=LOGOUT_HELP, add_arguments=add_logout_arguments, run=run_logout)
