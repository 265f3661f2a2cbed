"""One exception tree for everything sweeper raises on purpose, and the named failure reasons.

Library code raises these; only ``cli.py`` turns them into a one-line message and exit code 2.
Backend SDK exceptions are converted at each backend's boundary (``raise ... from exc``).
"""

from __future__ import annotations

import enum


class FailureReason(enum.StrEnum):
    """Why a trial is infeasible, stored on the trial as ``failure_reason`` (its value)."""

    INVALID_COMBINATION = "invalid_combination"
    UNSUPPORTED = "unsupported"
    OOM = "oom"
    LOAD_FAILED = "load_failed"
    CONTEXT_TOO_SMALL = "context_too_small"
    CRASHED = "crashed"
    DISCONNECTED = "disconnected"
    TIMEOUT = "timeout"
    GENERATION_FAILED = "generation_failed"
    TRUNCATED = "truncated"
    DIVERGED = "diverged"
    #: the token cap came while a reasoning model was still thinking: no answer at all
    NO_ANSWER = "no_answer"
    #: Ctrl-C or SIGTERM stopped the trial (a FAIL trial, run again on resume)
    INTERRUPTED = "interrupted"
    #: the sweeper process running the trial was killed (kill -9, the service crashed): run
    #: again at the next start on that machine, without waiting for the heartbeat's grace
    KILLED = "killed"
    #: the engine went away during the trial (quit, crashed, restarted, the model unloaded by
    #: someone else): not a property of the settings, so a FAIL trial, measured again
    ENGINE_LOST = "engine_lost"

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    FailureReason.INVALID_COMBINATION: "settings that cannot load together; rejected before "
    "loading",
    FailureReason.UNSUPPORTED: "a setting this backend cannot apply",
    FailureReason.OOM: "out of memory while loading or generating",
    FailureReason.LOAD_FAILED: "the backend refused or failed to load the model",
    FailureReason.CONTEXT_TOO_SMALL: "prompt plus max tokens do not fit the context length",
    FailureReason.CRASHED: "the backend process died",
    FailureReason.DISCONNECTED: "the connection to the backend's server dropped",
    FailureReason.TIMEOUT: "the trial ran past its time limit",
    FailureReason.GENERATION_FAILED: "the backend failed during generation",
    FailureReason.TRUNCATED: "output much shorter than the baseline's without reaching the "
    "token cap",
    FailureReason.DIVERGED: "output differs from the baseline's earlier than "
    "measure.min_prefix_chars",
    FailureReason.NO_ANSWER: "no answer: the cap was reached while the model was reasoning",
    FailureReason.INTERRUPTED: "stopped by Ctrl-C or SIGTERM; it runs again on resume",
    FailureReason.KILLED: "its sweeper process was killed (kill -9, a crash of the service); it "
    "runs again on resume",
    FailureReason.ENGINE_LOST: "the engine went away during the trial (quit, crashed, restarted, "
    "or the model was unloaded by someone else); it is measured again once the engine is back",
}


class SweeperError(Exception):
    """Root of every error sweeper raises deliberately."""


class StudyFileError(SweeperError):
    """The study file is missing, malformed or asks for something impossible."""


class StorageError(SweeperError):
    """The study storage cannot be opened, or holds a study that does not match the file."""


class BackendUnavailable(SweeperError):
    """The backend (a library, a server, a model file) cannot be reached or found."""


class TrialFailure(SweeperError):
    """A trial could not be measured, for a named reason."""

    def __init__(self, reason: FailureReason | str, detail: str) -> None:
        try:
            reason = FailureReason(reason)
        except ValueError:
            raise ValueError(f"unknown failure reason {reason!r}") from None
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LoadError(TrialFailure):
    """The model could not be loaded with the requested settings."""


class GenerationError(TrialFailure):
    """The model loaded but a generation failed."""


class EngineLost(TrialFailure):
    """The engine went away during a trial: the trial says nothing about its settings and is
    measured again once the engine is back."""

    def __init__(self, detail: str) -> None:
        super().__init__(FailureReason.ENGINE_LOST, detail)


class EngineAway(SweeperError):
    """The engine did not come back within the wait, or came back as another engine: the
    sweep stops, keeping every completed trial; the same command resumes it."""


class ExportError(SweeperError):
    """A preset could not be written, installed or undone."""
