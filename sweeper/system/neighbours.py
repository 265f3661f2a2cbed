"""Heavy processes outside sweeper's own tree while a llama.cpp trial measures (a browser, a
build, another model's server): noted on the trial as a warning, since they share the CPU and
memory bandwidth the trial's numbers depend on. Nothing is prevented or stopped."""

from __future__ import annotations

import os
from typing import Any

#: A process averaging at least this share of one core over the trial is heavy.
HEAVY_CPU_PCT = 50.0


class Neighbours:
    """Started at a load; ``heavy()`` at the unload names who was busy in between."""

    def __init__(self) -> None:
        import psutil

        self._seen: dict[int, Any] = {}
        ours = {os.getpid()}
        me = psutil.Process()
        ours.update(p.pid for p in me.parents())  # the sweep, a service, the terminal
        for p in psutil.process_iter(["name"]):
            if p.pid in ours:
                continue
            try:
                p.cpu_percent(None)  # the first call starts the process's count
            except psutil.Error:
                continue
            self._seen[p.pid] = p

    def heavy(self) -> list[str]:
        """Processes outside sweeper's tree busy at ``HEAVY_CPU_PCT`` or more since the start,
        as "name (pid): N% CPU", busiest first."""
        import psutil

        try:
            mine = {p.pid for p in psutil.Process().children(recursive=True)}
        except psutil.Error:
            mine = set()
        busy = []
        for pid, p in self._seen.items():
            if pid in mine:
                continue
            try:
                pct = p.cpu_percent(None)
            except psutil.Error:
                continue
            if pct >= HEAVY_CPU_PCT:
                busy.append((pct, f"{p.info.get('name') or '?'} ({pid}): {pct:.0f}% CPU"))
        return [text for _, text in sorted(busy, reverse=True)]
