"""The dashboard: server-rendered HTML pages over the same business rules as the API.

Every action is a plain HTML form: POST -> (CSRF check) -> business rule ->
303 redirect with a flash message, so it all works without JavaScript.  A form
with invalid input is rendered again (status 400) with the message next to the
field.  ``static/app.js`` only adds copy buttons and live tunnel status.

Routes
    GET  /login                       styled login page (POST /login is login.py's)
    GET  /                            tunnels, live status
    GET  /tunnels/new, POST /tunnels  create
    GET  /tunnels/<id>                commands, token, settings, danger zone
    POST /tunnels/<id>/edit           rename / change port
    POST /tunnels/<id>/traffic        turn the traffic view on or off
    POST /tunnels/<id>/domains        add a custom domain (POST .../domains/remove: remove one)
    POST /tunnels/<id>/access         who may visit: basic-auth users, allowed/denied addresses
    GET|POST /tunnels/<id>/regenerate confirm, then new token (the relay cuts the old client)
    GET|POST /tunnels/<id>/delete     confirm, then delete
    GET  /tokens, POST /tokens, POST /tokens/<id>/revoke
    GET  /profile, POST /profile/password
    GET|POST /device                  approve or deny an `intunnel login` (device_page)
    GET  /admin/users, POST /admin/users, POST /admin/users/<id>/(disable|enable)
    GET  /static/<file>
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import bottle
import peewee as pw

from .. import __version__, accounts, apitokens, clientzip, domains, tcpports, tunnels, validation
from ..errors import AppError, Forbidden, NotFound, RateLimited, SubdomainTaken, ValidationError
from ..models import Session, Tunnel, User
from ..security import verify_password
from . import auth, device_page, login
from .flash import Flash
from .render import STATIC_DIR, make_environment
from .state import current as current_state

# Field names as people read them, for messages raised by the validation module.
FIELD_LABELS = {"name": "Name", "subdomain": "Subdomain", "local_port": "Local port",
                "email": "Email", "username": "Username", "password": "Password"}


class Pages:
    """The dashboard bound to one app's settings (templates, flash cookie)."""

    def __init__(self, settings):
        self.settings = settings
        self.env = make_environment()
        self.flash = Flash(settings.secret_key, settings.cookie_secure, settings.domain)

    # --- rendering ----------------------------------------------------------

    def render(self, template: str, status: int = 200, **context: Any) -> str:
        user = context.pop("user", None) or auth.current_user()
        context.setdefault("nav", "")
        flashes = self.resolve_secrets(self.flash.pop())
        page = self.env.get_template(template).render(
            user=user, csrf_token=auth.csrf_token() or "", flashes=flashes,
            domain=self.settings.domain, relay_url=self.settings.relay_url,
            client=self.settings.client_command, client_download=self.client_download_url(),
            version=__version__, url_for=self.settings.tunnel_url,
            poll_seconds=self.settings.dashboard_poll_interval, **context)
        bottle.response.status = status
        bottle.response.content_type = "text/html; charset=utf-8"
        return page

    def client_download_url(self) -> str:
        """Where this server's client zipapp is, as the person reading the page reaches the web
        app (the address in their browser, through nginx too), unless web_public_url says."""
        scheme, netloc = bottle.request.urlparts[:2]
        return (self.settings.web_public_url.rstrip("/") or f"{scheme}://{netloc}") + clientzip.URL_PATH

    @staticmethod
    def resolve_secrets(flashes: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A ``secret`` message names a value held server-side: show it to its own session, once."""
        session = auth.authenticate_request().session
        store = current_state().one_time_secrets
        resolved = []
        for kind, text in flashes:
            if kind == "secret":
                text = store.take(session.id_hash if session is not None else None, text)
                if text is None:
                    continue
            resolved.append((kind, text))
        return resolved

    def error_page(self, status: int, message: str) -> str:
        """The HTML error page (the app calls it for every browser-facing error)."""
        try:
            user, token = auth.current_user(), auth.csrf_token() or ""
        except Exception:  # the database may be what failed: still show a page
            user, token = None, ""
        title = bottle.HTTP_CODES.get(status, "Error")
        template = self.env.get_template("error.html")
        return template.render(user=user, csrf_token=token, flashes=[], status=status, title=title,
                               message=message, nav="", domain=self.settings.domain,
                               version=__version__)

    # --- request helpers ----------------------------------------------------

    @staticmethod
    def user_or_login() -> User:
        """The logged-in user, or a redirect to the login page that comes back here."""
        user = auth.current_user()
        if user is None:
            path = bottle.request.fullpath if bottle.request.method == "GET" else "/"
            query = {"next": path} if path != "/" else {}
            login.see_other("/login" + ("?" + urlencode(query) if query else ""))
        return user

    def form_user(self) -> User:
        """For a form POST: the user, after the form's CSRF token checks out.

        Form posts share the API's per-user write budget (rate_limit_write a minute).
        """
        user = self.user_or_login()
        auth.check_csrf_form()
        self.spend(current_state().write_limiter, user, "Too many changes in a minute; try again shortly")
        return user

    @staticmethod
    def spend(limiter, user: User, message: str) -> None:
        """Count one action against ``limiter`` (keyed like the API's); RateLimited when over."""
        decision = limiter.hit(f"user:{user.id}")
        if not decision.allowed:
            raise RateLimited(message, retry_after=decision.retry_after(current_state().clock()))

    @staticmethod
    def field(name: str) -> str:
        return bottle.request.forms.getunicode(name) or ""

    def done(self, message: str, location: str, kind: str = "success"):
        self.flash.add(kind, message)
        login.see_other(location)

    # --- login --------------------------------------------------------------

    def login_page(self):
        query = bottle.request.query
        next_path = login.safe_next(query.getunicode("next"))
        if auth.current_user() is not None:
            login.see_other(next_path)
        error = login.ERROR_MESSAGES.get(query.getunicode("error") or "", "")
        return self.render("login.html", status=429 if query.get("error") == "throttled" else 200,
                           error=error, next=next_path, email="")

    # --- tunnels ------------------------------------------------------------

    def dashboard(self):
        user = self.user_or_login()
        return self.render("dashboard.html", user=user, nav="tunnels", tunnels=tunnels.list_for(user))

    def new_tunnel(self):
        user = self.user_or_login()
        return self.render("tunnel_new.html", user=user, nav="tunnels", errors={},
                           form={"name": "", "subdomain": "", "local_port": "", "protocol": "http", "remote_port": ""},
                           **self.new_tunnel_context())

    def new_tunnel_context(self) -> dict:
        ranges = tcpports.parse_ranges(self.settings.relay_tcp_ports)
        return {"host_suffix": self.host_suffix, "tcp_on": bool(ranges), "tcp_ports": tcpports.describe(ranges)}

    @property
    def host_suffix(self) -> str:
        return self.settings.tunnel_url("x").split("://", 1)[1][2:]

    def create_tunnel(self):
        user = self.form_user()
        form = {k: self.field(k) for k in ("name", "subdomain", "local_port", "protocol", "remote_port")}
        tcp = form["protocol"] == "tcp"
        # Check each field on its own first, so every mistake is shown at once.
        errors = field_errors(
            name=lambda: validation.name(form["name"]),
            subdomain=lambda: (tcp and not form["subdomain"].strip()) or
            validation.subdomain(form["subdomain"], validation.reserved_subdomains(self.settings)),
            local_port=lambda: validation.local_port(port_value(form["local_port"])))
        if not errors:
            try:
                tunnel = tunnels.create(self.settings, user, form["name"], form["subdomain"].strip() or None,
                                        port_value(form["local_port"]), protocol="tcp" if tcp else "http",
                                        remote_port=port_value(form["remote_port"]) if tcp and form["remote_port"].strip()
                                        else None)
            except SubdomainTaken as err:
                errors = {"subdomain": human(err.message)}
            except AppError as err:   # TCP: off, the user's limit, the range used up, a bad or taken port
                errors = {"remote_port" if err.field == "remote_port" else "protocol": human(err.message)}
        if errors:
            return self.render("tunnel_new.html", status=400, user=user, nav="tunnels",
                               errors=errors, form=form, **self.new_tunnel_context())
        self.done(f"Tunnel “{tunnel.name}” created. Connect a client to bring it online.",
                  f"/tunnels/{tunnel.id}")

    def tunnel_page(self, tunnel_id):
        user = self.user_or_login()
        tunnel = tunnels.get_owned(user, tunnel_id)
        return self.render_tunnel(user, tunnel, {}, {"name": tunnel.name, "local_port": str(tunnel.local_port)})

    def render_tunnel(self, user, tunnel, errors, form, status=200, access_form=None):
        view = tunnels.access_view(tunnel)
        if access_form is None:
            members = view["members"]
            access_form = {"ip_allow": "\n".join(view["ip_allow"]), "ip_deny": "\n".join(view["ip_deny"]),
                           "bypass_paths": "\n".join(view["bypass_paths"]), "new_user": "", **members_form(members)}
        return self.render("tunnel.html", status=status, user=user, nav="tunnels", tunnel=tunnel,
                           url=tunnels.public_url(self.settings, tunnel.subdomain, tunnel.protocol, tunnel.remote_port),
                           kind="tcp" if tunnel.protocol == "tcp" else "http",
                           errors=errors, form=form,
                           access=view, access_form=access_form, session_access=tunnels.session_view(tunnel),
                           traffic_poll=self.settings.traffic_poll_interval,
                           traffic_rows=self.settings.traffic_rows_per_tunnel,
                           custom_domains=[domains.view(self.settings, tunnel, row) for row in domains.list_for(tunnel)],
                           custom_domains_on=self.settings.custom_domains_per_tunnel > 0
                           and getattr(tunnel, "protocol", "http") == "http")

    def set_access(self, tunnel_id):
        """The tunnel page's access form: the same ``access`` object the API takes."""
        user = self.form_user()
        tunnel = tunnels.get_owned(user, tunnel_id)
        form = {k: self.field(k) for k in ("ip_allow", "ip_deny", "bypass_paths", "new_user", "members",
                                           "members_users", "members_domains")}
        if self.field("public") == "1":
            data = {"public": True}
        else:
            removed = set(bottle.request.forms.getall("remove_user"))
            new_user, new_password = form["new_user"].strip(), self.field("new_password")
            users: list = [{"username": u} for u in tunnels.access_view(tunnel)["basic_auth"]
                           if u not in removed and u != new_user]
            if new_user or new_password:
                users.append({"username": new_user, "password": new_password})
            data = {"basic_auth": users, "ip_allow": address_lines(form["ip_allow"]),
                    "ip_deny": address_lines(form["ip_deny"]), "members": members_update(form),
                    "bypass_paths": form["bypass_paths"].split()}
        try:
            tunnels.set_access(self.settings, tunnel, data)
        except ValidationError as err:
            return self.render_tunnel(user, tunnel, {"access": human(err.message.removeprefix("access."))},
                                      {"name": tunnel.name, "local_port": str(tunnel.local_port)},
                                      status=400, access_form=form)
        self.done("Access saved. Visitors get it on their next request." if not data.get("public") else
                  "The tunnel is public again: anyone with its address may visit.", f"/tunnels/{tunnel.id}")

    def set_traffic_view(self, tunnel_id):
        """The Recent requests card's switch: off also deletes what was kept."""
        user = self.form_user()
        on = self.field("on") == "1"
        tunnel = tunnels.update(user, tunnel_id, {"traffic_view": on})
        self.done("Recent requests are shown again." if on else
                  "Recent requests are off: nothing more is kept, and what was kept is deleted.",
                  f"/tunnels/{tunnel.id}")

    def add_domain(self, tunnel_id):
        """The Custom domains card: record the wish; the reconciler does DNS, ACME and nginx."""
        user = self.form_user()
        tunnel = tunnels.get_owned(user, tunnel_id)
        try:
            row = domains.add(self.settings, tunnel, self.field("hostname"))
        except AppError as err:   # invalid, taken or over the limit: said on the page
            self.done(err.message, f"/tunnels/{tunnel.id}#domains-h", kind="error")
            return
        self.done(f"{row.hostname} added: create its DNS record, and its certificate follows once it "
                  "points here.", f"/tunnels/{tunnel.id}#domains-h")

    def remove_domain(self, tunnel_id):
        user = self.form_user()
        tunnel = tunnels.get_owned(user, tunnel_id)
        hostname = self.field("hostname")
        domains.remove(tunnel, hostname)
        self.done(f"{hostname} removed: it is no longer served, and its certificate is deleted.",
                  f"/tunnels/{tunnel.id}#domains-h")

    def edit_tunnel(self, tunnel_id):
        user = self.form_user()
        tunnel = tunnels.get_owned(user, tunnel_id)
        form = {"name": self.field("name"), "local_port": self.field("local_port")}
        errors = field_errors(name=lambda: validation.name(form["name"]),
                              local_port=lambda: validation.local_port(port_value(form["local_port"])))
        if errors:
            return self.render_tunnel(user, tunnel, errors, form, status=400)
        tunnels.update(user, tunnel.id, {"name": form["name"], "local_port": port_value(form["local_port"])})
        self.done("Tunnel settings saved.", f"/tunnels/{tunnel.id}")

    def confirm_regenerate(self, tunnel_id):
        user = self.user_or_login()
        tunnel = tunnels.get_owned(user, tunnel_id)
        return self.render(
            "confirm.html", user=user, nav="tunnels", subject=tunnel.subdomain,
            heading="Regenerate the token?", button="Regenerate token",
            message=(f"“{tunnel.name}” gets a new token. A client connected with the old token is "
                     "disconnected right away and must be started again with the new one."),
            action=f"/tunnels/{tunnel.id}/regenerate", cancel_url=f"/tunnels/{tunnel.id}")

    def regenerate(self, tunnel_id):
        user = self.form_user()
        self.spend(current_state().regenerate_limiter, user, "Too many token regenerations; try again later")
        tunnel = tunnels.regenerate_token(user, tunnel_id)
        self.done("New token created. The old one no longer works; update your client.",
                  f"/tunnels/{tunnel.id}")

    def confirm_delete(self, tunnel_id):
        user = self.user_or_login()
        tunnel = tunnels.get_owned(user, tunnel_id)
        return self.render(
            "confirm.html", user=user, nav="tunnels", subject=tunnel.subdomain,
            heading=f"Delete “{tunnel.name}”?", button="Delete tunnel",
            message=(f"{self.settings.tunnel_url(tunnel.subdomain)} stops working at once and its "
                     "client is disconnected. The subdomain becomes free for anyone to claim."),
            action=f"/tunnels/{tunnel.id}/delete", cancel_url=f"/tunnels/{tunnel.id}")

    def delete(self, tunnel_id):
        user = self.form_user()
        tunnel = tunnels.get_owned(user, tunnel_id)
        name = tunnel.name
        tunnels.delete(user, tunnel.id)
        self.done(f"Tunnel “{name}” deleted.", "/")

    # --- API tokens ---------------------------------------------------------

    def tokens_page(self, errors=None, form=None, status=200):
        user = self.user_or_login()
        # A new token's secret arrives once, through a "secret" flash message (see render()).
        return self.render("tokens.html", status=status, user=user, nav="tokens",
                           tokens=apitokens.list_for(user), errors=errors or {}, form=form or {"name": ""})

    def create_token(self):
        user = self.form_user()
        name = self.field("name")
        try:
            _, secret = apitokens.create(user, name)
        except ValidationError as err:
            return self.tokens_page({"name": human(err.message)}, {"name": name}, status=400)
        session = auth.authenticate_request().session
        self.flash.add("secret", current_state().one_time_secrets.put(session.id_hash, secret))
        self.done(f"Token “{name.strip()}” created.", "/tokens")

    def revoke_token(self, token_id):
        user = self.form_user()
        token = apitokens.get_owned(user, token_id)
        apitokens.revoke(user, token.id)
        self.done(f"Token “{token.name}” revoked. Scripts using it now get 401.", "/tokens")

    # --- profile ------------------------------------------------------------

    def profile_page(self, errors=None, status=200):
        user = self.user_or_login()
        count = Tunnel.select().where(Tunnel.owner == user).count()
        return self.render("profile.html", status=status, user=user, nav="profile",
                           tunnel_count=count, errors=errors or {})

    def change_password(self):
        user = self.form_user()
        current, new, repeat = (self.field(k) for k in ("current_password", "new_password", "confirm_password"))
        if not verify_password(current, user.password_hash):
            return self.profile_page({"current_password": "Current password is wrong."}, status=400)
        if new != repeat:
            return self.profile_page({"confirm_password": "The two new passwords differ."}, status=400)
        try:
            accounts.set_password(user, new)
        except ValidationError as err:
            return self.profile_page({"new_password": human(err.message)}, status=400)
        # Whoever else knew the old password is logged out everywhere else.
        this_session = auth.authenticate_request().session
        accounts.end_sessions((Session.user == user) & (Session.id_hash != this_session.id_hash))
        self.done("Password changed. Your other sessions were logged out.", "/profile")

    # --- admin --------------------------------------------------------------

    def admin_user(self, post: bool = False) -> User:
        user = self.form_user() if post else self.user_or_login()
        if not user.is_admin:
            raise Forbidden("Only administrators can manage users")
        return user

    def users_page(self, errors=None, form=None, status=200):
        user = self.admin_user()
        counts = dict(Tunnel.select(Tunnel.owner, pw.fn.COUNT(Tunnel.id)).group_by(Tunnel.owner).tuples())
        return self.render("admin_users.html", status=status, user=user, nav="users",
                           users=list(User.select().order_by(User.id)), counts=counts,
                           errors=errors or {}, form=form or {"email": "", "username": "", "is_admin": False})

    def create_user(self):
        self.admin_user(post=True)
        form = {"email": self.field("email"), "username": self.field("username"),
                "is_admin": self.field("is_admin") == "1"}
        try:
            created = accounts.create_user(form["email"], form["username"], self.field("password"),
                                           is_admin=form["is_admin"])
        except AppError as err:
            if err.status not in (400, 409):
                raise
            return self.users_page({err.field or "email": human(err.message)}, form, status=400)
        self.done(f"User {created.username} created.", "/admin/users")

    def set_disabled(self, user_id, action):
        admin = self.admin_user(post=True)
        target = User.get_or_none(User.id == tunnels.parse_id(user_id))
        if target is None:
            raise NotFound("User not found")
        if target.id == admin.id:
            raise Forbidden("You can't disable your own account")
        accounts.set_disabled(target, action == "disable")
        verb = "disabled" if action == "disable" else "enabled"
        self.done(f"User {target.username} {verb}.", "/admin/users")

    # --- static -------------------------------------------------------------

    @staticmethod
    def static(filename):
        response = bottle.static_file(filename, root=str(STATIC_DIR))
        if isinstance(response, bottle.HTTPError):
            raise NotFound("No such file")
        # Templates link with ?v=<content hash>, so a long cache is safe.
        response.set_header("Cache-Control", "public, max-age=31536000, immutable"
                            if bottle.request.query.get("v") else "no-cache")
        return response


def members_form(members: dict | None) -> dict:
    """The members-only fields of the tunnel page's access form, from the API's view."""
    if members is None:
        choice = "off"
    elif members["owner_only"]:
        choice = "owner"
    else:
        choice = "listed" if members["users"] or members["email_domains"] else "any"
    return {"members": choice, "members_users": "\n".join((members or {}).get("users", [])),
            "members_domains": "\n".join((members or {}).get("email_domains", []))}


def members_update(form: dict):
    """The API's ``access.members`` from the form: off, any account, only me, or listed people."""
    choice = form.get("members") or "off"
    if choice == "any":
        return True
    if choice == "owner":
        return {"owner_only": True}
    if choice == "listed":
        return {"users": address_lines(form.get("members_users") or ""),
                "email_domains": address_lines(form.get("members_domains") or "")}
    return False


def address_lines(text: str) -> list[str]:
    """A textarea of addresses/CIDRs: one per line (commas and spaces separate too)."""
    return [part for part in text.replace(",", " ").split() if part]


def port_value(text: str) -> Any:
    """A form's port: an int when it is digits, else the text (validation names the error)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else text


def field_errors(**checks) -> dict[str, str]:
    """Run each field's check; field -> readable message for those that fail."""
    errors = {}
    for field, check in checks.items():
        try:
            check()
        except ValidationError as err:
            errors[field] = human(err.message)
    return errors


def human(message: str) -> str:
    """'local_port must be ...' -> 'Local port must be ...'."""
    head, sep, rest = message.partition(" ")
    if head in FIELD_LABELS and sep:
        return f"{FIELD_LABELS[head]} {rest}"
    return message[:1].upper() + message[1:]


def install(app: bottle.Bottle, settings) -> None:
    pages = Pages(settings)
    app.intunnel.error_page = pages.error_page
    routes = (
        ("/login", "GET", pages.login_page),
        ("/", "GET", pages.dashboard),
        ("/tunnels/new", "GET", pages.new_tunnel),
        ("/tunnels", "POST", pages.create_tunnel),
        ("/tunnels/<tunnel_id>", "GET", pages.tunnel_page),
        ("/tunnels/<tunnel_id>/edit", "POST", pages.edit_tunnel),
        ("/tunnels/<tunnel_id>/access", "POST", pages.set_access),
        ("/tunnels/<tunnel_id>/traffic", "POST", pages.set_traffic_view),
        ("/tunnels/<tunnel_id>/domains", "POST", pages.add_domain),
        ("/tunnels/<tunnel_id>/domains/remove", "POST", pages.remove_domain),
        ("/tunnels/<tunnel_id>/regenerate", "GET", pages.confirm_regenerate),
        ("/tunnels/<tunnel_id>/regenerate", "POST", pages.regenerate),
        ("/tunnels/<tunnel_id>/delete", "GET", pages.confirm_delete),
        ("/tunnels/<tunnel_id>/delete", "POST", pages.delete),
        ("/tokens", "GET", lambda: pages.tokens_page()),
        ("/tokens", "POST", pages.create_token),
        ("/tokens/<token_id>/revoke", "POST", pages.revoke_token),
        ("/profile", "GET", lambda: pages.profile_page()),
        ("/profile/password", "POST", pages.change_password),
        ("/admin/users", "GET", lambda: pages.users_page()),
        ("/admin/users", "POST", pages.create_user),
        ("/admin/users/<user_id>/<action:re:disable|enable>", "POST", pages.set_disabled),
        ("/static/<filename:path>", "GET", pages.static),
    )
    for path, method, callback in routes:
        app.route(path, method, callback)
    device_page.install(app, pages)  # GET|POST /device: approve an `intunnel login`
