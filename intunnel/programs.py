"""How to write one of this installation's commands so that a user can paste it.

After the Quick start the programs are in ``.venv/bin/``, which is not on the PATH: a banner
saying ``intunnel http 3000`` then fails with "command not found".  The name alone is right
only when the shell would find this very program under it; otherwise the absolute path is.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from typing import Callable, Optional


def command(name: str, which: Callable[[str], Optional[str]] = shutil.which,
            scripts_dir: Optional[str] = None) -> str:
    """``name`` when the PATH finds this installation's ``name``, else its absolute path (or
    ``name`` when this installation has no such script, e.g. run from a source checkout)."""
    ours = os.path.join(scripts_dir or sysconfig.get_path("scripts"), name)
    if not os.path.isfile(ours):
        return name
    found = which(name)
    if found and _same_file(found, ours):
        return name
    return os.path.abspath(ours)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
