"""The client as one file: ``/download/intunnel.pyz``, a zipapp the appliance builds and serves.

Air-gapped teams fetch it from their own InTunnel and run it with a plain ``python3`` (3.9+):
no package index, no virtualenv.  It holds the client's modules only (what ``intunnel.cli`` and
the client's commands import, found by ``modulefinder``: no server module) and,
for Pythons without ``tomllib``, the pure-Python ``tomli`` the server has (the [server] extra
installs it).  Its ``__main__`` calls ``intunnel.cli.main``; its version is this server's
(``intunnel.__version__``), which is also in its file name in the data directory, so a new
release never serves an old client.  Built by ``intunnel serve`` at start, by
``intunnel-admin client build`` (the playbook runs it at install), or by the web app on the
first request when missing; stdlib ``zipapp``, written atomically.
"""

from __future__ import annotations

import filecmp
import importlib.util
import io
import modulefinder
import os
import tempfile
import threading
import zipapp
import zipfile
from pathlib import Path

from . import __version__

PACKAGE = Path(__file__).resolve().parent
MAIN = '"""python3 intunnel.pyz ...: the InTunnel client."""\nimport sys\n\nfrom intunnel.cli import main\n\nsys.exit(main())\n'
URL_PATH = "/download/intunnel.pyz"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip file can hold
_building = threading.Lock()


def path_in(data_dir) -> Path:
    """Where this version's zipapp lives in ``data_dir``."""
    return Path(data_dir) / "download" / f"intunnel-{__version__}.pyz"


class _OwnModules(modulefinder.ModuleFinder):
    """Follows ``intunnel``'s own imports only: an installed package beside it (uvloop, its
    Cython modules) is none of the zipapp's business, and scanning those recursed past
    Python's limit in a deployed venv."""

    def find_module(self, name, path, parent=None):
        fqname = f"{parent.__name__}.{name}" if parent is not None else name
        own = fqname == "intunnel" or fqname.startswith("intunnel.") or (name == "__init__" and path)
        if not own:     # (a package's __init__ is looked up in its own directory, with no parent)
            raise ImportError(fqname)
        return super().find_module(name, path, parent)


def client_modules() -> list[Path]:
    """The files of every ``intunnel`` module the client can import: ``intunnel.cli`` and the
    modules of its client commands, followed through their imports (lazy ones too), never into
    the server commands' modules or ``intunnel-admin``."""
    from . import cli
    server = [cli.COMMANDS[name].partition(":")[0] for name in cli.SERVER_COMMANDS]
    finder = _OwnModules(path=[str(PACKAGE.parent)], excludes=[*server, "intunnel.admin"])
    for name, module in cli.COMMANDS.items():
        if name not in cli.SERVER_COMMANDS:
            finder.import_hook(module.partition(":")[0])
    finder.import_hook("intunnel.cli")
    return sorted(Path(m.__file__) for name, m in finder.modules.items()
                  if (name == "intunnel" or name.startswith("intunnel.")) and m.__file__)


def _entries() -> list[tuple[str, bytes]]:
    """(name in the archive, contents), sorted: the client's modules, tomli, ``__main__``."""
    entries = {"intunnel/" + path.relative_to(PACKAGE).as_posix(): path.read_bytes() for path in client_modules()}
    tomli = importlib.util.find_spec("tomli")
    if tomli is not None and tomli.submodule_search_locations:
        where = Path(list(tomli.submodule_search_locations)[0])
        entries.update(("tomli/" + path.relative_to(where).as_posix(), path.read_bytes())
                       for path in where.rglob("*.py") if "__pycache__" not in path.parts)
    entries["__main__.py"] = MAIN.encode()
    return sorted(entries.items())


def _archive() -> bytes:
    """The zip, the same bytes for the same sources (sorted names, one fixed time and mode), so
    a rebuild of an unchanged release changes nothing (the playbook's second run reports no
    change)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in _entries():
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            z.writestr(info, data)
    return out.getvalue()


def build(dest: Path) -> bool:
    """Write the zipapp to ``dest`` (atomically: a download never sees half a file); False when
    ``dest`` already held exactly these bytes (left as it was)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_dest = tempfile.mkstemp(prefix=".intunnel-", suffix=".pyz.tmp", dir=dest.parent)
    os.close(fd)
    try:
        # zipapp puts the "#!/usr/bin/env python3" line before the archive and makes it executable
        zipapp.create_archive(io.BytesIO(_archive()), tmp_dest, interpreter="/usr/bin/env python3")
        if dest.is_file() and filecmp.cmp(tmp_dest, dest, shallow=False):
            os.unlink(tmp_dest)
            return False
        os.chmod(tmp_dest, 0o644)
        os.replace(tmp_dest, dest)
    except BaseException:
        Path(tmp_dest).unlink(missing_ok=True)
        raise
    return True


def ensure(data_dir, rebuild: bool = False) -> tuple[Path, bool]:
    """This version's zipapp in ``data_dir``, built when missing (or checked against these
    sources, with ``rebuild``); and whether the file changed."""
    dest = path_in(data_dir)
    with _building:
        changed = build(dest) if rebuild or not dest.is_file() else False
        if changed:     # an earlier release's client is never served again: no need to keep it
            for old in dest.parent.glob("intunnel-*.pyz"):
                if old != dest:
                    old.unlink(missing_ok=True)
    return dest, changed
