"""The lmstudio SDK's exceptions as sweeper's, in one place (a load's and a generation's), each
with a reason a user understands: LM Studio gone (unreachable, restarted, the model unloaded
by someone else) is ``EngineLost``; a timeout, a server's refusal, a dropped connection or a
reply sweeper cannot read are the trial's named failures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from sweeper.backends.lmstudio.host import sdk
from sweeper.errors import EngineLost, GenerationError, LoadError, TrialFailure

EVICTED = (
    "sweeper's model instance is gone from LM Studio: LM Studio restarted, or someone unloaded "
    "it (its UI, lms, another app)"
)


@contextlib.contextmanager
def errors(stage: str, gone: Callable[[Exception], EngineLost | None]) -> Iterator[None]:
    """The SDK's exceptions as sweeper's, in one place: a load's and a generation's. ``gone``
    tells a dropped connection from an LM Studio that went away (quit, crashed, restarted),
    which is no property of the settings (see ``EngineLost``)."""
    lms = sdk()
    failure = LoadError if stage == "load" else GenerationError
    try:
        yield
    except TrialFailure:
        raise
    except lms.LMStudioModelNotFoundError as exc:
        if stage != "load":
            raise (gone(exc) or EngineLost(f"{EVICTED}: {exc}")) from exc
        raise failure("load_failed", f"LM Studio: model not found: {exc}") from exc
    except lms.LMStudioChannelClosedError as exc:  # the server went, or merely the channel
        raise (gone(exc) or failure("disconnected", f"LM Studio: {exc}")) from exc
    except lms.LMStudioServerError as exc:
        text = str(exc)
        if stage == "load":
            reason = "oom" if "memory" in text.lower() else "load_failed"
        else:
            reason = "generation_failed"
        raise failure(reason, f"LM Studio: {text}") from exc
    except lms.LMStudioTimeoutError as exc:
        raise failure("timeout", f"LM Studio: {exc}") from exc
    except (lms.LMStudioError, OSError) as exc:
        lost = gone(exc)
        if lost is not None:
            raise lost from exc
        websocket = isinstance(exc, lms.LMStudioWebsocketError | OSError)
        reason = "disconnected" if websocket or stage == "load" else "generation_failed"
        raise failure(reason, f"LM Studio: {exc}") from exc
