"""What LM Studio runs models with, for the machine fingerprint: the app's version and the
runtime packages installed beside it. An update of either can change what is put on the GPU
(LM Studio's bug tracker #2312: 54 of 65 layers after an update, 60-70 tok/s down to 12-18)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from sweeper import system
from sweeper.backends.lmstudio import sdk as lmstudio_sdk
from sweeper.backends.lmstudio.host import find_host
from sweeper.backends.lmstudio.host import sdk as _sdk
from sweeper.errors import SweeperError


def engine(host: str | None) -> str | None:
    """What LM Studio runs models with, for the machine fingerprint: the app's version and,
    for an LM Studio on this machine, the runtime packages installed in its home
    (``extensions/backends``, one folder per runtime and version). An update of either can
    change what is put on the GPU. None when the app does not say its version (unknown: not
    compared)."""
    lms = _sdk()
    app = None
    with (
        contextlib.suppress(lms.LMStudioError, SweeperError, OSError),
        lms.Client(where := find_host(host)) as client,
    ):
        app = lmstudio_sdk.app_version(client)
    if not app:
        return None
    local = where.rsplit(":", 1)[0] in ("localhost", "127.0.0.1", "[::1]", "::1")
    runtimes = installed_runtimes(system.lmstudio_home()) if local else []
    return f"LM Studio {app}" + (f"; runtimes {', '.join(runtimes)}" if runtimes else "")


#: a runtime package's folder: its name, then its version (``...-avx2-1.50.2``)
RUNTIME = re.compile(r".+-\d+(\.\d+)+$")


def installed_runtimes(home: Path) -> list[str]:
    """The runtime packages (folder names such as ``llama.cpp-win-x86_64-nvidia-cuda12-avx2-
    1.50.2``) under LM Studio's ``extensions/backends``."""
    folder = home / "extensions" / "backends"
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and RUNTIME.match(p.name))
    except OSError:
        return []
