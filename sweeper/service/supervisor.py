"""Runs the queue: one sweep at a time, each a supervised ``sweeper run`` child started through
the same process code as every child sweeper starts (it dies with the service, on every OS). The
child reports on its stdout, a JSON line per stage and trial; nothing here polls the database."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeper.config import parse_duration
from sweeper.errors import StudyFileError
from sweeper.service.queue import (
    CONFIRM,
    FAILED,
    FINISHED,
    QUEUED,
    RESUMED,
    RUNNING,
    STOPPED,
    Queue,
    Sweep,
)
from sweeper.system import Program

log = logging.getLogger("sweeper")

Publish = Callable[[dict[str, Any]], None]


def timeout_seconds(text: str, now: dt.datetime | None = None) -> float:
    """A budget as the form takes it: a duration ("8h") or a clock time ("until 07:00", the
    next one to come)."""
    text = text.strip()
    if text.lower().startswith("until"):
        clock = text[5:].strip()
        try:
            at = dt.datetime.strptime(clock, "%H:%M").time()
        except ValueError:
            raise StudyFileError(
                f"budget: {clock!r} is not a time; write e.g. until 07:00"
            ) from None
        now = now or dt.datetime.now()
        end = dt.datetime.combine(now.date(), at)
        if end <= now:
            end += dt.timedelta(days=1)
        return (end - now).total_seconds()
    return parse_duration(text, "budget")


def command(sweep: Sweep, python: str = sys.executable) -> list[str]:
    """The child's command line: ``-P`` keeps the current folder off its import path, so a
    ``sweeper/`` folder where the service started cannot stand in for the package (the child
    keeps that folder as its own: study paths may be relative to it)."""
    if sweep.action == CONFIRM:
        return [python, "-P", "-m", "sweeper", "confirm", sweep.study]
    argv = [python, "-P", "-m", "sweeper", "run", sweep.study, "--progress", "json"]
    if sweep.trials:
        argv += ["--trials", str(sweep.trials)]
    if sweep.deadline is not None:
        left = sweep.deadline - time.time()
        if left < 60:
            raise StudyFileError(f"budget: {sweep.timeout} had passed when the sweep could start")
        argv += ["--timeout", f"{left:.0f}s"]
    elif sweep.timeout:
        argv += ["--timeout", f"{timeout_seconds(sweep.timeout):.0f}s"]
    return argv


class Supervisor:
    """The thread that takes the next queued sweep, runs it, and says what happened."""

    def __init__(self, queue: Queue, logs: Path, publish: Publish) -> None:
        self.queue, self.logs, self.publish = queue, logs, publish
        self.program: Program | None = None
        self.current: Sweep | None = None
        self._stop_requested: set[str] = set()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="sweeper-supervisor", daemon=True)

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for s in self.queue.recover():
            log.info("sweep %s (%s) was cut off; it resumes first", s.id, s.name)
        self._thread.start()

    def close(self) -> None:
        """The service ends: its running sweep stops cleanly and resumes on the next start."""
        with self.queue.changed:
            self._closing = True
            self.queue.changed.notify_all()
            program = self.program
        if program is not None:
            program.stop()
        self._thread.join(30)

    def stop(self, sweep: Sweep) -> None:
        """Stop a sweep: a queued one never starts; a running one ends its trial cleanly (the
        trial runs again on resume; completed trials are kept)."""
        with self.queue.changed:
            program = None
            if sweep.state == QUEUED:
                self.queue.update(sweep, state=STOPPED, message="stopped before it started")
            elif sweep.state == RUNNING and self.current is sweep:
                self._stop_requested.add(sweep.id)
                program = self.program
        if program is not None:
            threading.Thread(target=program.stop, daemon=True).start()
        self.publish({"event": "changed", "sweep": sweep.id})

    def resume(self, sweep: Sweep) -> None:
        with self.queue.changed:
            if sweep.state not in (STOPPED, FAILED, FINISHED):
                return
            self._stop_requested.discard(sweep.id)
            self.queue.update(sweep, state=QUEUED, message="queued again")
        self.publish({"event": "changed", "sweep": sweep.id})

    def _loop(self) -> None:
        while True:
            with self.queue.changed:
                if self._closing:
                    return
                sweep = self.queue.next_queued()
                if sweep is None:
                    self.queue.changed.wait(5)
                    continue
                # running from here on: a Stop now is a stop request, never lost
                self.current = sweep
                note = sweep.message if sweep.message == RESUMED else ""
                self.queue.update(sweep, state=RUNNING, started=time.time(), message=note)
            try:
                self._run(sweep)
            except Exception as exc:  # the queue must go on whatever one sweep did
                log.exception("sweep %s", sweep.id)
                self._end(sweep, FAILED, f"the service could not run it: {exc}")

    def _run(self, sweep: Sweep) -> None:
        log_path = self.logs / f"{sweep.id}.log"
        try:
            argv = command(sweep)
        except StudyFileError as exc:
            self._end(sweep, FAILED, str(exc))
            return
        with self.queue.changed:
            if sweep.id in self._stop_requested or self._closing:
                self._end(sweep, STOPPED if not self._closing else QUEUED, "stopped")
                return
            program = self.program = Program(argv, log_path, stdout_pipe=True)
            program.start()
            assert program.process is not None and program.process.stdout is not None
            self.queue.update(sweep, pid=program.process.pid, log=str(log_path))
        self.publish({"event": "started", "sweep": sweep.id})
        summary: list[str] = []
        engine_away: str | None = None  # the engine stayed away: resumable, not failed
        with program.process.stdout as out:
            for raw in out:
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if not isinstance(event, dict):  # the child's closing summary, for people
                    line = raw.decode("utf-8", "replace").rstrip()
                    summary.append(line)
                    _append(log_path, line)
                    continue
                if event.get("event") == "engine_away":
                    engine_away = str(event.get("message", ""))
                if event.get("event") == "stage":
                    self.queue.update(sweep, stage=str(event.get("stage", "")))
                self.publish({**event, "sweep": sweep.id})
        rc = program.process.wait()
        if sweep.id in self._stop_requested:
            self._end(sweep, STOPPED, "stopped; completed trials are kept")
        elif rc == 0:
            self._end(sweep, FINISHED, "\n".join(line for line in summary if line))
        elif self._closing:
            self._end(sweep, QUEUED, "the service stopped; it resumes first when it starts")
        elif engine_away is not None:
            self._end(sweep, STOPPED, f"{engine_away}; Resume once it is back")
        else:
            self._end(sweep, FAILED, _last_error(log_path) or f"sweeper run exited with {rc}")

    def _end(self, sweep: Sweep, state: str, message: str) -> None:
        with self.queue.changed:
            self._stop_requested.discard(sweep.id)
            self.queue.update(
                sweep, state=state, message=message, ended=time.time(), pid=None, stage=""
            )
            if state == QUEUED:
                self.queue.to_front(sweep)
            self.current = self.program = None
        self.publish({"event": "ended", "sweep": sweep.id, "state": state})


def _append(log_path: Path, line: str) -> None:
    try:
        with open(log_path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError:
        pass  # the log is for reading later; the sweep's page still gets the line


def _last_error(log_path: Path) -> str | None:
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1] if errors else None
