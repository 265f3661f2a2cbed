"""The search space: which canonical settings vary, over what, and how a trial picks them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from sweeper.errors import StudyFileError
from sweeper.settings import PARAMS, UNQUANTIZED_CACHE_TYPES, LoadSettings, check_value

#: Suggestion order: flash_attention before v_cache_type, so the V cache type is only searched
#: when flash attention is on (quantized V needs it) instead of wasting trials on failures.
ORDER = list(PARAMS)


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a list of choices, or an int/float range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if PARAMS[self.name].type is int:
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(
            self.low, self.high, log=self.log, step=self.step
        )

    def values(self) -> list[Any]:
        """Every value it takes (a space of choices, or a stepped range)."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        n = self.count()
        if n is None:
            raise ValueError(f"{self.name}: a continuous range has no list of values")
        step = self.step or 1
        kind = int if PARAMS[self.name].type is int else float
        return [kind(round(self.low + i * step, 6)) for i in range(n)]

    def count(self) -> int | None:
        """How many values it takes (None: a continuous range)."""
        if self.choices is not None:
            return len(self.choices)
        assert self.low is not None and self.high is not None
        if PARAMS[self.name].type is int:
            return int((self.high - self.low) // (self.step or 1)) + 1
        if self.step is not None:
            return round((self.high - self.low) / self.step) + 1
        return None

    def contains(self, value: Any) -> bool:
        dist = self.distribution()
        try:
            return bool(dist._contains(dist.to_internal_repr(value)))
        except (ValueError, TypeError):
            return False

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass(frozen=True)
class SearchSpace:
    dimensions: dict[str, Dimension]
    fixed: LoadSettings

    @staticmethod
    def parse(table: dict[str, Any], where: str = "space") -> SearchSpace:
        """Parse ``[space]``: a list is a set of choices, a table a range, a scalar is fixed."""
        dims: dict[str, Dimension] = {}
        fixed: dict[str, Any] = {}
        for name, spec in table.items():
            check_name(name, where)
            if isinstance(spec, list):
                dims[name] = _parse_choices(name, spec, where)
            elif isinstance(spec, dict):
                dims[name] = _parse_range(name, spec, where)
            else:
                check_value(name, spec, where)
                fixed[name] = spec
        if not dims:
            raise StudyFileError(
                f"{where}: nothing to search; give at least one setting a list of choices "
                "or a range, e.g. cpu_threads = [1, 2]"
            )
        return SearchSpace(dims, LoadSettings.from_dict(fixed, where))

    def size(self) -> int | None:
        """How many configurations the space holds (None: a continuous range). Quantized V
        cache types only count with flash attention on, as they are only searched then."""
        total = 1
        for name, dim in self.dimensions.items():
            n = dim.count()
            if n is None:
                return None
            if name != "v_cache_type":
                total *= n
        v = self.dimensions.get("v_cache_type")
        if v is not None and v.choices is not None:
            fa = self.dimensions.get("flash_attention")
            on = sum(c is True for c in fa.choices) if fa and fa.choices else 0
            off = (len(fa.choices) - on) if fa and fa.choices else 1
            if fa is not None:
                total //= len(fa.choices or (None,))
            quantized = sum(c not in UNQUANTIZED_CACHE_TYPES for c in v.choices)
            total *= on * len(v.choices) + off * (len(v.choices) - quantized or 1)
        return total

    def grid(self) -> list[dict[str, Any]]:
        """Every configuration of a space of choices (and stepped ranges), as trial parameters;
        quantized V cache types only with flash attention on, as ``suggest`` searches them."""
        combos: list[dict[str, Any]] = [{}]
        for name in ORDER:
            dim = self.dimensions.get(name)
            if dim is None:
                continue
            values = dim.values()
            out = []
            fixed = self.fixed.to_dict()
            for c in combos:
                if name == "v_cache_type" and {**fixed, **c}.get("flash_attention") is not True:
                    out.append(c)  # f16 without flash attention: not a parameter
                    continue
                out.extend({**c, name: v} for v in values)
            combos = out
        return combos

    def names(self) -> set[str]:
        return set(self.dimensions) | set(self.fixed.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "search": {n: d.to_dict() for n, d in self.dimensions.items()},
            "fixed": self.fixed.to_dict(),
        }

    def suggest(self, trial: optuna.Trial, baseline: LoadSettings | None = None) -> LoadSettings:
        """Pick the settings for ``trial``. A baseline trial takes the baseline's values,
        suggesting (so the sampler learns from it) those that lie inside the space."""
        values: dict[str, Any] = self.fixed.to_dict()
        for name in ORDER:
            dim = self.dimensions.get(name)
            if dim is None:
                continue
            if baseline is not None:
                value = getattr(baseline, name)
                if value is None or not dim.contains(value):
                    values[name] = value
                    continue
            elif name == "v_cache_type" and values.get("flash_attention") is not True:
                values[name] = "f16"  # quantized V without flash attention cannot load
                continue
            values[name] = _suggest(trial, dim)
        if baseline is not None:
            values.update({k: v for k, v in baseline.to_dict().items() if k not in values})
        return LoadSettings(**{k: v for k, v in values.items() if v is not None})


def check_name(name: str, where: str) -> None:
    if name not in PARAMS:
        raise StudyFileError(
            f"{where}: unknown parameter {name!r}; known parameters: {', '.join(PARAMS)}"
        )


def _suggest(trial: optuna.Trial, dim: Dimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(dim.name, dim.choices)
    assert dim.low is not None and dim.high is not None
    if PARAMS[dim.name].type is int:
        return trial.suggest_int(
            dim.name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log
        )
    value = trial.suggest_float(dim.name, dim.low, dim.high, step=dim.step, log=dim.log)
    return round(value, 6)  # float steps come back as 0.8799999999999999


def _parse_choices(name: str, spec: list[Any], where: str) -> Dimension:
    if not spec:
        raise StudyFileError(f"{where}.{name}: empty list; give at least one choice")
    for value in spec:
        check_value(name, value, where)
    if len(set(map(repr, spec))) != len(spec):
        raise StudyFileError(f"{where}.{name}: choices repeat: {spec!r}")
    if name == "v_cache_type" and not any(v in UNQUANTIZED_CACHE_TYPES for v in spec):
        raise StudyFileError(
            f'{where}.v_cache_type: add "f16" to the choices (quantized V caches need '
            "flash attention, and trials with it off fall back to f16)"
        )
    return Dimension(name, choices=tuple(spec))


def _parse_range(name: str, spec: dict[str, Any], where: str) -> Dimension:
    param = PARAMS[name]
    if param.type not in (int, float):
        raise StudyFileError(
            f"{where}.{name}: a {param.type.__name__} setting takes a list of choices, not a range"
        )
    unknown = set(spec) - {"low", "high", "step", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise StudyFileError(
            f"{where}.{name}: a range is {{low = ..., high = ..., step = ..., log = ...}}"
            + (
                f"; unknown key(s) {', '.join(sorted(unknown))}"
                if unknown
                else "; low and high are required"
            )
        )
    low, high = spec["low"], spec["high"]
    check_value(name, low, where)
    check_value(name, high, where)
    if low >= high:
        raise StudyFileError(f"{where}.{name}: low ({low}) must be below high ({high})")
    step, log = spec.get("step"), spec.get("log", False)
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int | float) or step <= 0
    ):
        raise StudyFileError(f"{where}.{name}: step must be a positive number")
    if not isinstance(log, bool):
        raise StudyFileError(f"{where}.{name}: log must be true or false")
    if log and step is not None:
        raise StudyFileError(f"{where}.{name}: log ranges take no step")
    return Dimension(name, low=low, high=high, step=step, log=log)
