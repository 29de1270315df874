"""The test database for processes a test starts (web app, relay, admin): as
environment variables or config lines, on whichever backend the test runs.

    env = {**database_env(settings), "INTUNNEL_DATA_DIR": ...}
    config.write_text(f'data_dir = "..."\\n' + database_toml(settings))
"""

from __future__ import annotations

import json


def database_env(settings) -> dict[str, str]:
    """INTUNNEL_DATABASE_URL (and the password file) naming the settings' database."""
    env = {"INTUNNEL_DATABASE_URL": settings.db_url}
    if settings.database_password_file:
        env["INTUNNEL_DATABASE_PASSWORD_FILE"] = settings.database_password_file
    return env


def database_toml(settings) -> str:
    """The same as config file lines (empty on the default SQLite file of the data dir)."""
    lines = []
    if settings.database_url:
        lines.append(f"database_url = {json.dumps(settings.database_url)}")
    if settings.database_password_file:
        lines.append(f"database_password_file = {json.dumps(settings.database_password_file)}")
    return "".join(line + "\n" for line in lines)
