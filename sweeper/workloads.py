"""Workloads: what the model is asked to do while a load configuration is measured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

#: The two prompts of the RTX 3060 / gpt-oss-20b article, verbatim, with caps that let the
#: article's outputs (2,000-3,000 tokens) finish.
BUILTIN_PROMPTS: dict[str, tuple[str, int]] = {
    "short": (
        "AIでできることを100項目、日本語で番号付きリストにしてください(各項目は短い説明を添える)",
        3072,
    ),
    "long": (
        "月面都市を舞台に、複数の登場人物とSF的要素を含む物語を章立てで書いてください"
        "(おおよそ3,000文字)",
        4096,
    ),
}


@dataclass(frozen=True)
class Workload:
    """One prompt, measured with a fixed token cap."""

    name: str
    prompt: str
    max_tokens: int
    system: str | None = None
    #: a GBNF grammar the output must follow (llama.cpp backends)
    grammar: str | None = None


class Sampling(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fixed sampling, so that settings and not dice are compared. Recorded on the study; the
    study file's ``[sampling]`` table."""

    seed: int = 1234
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    #: a reasoning model's effort (gpt-oss: low, medium, high), the same for every trial: it
    #: changes how much the model thinks several-fold; None: the model's own default
    reasoning_effort: Literal["low", "medium", "high"] | None = None

    def to_dict(self) -> dict[str, object]:
        d = msgspec.structs.asdict(self)
        if d["reasoning_effort"] is None:  # studies made before it existed stay the same
            del d["reasoning_effort"]
        return d


def builtin(name: str, max_tokens: int | None = None) -> Workload:
    prompt, cap = BUILTIN_PROMPTS[name]
    return Workload(name=name, prompt=prompt, max_tokens=max_tokens or cap)
