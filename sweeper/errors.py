"""One exception tree for everything sweeper raises on purpose.

Library code raises these; only ``cli.py`` turns them into a one-line message and exit code 2.
Backend SDK exceptions are converted at the backend boundary (``raise ... from exc``).
"""

from __future__ import annotations


class SweeperError(Exception):
    """Root of every error sweeper raises deliberately."""


class StudyFileError(SweeperError):
    """The study file is missing, malformed or asks for something impossible."""


class StorageError(SweeperError):
    """The study storage cannot be opened, or holds a study that does not match the file."""


class BackendUnavailable(SweeperError):
    """The backend (a library, a server, a model file) cannot be reached or found."""


class TrialFailure(SweeperError):
    """A trial could not be measured; ``reason`` is one of ``FAILURE_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LoadError(TrialFailure):
    """The model could not be loaded with the requested settings."""


class GenerationError(TrialFailure):
    """The model loaded but a generation failed."""


#: Named reasons a trial can be infeasible, stored on the trial as ``failure_reason``.
FAILURE_REASONS = {
    "invalid_combination": "settings that cannot load together; rejected before loading",
    "unsupported": "a setting this backend cannot apply",
    "oom": "out of memory while loading or generating",
    "load_failed": "the backend refused or failed to load the model",
    "context_too_small": "prompt plus max tokens do not fit the context length",
    "crashed": "the backend process died",
    "disconnected": "the connection to the backend's server dropped",
    "timeout": "the trial ran past its time limit",
    "generation_failed": "the backend failed during generation",
    "truncated": "output much shorter than the baseline's without reaching the token cap",
    "diverged": "output differs from the baseline's earlier than measure.min_prefix_chars",
}
