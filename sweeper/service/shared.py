"""Rigs that share a study on a database server (PostgreSQL): each rig runs its own service and
queue, and announces its sweeps of that study in the study itself (one user attribute per
machine, written when it changed). Every rig's studies page shows all of them, labelled by
machine. Other rigs' sweeps are read when a page is built and looked at every ``POLL_S``
seconds (a change is pushed to the open pages); nothing polls faster, so a rig that measures
is not disturbed. Two rigs need distinct names (``sweeper serve --machine``) when their host
names are the same."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sweeper import config as config_file
from sweeper import studyrecord
from sweeper.errors import SweeperError
from sweeper.service.queue import Queue, Sweep
from sweeper.storage import open_study

log = logging.getLogger("sweeper")

#: How often other rigs' sweeps are looked at for a change.
POLL_S = 60.0
#: The most sweeps of one study a machine announces (the latest).
KEEP = 10
FIELDS = ("id", "state", "machine", "action", "trials", "timeout", "created", "started", "ended")


def is_shared(storage_url: str) -> bool:
    """A database server several rigs can reach (a SQLite file is one machine's)."""
    return not storage_url.startswith("sqlite")


def elsewhere(study: Any, machine: str) -> list[dict[str, Any]]:
    """Other machines' sweeps of ``study``, as they announced them."""
    out = [
        r for name, rows in studyrecord.rig_sweeps(study).items() if name != machine for r in rows
    ]
    return sorted(out, key=lambda r: r.get("created") or 0)


def _announce(sweeps: Iterable[Sweep], machine: str) -> None:
    by_study: dict[str, list[Sweep]] = {}
    for s in sweeps:
        by_study.setdefault(s.study, []).append(s)
    for path, mine in by_study.items():
        try:
            config = config_file.load(path)
            if not is_shared(config.storage):
                continue
            study = open_study(config)  # not created yet: announced once it exists
        except SweeperError:
            continue
        studyrecord.set_rig_sweeps(
            study, machine, [{k: s.to_dict()[k] for k in FIELDS} for s in mine[-KEEP:]]
        )


class Rigs:
    """A thread that announces this rig's sweeps when its queue changes, and looks at the
    other rigs' every ``POLL_S`` seconds, calling ``changed`` when they moved."""

    def __init__(
        self,
        queue: Queue,
        machine: str,
        studies: Callable[[], list[str]],
        changed: Callable[[], None],
    ) -> None:
        self.queue, self.machine, self.studies, self.changed = queue, machine, studies, changed
        self._due = threading.Event()
        self._closing = False
        self._seen: str | None = None
        self._thread = threading.Thread(target=self._loop, name="sweeper-rigs", daemon=True)
        queue.listeners.append(self._due.set)

    def start(self) -> None:
        self._due.set()
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        self._due.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._closing:
            self._due.wait(POLL_S)
            self._due.clear()
            if self._closing:
                return
            try:
                # every time, not only on a change: a study created since (its first sweep's
                # start), or a database that was away, gets this rig's sweeps then
                _announce(self.queue.snapshot(), self.machine)
                self._look()
            except Exception:  # a database that went away: said, and tried again later
                log.exception("sharing sweeps with other rigs")

    def _look(self) -> None:
        seen = []
        for path in self.studies():
            try:
                config = config_file.load(path)
                if not is_shared(config.storage):
                    continue
                seen.append(elsewhere(open_study(config), self.machine))
            except SweeperError:
                continue
        text = json.dumps(seen, sort_keys=True, default=str)
        if self._seen is not None and text != self._seen:
            self.changed()
        self._seen = text
