"""The per-user client config file: ``$XDG_CONFIG_HOME/intunnel/config.toml`` (mode 0600).

It holds the default server URL and tunnel token, so that ``intunnel http 3000``
alone works after ``intunnel config add-token TOKEN --server URL``.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from ..errors import ConfigError


def config_path(env=None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "intunnel" / "config.toml"


def load(path: Path | None = None) -> dict:
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"client config {str(path)!r}: {e}") from None
    return {k: v for k, v in data.items() if k in ("server", "token") and isinstance(v, str)}


def save(values: dict, path: Path | None = None) -> Path:
    """Write atomically with mode 0600 (it holds a secret)."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # json.dumps of a str is a valid TOML basic string.
    text = "# intunnel client settings (written by `intunnel config add-token`)\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in sorted(values.items()))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
