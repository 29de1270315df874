"""Server-side rendering of the dashboard: one autoescaping Jinja2 environment.

Every value reaching a template is escaped unless a template says otherwise (none
does), so user-provided text (tunnel names, usernames) can't inject markup.
Formatting helpers used by templates live here too, as pure functions.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import jinja2

from ..timeutil import iso, utcnow

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def ago(dt: datetime | None, now: datetime | None = None) -> str:
    """Relative time in words; static/app.js:ago() computes the same in the browser."""
    if dt is None:
        return "Never"
    now = now or utcnow()
    seconds = max(0, int((now - dt).total_seconds()))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    days = seconds // 86400
    if days < 30:
        return "1 day ago" if days == 1 else f"{days} days ago"
    return date(dt)


def date(dt: datetime | None) -> str:
    """``28 Nov 2026``."""
    if dt is None:
        return "—"
    return f"{dt.day} {_MONTHS[dt.month - 1]} {dt.year}"


def utc(dt: datetime | None) -> str:
    """``2026-11-28 03:56 UTC`` (tooltips)."""
    if dt is None:
        return ""
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def _file_versions() -> dict[str, str]:
    """A short content hash per static file, for cache-busting URLs."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:10]
            for p in STATIC_DIR.iterdir() if p.is_file()}


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template fails a test, not silently
        trim_blocks=True,
        lstrip_blocks=True,
    )
    versions = _file_versions()

    def static(name: str) -> str:
        version = versions.get(name)
        return f"/static/{name}?v={version}" if version else f"/static/{name}"

    env.globals.update(static=static)
    env.filters.update(ago=ago, date=date, utc=utc, iso=iso)
    return env
