"""Business rules for user accounts, shared by the web app and the admin CLI."""

from __future__ import annotations

from typing import Any

import peewee as pw

from . import validation
from .errors import Conflict
from .models import User, database
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
