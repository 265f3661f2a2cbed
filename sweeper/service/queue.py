"""The service's queue of sweeps, kept on disk so a restarted service finds every sweep in the
state it left it, and resumes the one a crash cut off."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError
from sweeper.files import write_atomic

QUEUED, RUNNING, STOPPED, FINISHED, FAILED = "queued", "running", "stopped", "finished", "failed"
STATES = (QUEUED, RUNNING, STOPPED, FINISHED, FAILED)


RUN, CONFIRM = "run", "confirm"
#: a cut-off sweep's message, kept while it runs again (until its next change of state)
RESUMED = "resumed: the service stopped while it ran"


@dataclass
class Sweep:
    """One queued run of a study file: ``sweeper run STUDY [--trials N] [--timeout T]``, or
    its re-confirmation, ``sweeper confirm STUDY`` (``action``)."""

    study: str  # the study file, an absolute path inside the studies directory
    trials: int | None = None
    timeout: str | None = None  # a duration ("8h") or a clock time ("until 07:00")
    deadline: float | None = None  # "until 07:00" as a time, fixed when it was queued
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    state: str = QUEUED
    machine: str = field(default_factory=socket.gethostname)
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    stage: str = ""
    message: str = ""
    log: str = ""
    action: str = RUN

    @property
    def name(self) -> str:
        return Path(self.study).name

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "name": self.name}


class Queue:
    """The sweeps, first queued first; thread-safe; every change written to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self.sweeps: list[Sweep] = []
        #: called (under the queue's lock: keep them short) when a sweep is added or changes
        #: state
        self.listeners: list[Callable[[], None]] = []
        if path.exists():
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
                fields = set(Sweep.__dataclass_fields__)
                self.sweeps = [Sweep(**{k: v for k, v in r.items() if k in fields}) for r in rows]
            except (OSError, ValueError, TypeError) as exc:
                raise QueueFileError(f"{path}: unreadable queue ({exc}); move it away") from None

    def recover(self) -> list[Sweep]:
        """At start: a sweep still marked running was cut off by the service's end; it goes
        first in the queue again (its interrupted trial runs again, completed ones are kept)."""
        with self._lock:
            cut = [s for s in self.sweeps if s.state == RUNNING]
            for s in cut:
                s.state, s.pid = QUEUED, None
                s.message = RESUMED
            self.sweeps.sort(key=lambda s: s not in cut)  # stable: the queue's order otherwise
            self._save()
            self._tell()
            return cut

    def add(self, sweep: Sweep) -> Sweep:
        with self._lock:
            self.sweeps.append(sweep)
            self._save()
            self.changed.notify_all()
            self._tell()
            return sweep

    def to_front(self, sweep: Sweep) -> None:
        """``sweep`` runs next (one the service's end interrupted)."""
        with self._lock:
            self.sweeps.remove(sweep)
            self.sweeps.insert(0, sweep)
            self._save()

    def get(self, sweep_id: str) -> Sweep | None:
        with self._lock:
            return next((s for s in self.sweeps if s.id == sweep_id), None)

    def next_queued(self) -> Sweep | None:
        with self._lock:
            return next((s for s in self.sweeps if s.state == QUEUED), None)

    def update(self, sweep: Sweep, **changes: Any) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(sweep, k, v)
            self._save()
            self.changed.notify_all()
            if "state" in changes:
                self._tell()

    def latest(self, study: str) -> Sweep | None:
        with self._lock:
            mine = [s for s in self.sweeps if s.study == study]
            return mine[-1] if mine else None

    def snapshot(self) -> list[Sweep]:
        with self._lock:
            return [Sweep(**asdict(s)) for s in self.sweeps]

    def _tell(self) -> None:
        for listener in self.listeners:
            listener()

    def _save(self) -> None:
        rows = [asdict(s) for s in self.sweeps]
        write_atomic(self.path, json.dumps(rows, indent=1), force=True)


class QueueFileError(SweeperError):
    """The queue file cannot be read."""
