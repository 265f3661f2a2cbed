"""The study file (TOML): nested frozen msgspec structs, validated declaratively, resolved into
a ``StudyConfig``. Every error is one line naming the file, the place and the fix."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from sweeper.backends import Target, backend_class
from sweeper.errors import StudyFileError
from sweeper.settings import MAX_LAYERS, LoadSettings, shown
from sweeper.space import SearchSpace
from sweeper.workloads import BUILTIN_PROMPTS, Sampling, Workload, builtin

Positive = Annotated[int, Meta(ge=1)]

# Upper bounds of every number a study file (and so the service's forms, which write one) can
# carry: far above any real study, low enough that no page's arithmetic overflows on them.
MAX_TRIALS = 100_000
#: output tokens of one generation
MAX_TOKENS = 1 << 20
#: characters of a prompt (a study file holds it; the form writes it there)
MAX_PROMPT_CHARS = 200_000
#: the longest duration (a budget, a trial's time limit): 31 days
MAX_DURATION_S = 31 * 86400.0
Trials = Annotated[int, Meta(ge=1, le=MAX_TRIALS)]
Tokens = Annotated[int, Meta(ge=1, le=MAX_TOKENS)]
Count = Annotated[int, Meta(ge=1, le=1000)]
Prompt = Annotated[str, Meta(max_length=MAX_PROMPT_CHARS)]


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[budget]``: how long the sweep and each trial may run."""

    trials: Trials = 50
    timeout: str | None = None
    trial_timeout: str = "30m"
    heartbeat: str = "30s"
    heartbeat_grace: str = "2m"
    #: address-space cap for each worker, so a runaway allocation fails fast as "oom"
    memory_limit_mb: Annotated[int, Meta(ge=1, le=1 << 30)] | None = None

    def __post_init__(self) -> None:
        for name in ("timeout", "trial_timeout", "heartbeat", "heartbeat_grace"):
            value = getattr(self, name)
            if value is not None:
                _duration(value, name)

    @property
    def timeout_s(self) -> float | None:
        return parse_duration(self.timeout) if self.timeout else None

    @property
    def trial_timeout_s(self) -> float:
        return parse_duration(self.trial_timeout)

    @property
    def heartbeat_s(self) -> float:
        return parse_duration(self.heartbeat)

    @property
    def heartbeat_grace_s(self) -> float:
        return parse_duration(self.heartbeat_grace)


class Measure(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[measure]``: repeats, guards and drift checks."""

    repeats: Count = 3
    #: adaptive repeats: up to this many for trials near a front (None: off)
    max_repeats: Count | None = None
    target_ci: Annotated[float, Meta(gt=0, lt=1)] = 0.02
    warmup: Annotated[int, Meta(ge=0, le=1000)] = 1
    min_output_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.9
    #: re-run the baseline every so long (a duration) or "off" (never); an integer N (older
    #: files) means every N trials and no time limit
    drift_check: Trials | str = "1h"
    #: ...and after at most this many trials, whichever comes first
    drift_check_trials: Trials = 10
    min_prefix_chars: Annotated[int, Meta(ge=0, le=MAX_PROMPT_CHARS)] = 0
    #: staged sweep: screen every configuration with cheap probes, measure the finalists in
    #: full (false: every trial is measured in full)
    screening: bool = True
    #: depth probes per screening, spread up to the deepest point a workload reaches
    depths: Annotated[int, Meta(ge=1, le=16)] = 5
    #: tokens each probe decodes (also the length of a warm-up run)
    probe_tokens: Annotated[int, Meta(ge=4, le=MAX_TOKENS)] = 64
    #: per workload, the screened configurations measured in full: on the screening front and
    #: within ``promote_margin`` of the best expected completion time, at most this many
    promote: Count = 3
    promote_margin: Annotated[float, Meta(ge=0, lt=1)] = 0.05

    def __post_init__(self) -> None:
        if self.max_repeats is not None and self.max_repeats < self.repeats:
            raise ValueError("@max_repeats: must be at least measure.repeats")
        if isinstance(self.drift_check, str) and self.drift_check != "off":
            _duration(self.drift_check, "drift_check")

    @property
    def repeat_cap(self) -> int:
        """The most runs a trial gets per workload (= repeats: adaptive repeats are off)."""
        return self.max_repeats or self.repeats

    @property
    def drift_check_every_trials(self) -> int | None:
        """Re-run the baseline after this many trials (None: not by count)."""
        if self.drift_check == "off":
            return None
        return self.drift_check if isinstance(self.drift_check, int) else self.drift_check_trials

    @property
    def drift_check_every_s(self) -> float | None:
        """Re-run the baseline after this long (None: not by time)."""
        d = self.drift_check
        return parse_duration(d) if isinstance(d, str) and d != "off" else None


class Confirm(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[confirm]``: the recommendation re-measured side by side with the baseline."""

    #: at the end of ``sweeper run`` (and after Ctrl-C once a candidate beat the baseline)
    auto: bool = True
    #: the most interleaved rounds (each loads the baseline and every candidate once)
    rounds: Annotated[int, Meta(ge=2, le=1000)] = 5
    #: the earliest round at which a clear verdict ends the confirmation
    min_rounds: Annotated[int, Meta(ge=2, le=1000)] = 3
    #: per workload: the recommended configuration and runner-ups within its noise, at most
    candidates: Count = 2
    level: Annotated[float, Meta(gt=0.5, lt=1)] = 0.95

    def __post_init__(self) -> None:
        if self.min_rounds > self.rounds:
            raise ValueError("@min_rounds: must be at most confirm.rounds")


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[recommend]``: how the recommended configuration of a workload is chosen."""

    kind: Literal["completion", "weighted"] = msgspec.field(name="rule", default="completion")
    ttft_max: float | None = None
    tok_s_min: float | None = None
    tok_s_weight: float = 1.0
    ttft_weight: float = 1.0


class _WorkloadSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    prompt: Prompt | None = None
    prompt_file: str | None = None
    system: Prompt | None = None
    max_tokens: Tokens | None = None
    #: a GBNF grammar the output must follow (llama.cpp and llama-server)
    grammar: str | None = None


class _StudyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    backend: str
    model: str
    space: dict[str, Any]
    storage: str | None = None
    host: str | None = None
    model_layers: Annotated[int, Meta(ge=1, le=MAX_LAYERS)] | None = None
    server_binary: str | None = None
    #: numpy's seeds are 32-bit
    sampler_seed: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 0
    budget: Budget = msgspec.field(default_factory=Budget)
    measure: Measure = msgspec.field(default_factory=Measure)
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    recommend: Rule = msgspec.field(default_factory=Rule)
    confirm: Confirm = msgspec.field(default_factory=Confirm)
    baseline: dict[str, Any] = msgspec.field(default_factory=dict)
    workloads: list[_WorkloadSpec] = msgspec.field(
        default_factory=lambda: [_WorkloadSpec(name=n) for n in BUILTIN_PROMPTS]
    )


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file."""

    path: Path
    name: str
    backend: str
    model: str
    storage: str
    host: str | None
    model_layers: int | None
    server_binary: str | None
    sampler_seed: int
    space: SearchSpace
    baseline: LoadSettings
    workloads: tuple[Workload, ...]
    sampling: Sampling
    budget: Budget
    measure: Measure
    recommend: Rule
    confirm: Confirm

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def target(self) -> Target:
        """What the backend needs to find the model."""
        used = frozenset(self.space.names() | set(self.baseline.to_dict()))
        binary = self.server_binary
        if binary and not Path(binary).is_absolute() and (self.base_dir / binary).exists():
            binary = str(self.base_dir / binary)  # relative to the study file, like the model
        effort = self.sampling.reasoning_effort
        return Target(self.model, self.base_dir, self.host, self.model_layers, used, binary, effort)

    def workload(self, name: str) -> Workload:
        return next(w for w in self.workloads if w.name == name)

    def check_workload(self, name: str | None) -> None:
        """Refuse a workload name the study does not have (None: every workload)."""
        names = [w.name for w in self.workloads]
        if name is not None and name not in names:
            raise StudyFileError(f"unknown workload {name!r}; this study has: {', '.join(names)}")

    def describe(self) -> dict[str, Any]:
        """What must not change under an existing study (stored on it, compared on resume)."""
        return {
            "backend": self.backend,
            "model": self.model,
            "space": self.space.to_dict(),
            "workloads": {
                w.name: {"max_tokens": w.max_tokens, "prompt": w.prompt, "system": w.system}
                for w in self.workloads
            },
            "sampling": self.sampling.to_dict(),
            "repeats": self.measure.repeats,
            "warmup": self.measure.warmup,
        }


def load(path: str | Path) -> StudyConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StudyFileError(f"{path}: no such study file") from None
    except OSError as exc:
        raise StudyFileError(f"{path}: cannot read the study file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StudyFileError(f"{path}: not valid TOML: {exc}") from None
    try:
        doc = msgspec.convert(data, _StudyFile)
    except msgspec.ValidationError as exc:
        raise StudyFileError(f"{path}: {_readable(str(exc), data)}") from None
    try:
        return _build(path, doc)
    except StudyFileError as exc:
        raise StudyFileError(f"{path}: {exc}") from None


def _build(path: Path, doc: _StudyFile) -> StudyConfig:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", doc.name):
        raise StudyFileError(f"name {doc.name!r}: use letters, digits, '.', '_' and '-'")
    cls = backend_class(doc.backend)
    space = SearchSpace.parse(doc.space)
    baseline = LoadSettings.from_dict(doc.baseline, "baseline")
    for name in sorted(space.names() | set(baseline.to_dict())):
        if name not in cls.supported:
            raise StudyFileError(
                f"{name}: the {doc.backend} backend cannot apply this setting"
                f" ({cls.unsupported_why.get(name, 'not supported')}); remove it"
            )
    workloads = tuple(_workload(w, path.parent) for w in doc.workloads)
    if not workloads:
        raise StudyFileError("workloads: list at least one workload")
    for w in workloads:
        if w.grammar and not cls.takes_grammar:
            raise StudyFileError(
                f"workload {w.name!r}: the {doc.backend} backend takes no GBNF grammar; remove it"
            )
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise StudyFileError(f"workloads: names repeat: {', '.join(names)}")
    storage = doc.storage or f"sqlite:///{(path.parent / (doc.name + '.db')).resolve()}"
    return StudyConfig(
        path=path,
        name=doc.name,
        backend=doc.backend,
        model=doc.model,
        storage=storage,
        host=doc.host,
        model_layers=doc.model_layers,
        server_binary=doc.server_binary,
        sampler_seed=doc.sampler_seed,
        space=space,
        baseline=baseline,
        workloads=workloads,
        sampling=doc.sampling,
        budget=doc.budget,
        measure=doc.measure,
        recommend=doc.recommend,
        confirm=doc.confirm,
    )


def _workload(w: _WorkloadSpec, base_dir: Path) -> Workload:
    where = f"workloads.{w.name}"
    if w.prompt is not None and w.prompt_file is not None:
        raise StudyFileError(f"{where}: give prompt or prompt_file, not both")
    prompt = w.prompt
    if w.prompt_file is not None:
        file = base_dir / w.prompt_file
        try:
            prompt = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise StudyFileError(
                f"{where}.prompt_file: cannot read {file} ({exc.strerror})"
            ) from None
        except UnicodeDecodeError:
            raise StudyFileError(f"{where}.prompt_file: {file} is not UTF-8 text") from None
        if len(prompt) > MAX_PROMPT_CHARS:
            raise StudyFileError(
                f"{where}.prompt_file: {len(prompt):,} characters, more than the "
                f"{MAX_PROMPT_CHARS:,} a prompt may have"
            )
    if prompt is None:
        if w.name not in BUILTIN_PROMPTS:
            raise StudyFileError(
                f"{where}: unknown workload; built-in workloads are "
                f'{", ".join(BUILTIN_PROMPTS)}, or give your own with prompt = "..."'
            )
        wl = builtin(w.name, w.max_tokens)
        return Workload(wl.name, wl.prompt, wl.max_tokens, w.system, w.grammar)
    if w.max_tokens is None:
        raise StudyFileError(f"{where}: a workload of your own needs max_tokens")
    return Workload(w.name, prompt, w.max_tokens, w.system, w.grammar)


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str, where: str = "duration") -> float:
    """'8h', '90m', '1h30m', '45s' or plain seconds -> seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        m = _DURATION.fullmatch(text)
        if not text or m is None:
            raise StudyFileError(
                f"{where}: {text!r} is not a duration; write e.g. 8h, 90m, 1h30m or 45s"
            ) from None
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds != seconds:
        raise StudyFileError(f"{where}: {text!r} is not a duration; write e.g. 8h or 90m")
    if seconds <= 0:
        raise StudyFileError(f"{where}: must be longer than 0 seconds")
    if seconds > MAX_DURATION_S:
        raise StudyFileError(f"{where}: {shown(text)} is longer than the limit of 31 days")
    return seconds


def _duration(text: str, field: str) -> None:
    """Validate a duration inside a struct: msgspec reports a ValueError at the struct's path."""
    try:
        parse_duration(text, f"@{field}")
    except StudyFileError as exc:
        raise ValueError(str(exc)) from None


def _readable(message: str, data: dict[str, Any]) -> str:
    """msgspec's 'Expected `int`, got `str` - at `$.budget.trials`' -> 'budget.trials: ...',
    with list indexes of workloads named, and bounds said in words with the value given."""
    m = re.match(r"(.*) - at `\$\.?(.*)`$", message)
    if not m:
        return message[0].lower() + message[1:]
    what, where = m.groups()
    at = re.match(r"@(\w+): (.*)", what)  # a field named by a struct's own check
    if at:
        where, what = f"{where}.{at.group(1)}" if where else at.group(1), at.group(2)
    bound = re.fullmatch(r"Expected `\w+`(?: of length)? ([<>]=) (\S+)", what)
    if bound:
        value = _lookup(data, where)
        side = "or more" if bound.group(1) == ">=" else "or less"
        unit = " characters" if "of length" in what else ""
        if isinstance(value, str) and unit:
            value = f"{len(value):,} characters"
        what = f"must be {bound.group(2)}{unit} {side}" + (
            f", got {shown(value) if not unit else value}" if value is not None else ""
        )
    where = re.sub(
        r"workloads\[(\d+)\]",
        lambda g: f"workloads.{_lookup(data, g.group(0) + '.name') or g.group(1)}",
        where,
    )
    return f"{where}: {what[0].lower()}{what[1:]}" if where else what


def _lookup(data: Any, where: str) -> Any:
    for part in re.findall(r"\w+|\[\d+\]", where):
        try:
            data = data[int(part[1:-1])] if part.startswith("[") else data[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return data
