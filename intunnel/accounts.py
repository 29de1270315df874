"""Business rules for user accounts, shared by the web app and the admin CLI."""

from __future__ import annotations

from typing import Any

import peewee as pw

from . import changes, validation
from .errors import Conflict
from .models import User, database, write_transaction
from .security import hash_password, verify_password
from .timeutil import utcnow


def create_user(email: Any, username: Any, password: Any, is_admin: bool = False) -> User:
    email = validation.email(email)
    username = validation.username(username)
    password = validation.password(password)
    try:
        with database.atomic():
            return User.create(email=email, username=username, password_hash=hash_password(password),
                               is_admin=is_admin, created_at=utcnow())
    except pw.IntegrityError:
        if User.select().where(User.email == email).exists():
            raise Conflict(f"a user with email '{email}' already exists", field="email") from None
        raise Conflict(f"a user named '{username}' already exists", field="username") from None


def set_password(user: User, password: Any) -> None:
    user.password_hash = hash_password(validation.password(password))
    user.save()


def find_by_login(login: str) -> User | None:
    """Look a user up by email (case-insensitive) or username."""
    login = (login or "").strip()
    return (User.get_or_none(User.email == login.lower())
            or User.get_or_none(User.username == login))


def authenticate(login: Any, password: Any) -> User | None:
    """The user if the password matches and the account is enabled; else None.

    Costs the same time whether or not the account exists.
    """
    if not isinstance(login, str) or not isinstance(password, str):
        return None
    user = find_by_login(login)
    ok = verify_password(password, user.password_hash if user else None)
    if not ok or user is None or user.disabled:
        return None
    return user


# --- administration (admin CLI and the dashboard's user admin) ---

class LastAdmin(Conflict):
    """Refused: the change would leave no enabled admin."""


def _is_last_enabled_admin(user: User) -> bool:
    if not user.is_admin or user.disabled:
        return False
    others = User.select().where(User.is_admin & ~User.disabled & (User.id != user.id))
    return not others.exists()


def set_admin(user: User, is_admin: bool) -> None:
    if not is_admin and _is_last_enabled_admin(user):
        raise LastAdmin(f"'{user.username}' is the last enabled admin; promote someone else first")
    user.is_admin = is_admin
    user.save()


def end_sessions(condition) -> int:
    """Delete the login sessions matching ``condition`` (a peewee expression on Session) and
    with them the members-only tunnel access they gave (``memberpass``: the grants go by
    ON DELETE CASCADE); the relays forget those grants on the notification (PostgreSQL) or
    their next poll (SQLite).  Returns how many sessions ended."""
    from .models import Session
    with write_transaction():
        users = [u for (u,) in Session.select(Session.user).where(condition).distinct().tuples()]
        count = Session.delete().where(condition).execute()
        for user_id in users:
            changes.user_changed(user_id)
    return count


def set_disabled(user: User, disabled: bool) -> None:
    """Disable (or re-enable) an account.

    Disabling ends its login sessions and asks the relay to cut its live tunnels;
    the web app refuses disabled users' cookies and API tokens.
    """
    from .models import Session
    from .tunnels import request_disconnect_all
    if disabled and _is_last_enabled_admin(user):
        raise LastAdmin(f"'{user.username}' is the last enabled admin; promote someone else first")
    with database.atomic():
        user.disabled = disabled
        user.save()
        if disabled:
            end_sessions(Session.user == user)
            request_disconnect_all(user)  # and tells the relay (changes.user_changed)


def delete_user(user: User) -> int:
    """Delete a user with their tunnels, sessions and tokens; return how many tunnels went."""
    from .models import Tunnel
    if _is_last_enabled_admin(user):
        raise LastAdmin(f"'{user.username}' is the last enabled admin; promote someone else first")
    with write_transaction():
        count = Tunnel.select().where(Tunnel.owner == user).count()
        user.delete_instance()  # ON DELETE CASCADE takes tunnels, sessions and tokens
        changes.user_changed(user.id)
    return count
