"""llama-server's command line: the flags sweeper always passes, a trial's settings as flags,
and a preset as the script that starts llama-server the way sweeper measured it."""

from __future__ import annotations

import shlex

from sweeper.backends import PresetSource
from sweeper.errors import ExportError, LoadError, SweeperError
from sweeper.settings import PARAMS, LoadSettings

#: Always passed: one slot with the whole context (as a desktop user runs it; the default is 4
#: slots sharing one cache), and no fitting (sweeper sets the offload itself).
FIXED_ARGS = ("-np", "1", "--fit", "off")
LOAD_MODES = {(True, False): "mmap", (False, False): "none", (False, True): "mlock"}
LOAD_MODES[(True, True)] = "mmap+mlock"


def server_args(settings: LoadSettings, n_layers: int | None) -> list[str]:
    """Canonical settings as llama-server's flags (each Param names its own; the booleans and
    the offload ratio are encoded here). What ``sweeper export --format llama-server`` writes."""
    s = settings.to_dict()
    args: list[str] = []
    for name, value in s.items():
        flag = PARAMS[name].llama_server
        if name == "gpu_offload":
            if value >= 1:
                layers = "all"
            elif value <= 0:
                layers = "0"
            elif n_layers:
                layers = str(round(value * n_layers))
            else:
                raise LoadError(
                    "unsupported", "gpu_offload as llama-server -ngl needs the model's layer count"
                )
            args += [flag, layers]
        elif name == "flash_attention":
            args += [flag, "on" if value else "off"]
        elif name == "offload_kv_cache":
            args += [] if value else [flag]
        elif name in ("mmap", "keep_in_memory"):
            continue  # one flag for both, below
        else:
            args += [flag, str(value)]
    if "mmap" in s or "keep_in_memory" in s:
        # this llama-server took --no-mmap and --mlock out for --load-mode
        args += ["-lm", LOAD_MODES[(s.get("mmap", True), s.get("keep_in_memory", False))]]
    return args


def command(settings: LoadSettings, model: str, n_layers: int | None) -> list[str]:
    """The llama-server command line sweeper measures with: one slot, no fitting, the
    settings as the llama-server backend writes them."""
    try:
        flags = server_args(settings, n_layers)
    except SweeperError as exc:
        raise ExportError(str(exc)) from None
    return ["llama-server", "-m", model, *FIXED_ARGS, *flags]


def script(p: PresetSource) -> str:
    args = command(p.settings, p.model, p.n_layers)
    if p.reasoning_effort:
        args += ["--reasoning-effort", p.reasoning_effort]
    return f'#!/bin/sh\n# {p.header()}\nexec {shlex.join(args)} "$@"\n'
