"""database_url: which backend, checked with one clear line, shown without its password."""

from __future__ import annotations

import pytest

from intunnel import dburl
from intunnel.errors import ConfigError
from intunnel.settings import load_settings


def settings(**overrides):
    return load_settings(env={"INTUNNEL_CONFIG": ""}, overrides={"data_dir": "/srv/it", **overrides})


def test_default_is_the_sqlite_file_of_the_data_dir():
    s = settings()
    assert s.db_url == "sqlite:////srv/it/intunnel.db" and s.db_backend == "sqlite"
    assert str(s.db_path) == "/srv/it/intunnel.db"


def test_the_older_database_setting_still_names_the_sqlite_file():
    s = settings(database="/var/db/x.db")
    assert s.db_url == "sqlite:////var/db/x.db" and str(s.db_path) == "/var/db/x.db"


def test_sqlite_url_gives_the_path():
    assert str(settings(database_url="sqlite:////var/db/y.db").db_path) == "/var/db/y.db"
    assert str(settings(database_url="sqlite:///rel/y.db").db_path) == "rel/y.db"


def test_postgresql_url_and_query_parameters_reach_the_driver():
    s = settings(database_url="postgres://app:p%40ss@db.internal:6543/intunnel?sslmode=require&connect_timeout=3")
    assert s.db_backend == "postgresql"
    db = dburl.make_database(s.db_url)
    params = db.connect_params
    assert db.database == "intunnel"
    assert (params["user"], params["password"], params["host"], params["port"]) == ("app", "p@ss", "db.internal", 6543)
    assert params["sslmode"] == "require" and params["connect_timeout"] == 3


def test_connect_timeout_has_a_default():
    db = dburl.make_database("postgresql://app@127.0.0.1/intunnel")
    assert db.connect_params["connect_timeout"] == dburl.DEFAULT_CONNECT_TIMEOUT


def test_password_file(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    db = dburl.make_database("postgresql://app@127.0.0.1/intunnel", str(f))
    assert db.connect_params["password"] == "s3cret"


@pytest.mark.parametrize("overrides, key", [
    ({"database_url": "mysql://x@h/db"}, "database_url"),
    ({"database_url": "/var/db/x.db"}, "database_url"),
    ({"database_url": "postgresql://app@host"}, "database name"),
    ({"database_url": "postgresql://app@host:notaport/db"}, "database_url"),
    ({"database_url": "sqlite://"}, "sqlite:///PATH"),
    ({"database_url": "sqlite:////x.db", "database": "/y.db"}, "both set"),
    ({"database_password_file": "/pw"}, "database_password_file"),
    ({"database_url": "sqlite:////x.db", "database_password_file": "/pw"}, "database_password_file"),
    ({"database_url": "postgresql://a:b@h/db", "database_password_file": "/pw"}, "not both"),
])
def test_bad_values_are_one_clear_line(overrides, key):
    with pytest.raises(ConfigError) as e:
        settings(**overrides)
    assert key in str(e.value)
    assert ":b@" not in str(e.value)


def test_unreadable_or_empty_password_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        dburl.make_database("postgresql://app@h/db", str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        dburl.make_database("postgresql://app@h/db", str(tmp_path / "empty"))


def test_the_password_never_shows():
    url = "postgresql://app:hunter2@db:5432/intunnel?sslmode=verify-full"
    assert dburl.redact_url(url) == "postgresql://app:***@db:5432/intunnel?sslmode=verify-full"
    assert dburl.redact_url("postgresql://app@db/intunnel") == "postgresql://app@db/intunnel"
    assert "hunter2" not in str(settings(database_url=url).as_dict())
    with pytest.raises(ConfigError) as e:
        settings(database_url="mysql://app:hunter2@db/x")
    assert "hunter2" not in str(e.value)
