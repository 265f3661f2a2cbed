"""Study files (TOML): parsed and validated into a ``StudyConfig``, with one-line errors."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from sweeper.backends import backend_class
from sweeper.errors import StudyFileError
from sweeper.recommend import Rule
from sweeper.settings import LoadSettings
from sweeper.space import SearchSpace
from sweeper.workloads import BUILTIN_PROMPTS, Sampling, Workload, builtin


class _Budget(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    trials: int = 50
    timeout: str | None = None
    trial_timeout: str = "30m"
    heartbeat: str = "30s"
    heartbeat_grace: str = "2m"
    memory_limit_mb: int | None = None


class _Measure(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    repeats: int = 3
    max_repeats: int | None = None
    target_ci: float = 0.02
    warmup: int = 1
    min_output_ratio: float = 0.9
    drift_check: int | str = "1h"
    min_prefix_chars: int = 0


class _Sampling(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    seed: int = 1234
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0


class _Recommend(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rule: str = "completion"
    ttft_max: float | None = None
    tok_s_min: float | None = None
    tok_s_weight: float = 1.0
    ttft_weight: float = 1.0


class _Workload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    prompt: str | None = None
    prompt_file: str | None = None
    system: str | None = None
    max_tokens: int | None = None


class _StudyFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    backend: str
    model: str
    space: dict[str, Any]
    storage: str | None = None
    host: str | None = None
    model_layers: int | None = None
    sampler_seed: int = 0
    budget: _Budget = msgspec.field(default_factory=_Budget)
    measure: _Measure = msgspec.field(default_factory=_Measure)
    sampling: _Sampling = msgspec.field(default_factory=_Sampling)
    recommend: _Recommend = msgspec.field(default_factory=_Recommend)
    baseline: dict[str, Any] = msgspec.field(default_factory=dict)
    workloads: list[_Workload] = msgspec.field(
        default_factory=lambda: [_Workload(name=n) for n in BUILTIN_PROMPTS]
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
    space: SearchSpace
    baseline: LoadSettings
    workloads: tuple[Workload, ...]
    sampling: Sampling
    repeats: int
    #: adaptive repeats: up to this many for trials near a front (= repeats: off)
    max_repeats: int
    target_ci: float
    warmup: int
    min_output_ratio: float
    #: re-run the baseline every N trials (int) or every so long (seconds); None = never
    drift_check_trials: int | None
    drift_check_s: float | None
    min_prefix_chars: int
    trials: int
    timeout_s: float | None
    trial_timeout_s: float
    heartbeat_s: float
    heartbeat_grace_s: float
    memory_limit_mb: int | None
    sampler_seed: int
    recommend: Rule

    @property
    def base_dir(self) -> Path:
        return self.path.parent

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
            "sampling": vars(self.sampling),
            "repeats": self.repeats,
            "warmup": self.warmup,
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
        raise StudyFileError(f"{path}: {_readable(str(exc))}") from None
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
    _positive("budget.trials", doc.budget.trials)
    _positive("measure.repeats", doc.measure.repeats)
    if doc.budget.memory_limit_mb is not None:
        _positive("budget.memory_limit_mb", doc.budget.memory_limit_mb)
    if doc.measure.max_repeats is not None and doc.measure.max_repeats < doc.measure.repeats:
        raise StudyFileError("measure.max_repeats: must be at least measure.repeats")
    if not 0 < doc.measure.target_ci < 1:
        raise StudyFileError("measure.target_ci: a relative half-width, e.g. 0.02 for 2%")
    if doc.measure.warmup < 0:
        raise StudyFileError("measure.warmup: must be 0 or more")
    if isinstance(doc.measure.drift_check, int) and doc.measure.drift_check < 1:
        raise StudyFileError('measure.drift_check: a number of trials >= 1, a duration, or "off"')
    if doc.measure.min_prefix_chars < 0:
        raise StudyFileError("measure.min_prefix_chars: must be 0 or more")
    if not 0 < doc.measure.min_output_ratio <= 1:
        raise StudyFileError("measure.min_output_ratio: must be in (0, 1]")
    if doc.recommend.rule not in ("completion", "weighted"):
        raise StudyFileError(
            f'recommend.rule: {doc.recommend.rule!r}; use "completion" or "weighted"'
        )
    workloads = tuple(_workload(w, path.parent) for w in doc.workloads)
    if not workloads:
        raise StudyFileError("workloads: list at least one workload")
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
        space=space,
        baseline=baseline,
        workloads=workloads,
        sampling=Sampling(**msgspec.structs.asdict(doc.sampling)),
        repeats=doc.measure.repeats,
        max_repeats=doc.measure.max_repeats or doc.measure.repeats,
        target_ci=doc.measure.target_ci,
        warmup=doc.measure.warmup,
        min_output_ratio=doc.measure.min_output_ratio,
        drift_check_trials=drift if isinstance(drift := doc.measure.drift_check, int) else None,
        drift_check_s=parse_duration(drift, "measure.drift_check")
        if isinstance(drift, str) and drift != "off"
        else None,
        min_prefix_chars=doc.measure.min_prefix_chars,
        trials=doc.budget.trials,
        timeout_s=parse_duration(doc.budget.timeout, "budget.timeout")
        if doc.budget.timeout
        else None,
        trial_timeout_s=parse_duration(doc.budget.trial_timeout, "budget.trial_timeout"),
        heartbeat_s=parse_duration(doc.budget.heartbeat, "budget.heartbeat"),
        heartbeat_grace_s=parse_duration(doc.budget.heartbeat_grace, "budget.heartbeat_grace"),
        memory_limit_mb=doc.budget.memory_limit_mb,
        sampler_seed=doc.sampler_seed,
        recommend=Rule(
            kind=doc.recommend.rule,
            ttft_max=doc.recommend.ttft_max,
            tok_s_min=doc.recommend.tok_s_min,
            tok_s_weight=doc.recommend.tok_s_weight,
            ttft_weight=doc.recommend.ttft_weight,
        ),
    )


def _workload(w: _Workload, base_dir: Path) -> Workload:
    where = f"workloads.{w.name}"
    if w.max_tokens is not None:
        _positive(f"{where}.max_tokens", w.max_tokens)
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
    if prompt is None:
        if w.name not in BUILTIN_PROMPTS:
            raise StudyFileError(
                f"{where}: unknown workload; built-in workloads are "
                f'{", ".join(BUILTIN_PROMPTS)}, or give your own with prompt = "..."'
            )
        wl = builtin(w.name, w.max_tokens)
        return Workload(wl.name, wl.prompt, wl.max_tokens, w.system)
    if w.max_tokens is None:
        raise StudyFileError(f"{where}: a workload of your own needs max_tokens")
    return Workload(w.name, prompt, w.max_tokens, w.system)


def _positive(where: str, value: int) -> None:
    if value < 1:
        raise StudyFileError(f"{where}: must be 1 or more, got {value}")


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
    if seconds <= 0:
        raise StudyFileError(f"{where}: must be longer than 0 seconds")
    return seconds


def _readable(message: str) -> str:
    """msgspec's 'Expected `int`, got `str` - at `$.budget.trials`' -> 'budget.trials: ...'."""
    m = re.match(r"(.*) - at `\$\.?(.*)`$", message)
    if m:
        what, where = m.groups()
        return f"{where}: {what[0].lower()}{what[1:]}" if where else what
    return message[0].lower() + message[1:]
